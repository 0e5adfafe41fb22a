//! Real servers and clients for the namespace tests: line servers that
//! answer with their own address, servers that reset every connection,
//! long-lived streams, and a connection loop that counts failures.

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{Netns, lab::Lab};

/// Line servers on `addrs` in the backend namespace: every line is answered
/// with the server's address, for as long as the connection lives. They run
/// until the process ends (never stopped under load: that would drop the
/// connection in flight and count it as a failure).
pub fn line_servers(lab: &Lab, addrs: Vec<SocketAddr>) {
    lab.be
        .run(move || {
            for addr in addrs {
                let l = TcpListener::bind(addr).unwrap();
                std::thread::spawn(move || {
                    for c in l.incoming() {
                        let Ok(c) = c else { continue };
                        std::thread::spawn(move || {
                            let mut w = c.try_clone().unwrap();
                            for line in BufReader::new(c).lines() {
                                let Ok(_) = line else { break };
                                if w.write_all(format!("{addr}\n").as_bytes()).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                });
            }
        })
        .unwrap();
}

/// Broken servers: accept, then reset (SO_LINGER 0 close).
pub fn reset_servers(lab: &Lab, addrs: Vec<SocketAddr>) {
    lab.be
        .run(move || {
            for addr in addrs {
                let l = TcpListener::bind(addr).unwrap();
                std::thread::spawn(move || {
                    for c in l.incoming() {
                        let Ok(c) = c else { continue };
                        reset_on_close(&c);
                        drop(c);
                    }
                });
            }
        })
        .unwrap();
}

/// SO_LINGER with a zero timeout: closing the socket sends an RST.
pub fn reset_on_close(c: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

/// Adds backend addresses to the backend host (beyond the lab's four).
pub fn add_backend_addrs(lab: &Lab, addrs: &[SocketAddr]) {
    for a in addrs {
        let plen = if a.is_ipv4() { 24 } else { 64 };
        lab.be
            .exec(&format!(
                "ip addr add {}/{plen} dev be0 nodad 2>/dev/null || ip addr add {}/{plen} dev be0",
                a.ip(),
                a.ip()
            ))
            .unwrap();
    }
}

/// One connection: send a line, read the answer (the backend's address).
pub fn ask_once(vip: SocketAddr, src: Option<IpAddr>) -> std::io::Result<String> {
    let s = match src {
        None => TcpStream::connect_timeout(&vip, Duration::from_secs(2))?,
        Some(ip) => {
            // Bind the source address first: std has no bind-then-connect,
            // so use a socket from libc.
            connect_from(ip, vip)?
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut w = s.try_clone()?;
    w.write_all(b"hi\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim().to_string())
}

fn connect_from(src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let (domain, sa_src, sa_dst) = match (src, dst) {
        (IpAddr::V4(s), SocketAddr::V4(d)) => (
            libc::AF_INET,
            sockaddr_v4(s, 0),
            sockaddr_v4(*d.ip(), d.port()),
        ),
        _ => return Err(std::io::Error::other("connect_from: IPv4 only")),
    };
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = TcpStream::from_raw_fd(fd);
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        if libc::bind(fd, &sa_src as *const _ as *const libc::sockaddr, len) != 0
            || libc::connect(fd, &sa_dst as *const _ as *const libc::sockaddr, len) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(s)
    }
}

fn sockaddr_v4(ip: std::net::Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    }
}

/// A stream that asks its backend who it is, again and again.
pub struct Stream {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Stream {
    pub fn open(vip: SocketAddr) -> Stream {
        let s = TcpStream::connect_timeout(&vip, Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Stream {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    pub fn ask(&mut self) -> String {
        self.w
            .write_all(b"who\n")
            .expect("write on established stream");
        let mut line = String::new();
        self.r
            .read_line(&mut line)
            .expect("read on established stream");
        assert!(!line.is_empty(), "stream closed");
        line.trim().to_string()
    }
}

/// New connections in a loop, in the client namespace, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU32>,
    pub failed: Arc<AtomicU32>,
    /// Answers by backend, in order.
    answers: Arc<std::sync::Mutex<Vec<String>>>,
    handle: Option<JoinHandle<()>>,
}

impl Load {
    pub fn start(cli: &Netns, vip: SocketAddr) -> Load {
        Self::start_with(cli, move || ask_once(vip, None))
    }

    /// UDP request/answer exchanges, each from a new socket.
    pub fn start_udp(cli: &Netns, vip: SocketAddr) -> Load {
        Self::start_with(cli, move || udp_once(vip))
    }

    fn start_with(
        cli: &Netns,
        once: impl Fn() -> std::io::Result<String> + Send + 'static,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
        let path = format!("/run/netns/{}", cli.name);
        let (s, o, f, a) = (stop.clone(), ok.clone(), failed.clone(), answers.clone());
        let handle = std::thread::spawn(move || {
            crate::enter(&path).unwrap();
            while !s.load(Ordering::Relaxed) {
                match once() {
                    Ok(who) => {
                        o.fetch_add(1, Ordering::Relaxed);
                        a.lock().unwrap().push(who);
                    }
                    Err(e) => {
                        eprintln!("load: connection failed: {e}");
                        f.fetch_add(1, Ordering::Relaxed);
                        a.lock().unwrap().push(format!("failed: {e}"));
                    }
                }
            }
        });
        Load {
            stop,
            ok,
            failed,
            answers,
            handle: Some(handle),
        }
    }

    /// Stops and returns (ok, failed, answers).
    pub fn finish(mut self) -> (u32, u32, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        let answers = std::mem::take(&mut *self.answers.lock().unwrap());
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            answers,
        )
    }

    /// Answers so far.
    pub fn answers(&self) -> Vec<String> {
        self.answers.lock().unwrap().clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// UDP servers on `addrs` that answer every datagram with their address.
pub fn udp_servers(lab: &Lab, addrs: Vec<SocketAddr>) {
    lab.be
        .run(move || {
            for addr in addrs {
                let u = std::net::UdpSocket::bind(addr).unwrap();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 512];
                    while let Ok((_, peer)) = u.recv_from(&mut buf) {
                        let _ = u.send_to(addr.to_string().as_bytes(), peer);
                    }
                });
            }
        })
        .unwrap();
}

/// One UDP exchange from a fresh socket (a new flow): the answering backend.
pub fn udp_once(vip: SocketAddr) -> std::io::Result<String> {
    let u = std::net::UdpSocket::bind(if vip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    u.set_read_timeout(Some(Duration::from_secs(2)))?;
    u.send_to(b"q", vip)?;
    let mut buf = [0u8; 128];
    let (n, from) = u.recv_from(&mut buf)?;
    if from != vip {
        return Err(std::io::Error::other(format!(
            "answer from {from}, not the VIP"
        )));
    }
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
