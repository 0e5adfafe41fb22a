//! A one-namespace lab for `BPF_PROG_TEST_RUN`: a client-side and a
//! backend-side veth with addresses, forwarding on and permanent neighbours,
//! so `bpf_fib_lookup` in the real program resolves real routes and MACs.

use std::net::{IpAddr, SocketAddr};

use anyhow::Result;
use aya::programs::{TestRun, TestRunOptions, Xdp};

use crate::Netns;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub fn backend_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 1, i]
}

pub struct Lab {
    pub ns: Netns,
    pub c0: u32,
    pub b0: u32,
    pub c0_mac: [u8; 6],
    pub b0_mac: [u8; 6],
}

impl Lab {
    pub fn new() -> Result<Lab> {
        let ns = Netns::new("fx")?;
        ns.exec(
            "ip link add c0 type veth peer name c1 && ip link add b0 type veth peer name b1 && \
             for d in c0 c1 b0 b1; do ip link set $d mtu 9000 up; done && \
             ip addr add 198.18.0.1/24 dev c0 && ip addr add 2001:2::1/64 dev c0 nodad && \
             ip addr add 198.18.1.1/24 dev b0 && ip addr add 2001:2:1::1/64 dev b0 nodad && \
             sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1 && \
             ip neigh add 198.18.0.2 lladdr 02:00:00:00:00:02 dev c0 nud permanent && \
             ip neigh add 2001:2::2 lladdr 02:00:00:00:00:02 dev c0 nud permanent",
        )?;
        for i in 11..=14u8 {
            ns.exec(&format!(
                "ip neigh add 198.18.1.{i} lladdr 02:00:00:00:01:{i:02x} dev b0 nud permanent && \
                 ip neigh add 2001:2:1::{i:x} lladdr 02:00:00:00:01:{i:02x} dev b0 nud permanent"
            ))?;
        }
        let c0 = ns.ifindex("c0")?;
        let b0 = ns.ifindex("b0")?;
        let c0_mac = ns.mac("c0")?;
        let b0_mac = ns.mac("b0")?;
        Ok(Lab {
            ns,
            c0,
            b0,
            c0_mac,
            b0_mac,
        })
    }
}

/// Backend address `i` (11..=14) of the lab, in the VIP's family.
pub fn backend(v6: bool, i: u8, port: u16) -> SocketAddr {
    let ip: IpAddr = if v6 {
        format!("2001:2:1::{i:x}").parse().unwrap()
    } else {
        format!("198.18.1.{i}").parse().unwrap()
    };
    SocketAddr::new(ip, port)
}

pub fn client(v6: bool) -> IpAddr {
    if v6 {
        "2001:2::2".parse().unwrap()
    } else {
        "198.18.0.2".parse().unwrap()
    }
}

pub fn vip(v6: bool, port: u16) -> SocketAddr {
    let ip: IpAddr = if v6 {
        "2001:2:ff::10".parse().unwrap()
    } else {
        "198.18.0.10".parse().unwrap()
    };
    SocketAddr::new(ip, port)
}

/// One run of the program on a fresh copy of `frame` as if it arrived on
/// `ifindex`: the verdict and the frame as the program left it.
pub fn run(prog: &Xdp, ifindex: u32, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    let ctx = xdp_md(frame.len(), ifindex);
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    let r = prog.test_run(opts)?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

/// `run` through a raw program fd, for threads that do not own the program.
pub fn run_fd(fd: &std::os::fd::OwnedFd, ifindex: u32, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
    let r = test_run(fd, ifindex, frame)?;
    Ok((r.verdict, r.out))
}

pub struct RunResult {
    pub verdict: u32,
    pub out: Vec<u8>,
    /// Kernel-measured duration of the one run, in ns.
    pub duration_ns: u32,
}

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md` for a frame of `len` bytes arriving on `ifindex`.
fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

fn bpf_test_run(attr: &mut TestAttr) -> Result<()> {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>(),
        )
    };
    if rc != 0 {
        anyhow::bail!("BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// One `BPF_PROG_TEST_RUN` (repeat = 1) of the program behind `fd` on a
/// fresh copy of `frame`, arriving on `ifindex`.
pub fn test_run(fd: &std::os::fd::OwnedFd, ifindex: u32, frame: &[u8]) -> Result<RunResult> {
    use std::os::fd::AsRawFd;
    let mut out = vec![0u8; frame.len() + 256];
    let ctx = xdp_md(frame.len(), ifindex);
    let mut attr = TestAttr {
        prog_fd: fd.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: ctx.len() as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..Default::default()
    };
    bpf_test_run(&mut attr)?;
    out.truncate(attr.data_size_out as usize);
    Ok(RunResult {
        verdict: attr.retval,
        out,
        duration_ns: attr.duration,
    })
}

/// Runs the generator program behind `fd` in live-frames mode: `packets`
/// frames from the template `frame` go out of `ifindex` (XDP_TX), in batches
/// of `batch`. Returns the wall time it took.
pub fn live_frames(
    fd: &std::os::fd::OwnedFd,
    ifindex: u32,
    frame: &[u8],
    packets: u32,
    batch: u32,
) -> Result<std::time::Duration> {
    use std::os::fd::AsRawFd;
    const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
    let ctx = xdp_md(frame.len(), ifindex);
    let mut attr = TestAttr {
        prog_fd: fd.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: packets,
        ctx_size_in: ctx.len() as u32,
        ctx_in: ctx.as_ptr() as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: batch,
        ..Default::default()
    };
    let t = std::time::Instant::now();
    bpf_test_run(&mut attr)?;
    Ok(t.elapsed())
}
