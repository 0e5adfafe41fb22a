//! The generator's frames, on every send path this kernel accepts, read
//! back by an independent parser: valid checksums, the addresses asked
//! for, and every flow a distinct (source, port).

use std::{collections::BTreeSet, net::IpAddr, sync::mpsc, time::Duration};

use switch_tests::{
    check, enter,
    rate::{Choice, Load, RateLab, SendPath, generate},
};

/// Frames arriving on `dev` in `ns`, captured by a raw socket (no XDP
/// program there: the lab's GRO setting hands XDP frames to the stack)
/// until none came for half a second.
fn capture(ns: &str, dev: &str) -> (mpsc::Receiver<()>, std::thread::JoinHandle<Vec<Vec<u8>>>) {
    let (path, dev) = (format!("/run/netns/{ns}"), dev.to_string());
    let (ready_tx, ready) = mpsc::channel();
    let h = std::thread::spawn(move || {
        enter(&path).unwrap();
        let ifindex = switch_user::dataplane::ifindex(&dev).unwrap();
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
        assert!(fd >= 0);
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 500_000,
        };
        let buf_size: i32 = 32 << 20;
        unsafe {
            assert_eq!(
                libc::bind(
                    fd,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32
                ),
                0
            );
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&buf_size as *const i32).cast(),
                4,
            );
        }
        ready_tx.send(()).unwrap();
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 2048];
        loop {
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                break;
            }
            frames.push(buf[..n as usize].to_vec());
        }
        unsafe { libc::close(fd) };
        frames
    });
    (ready, h)
}

#[test]
fn every_send_path_sends_valid_frames_of_distinct_flows() {
    let lab = RateLab::new().unwrap();
    let s0_mac =
        switch_tests::parse_mac(lab.sw.exec("cat /sys/class/net/s0/address").unwrap().trim())
            .unwrap();
    for v6 in [false, true] {
        for path in SendPath::ALL {
            let (ready, h) = capture(&lab.sw.name, "s0");
            ready.recv().unwrap();
            // 3,000 frames of 3,000 flows; TCP SYNs over IPv4, UDP over IPv6.
            let mut load = Load::new(3_000, 128, v6, v6, 3_000, 20_000);
            load.path = Choice::Only(path);
            let sent = generate(&lab.generator, "g0", s0_mac, &load);
            std::thread::sleep(Duration::from_millis(100));
            let frames = h.join().unwrap();
            let sent = match sent {
                Ok(s) => s,
                Err(e) if path == SendPath::LiveFrames => {
                    eprintln!("{path}: refused by this kernel ({e:#}), skipped");
                    continue;
                }
                Err(e) => panic!("{path}: {e:#}"),
            };
            let to = load.to;
            let mut flows = BTreeSet::new();
            for f in &frames {
                let Ok(s) = check(f) else {
                    // Anything else on the link (neighbour discovery) aside.
                    continue;
                };
                if s.dst != to.ip() || s.dport != to.port() {
                    continue;
                }
                assert_eq!(f.len(), 128, "{path}: frame size");
                assert_eq!(&f[..6], &s0_mac, "{path}: destination MAC");
                match (s.src, load.from) {
                    (IpAddr::V4(a), IpAddr::V4(b)) => {
                        assert_eq!(u32::from(a) >> 16, u32::from(b) >> 16)
                    }
                    (IpAddr::V6(a), IpAddr::V6(b)) => {
                        assert_eq!(u128::from(a) >> 16, u128::from(b) >> 16)
                    }
                    _ => panic!("{path}: family"),
                }
                flows.insert((s.src, s.sport));
            }
            eprintln!(
                "{path} (v6 {v6}): sent {}, captured {} valid frames of {} flows",
                sent.packets,
                frames.len(),
                flows.len()
            );
            assert!(
                flows.len() >= 2_900,
                "{path} (v6 {v6}): {} distinct flows of 3000 frames",
                flows.len()
            );
        }
    }
}
