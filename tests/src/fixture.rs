//! A one-namespace lab for `BPF_PROG_TEST_RUN`: a client-side and a
//! backend-side veth with addresses, forwarding on and permanent neighbours,
//! so `bpf_fib_lookup` in the real program resolves real routes and MACs.

use std::net::{IpAddr, SocketAddr};

use anyhow::Result;
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};

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
    let r = test_run(prog, ifindex, frame)?;
    Ok((r.verdict, r.out))
}

pub struct RunResult {
    pub verdict: u32,
    pub out: Vec<u8>,
    /// Kernel-measured duration of the one run, in ns.
    pub duration_ns: u32,
}

/// `struct xdp_md` for a frame of `len` bytes arriving on `ifindex`.
fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// One `BPF_PROG_TEST_RUN` (repeat = 1, through aya's `TestRun`) of `prog`
/// on a fresh copy of `frame`, arriving on `ifindex`.
pub fn test_run(prog: &Xdp, ifindex: u32, frame: &[u8]) -> Result<RunResult> {
    let mut out = vec![0u8; frame.len() + 256];
    let ctx = xdp_md(frame.len(), ifindex);
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    let r = prog.test_run(opts)?;
    out.truncate(r.data_size_out as usize);
    Ok(RunResult {
        verdict: r.return_value,
        out,
        duration_ns: r.duration.as_nanos() as u32,
    })
}

/// A second handle on a loaded program, for another thread: pinned for a
/// moment on bpffs and opened from there (the pin is removed at once).
pub fn share(prog: &mut Xdp) -> Result<Xdp> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let path = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/switch-share-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    prog.pin(&path)?;
    let shared = Xdp::from_pin(&path, aya_obj::programs::XdpAttachType::Interface);
    let _ = std::fs::remove_file(&path);
    Ok(shared?)
}

/// Runs the generator program `prog` in live-frames mode: `packets` frames
/// from the template `frame` go out of `ifindex` (XDP_TX), in batches of
/// `batch`. Returns the wall time it took.
pub fn live_frames(
    prog: &Xdp,
    ifindex: u32,
    frame: &[u8],
    packets: u32,
    batch: u32,
) -> Result<std::time::Duration> {
    let ctx = xdp_md(frame.len(), ifindex);
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.ctx_in = Some(&ctx);
    opts.repeat = packets;
    opts.attrs = TestRunAttrs::new().xdp_live_frames(batch);
    let t = std::time::Instant::now();
    prog.test_run(opts)?;
    Ok(t.elapsed())
}
