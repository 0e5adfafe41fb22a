//! A service of thousands of backend addresses, for the start-up test and
//! the benchmark: all held by the backend host and routed to it.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Result;

use crate::lab::Lab;

/// `n` (at most 16,384) backend addresses from 198.18.64.0 on, on the
/// backend host's `lo`, routed to it by the switch host in four /20s, one
/// per lab backend address, so they resolve through a few next hops.
pub fn many_backends(lab: &Lab, n: u32) -> Result<Vec<SocketAddr>> {
    let base = u32::from(Ipv4Addr::new(198, 18, 64, 0));
    let addrs: Vec<SocketAddr> = (0..n.min(16_384))
        .map(|i| SocketAddr::new(Ipv4Addr::from(base + i).into(), 8080))
        .collect();
    let script: String = addrs
        .iter()
        .map(|a| format!("addr add {}/32 dev lo\n", a.ip()))
        .collect();
    let file = std::env::temp_dir().join(format!(
        "switch-scale-{}-{}.batch",
        std::process::id(),
        lab.be.name
    ));
    std::fs::write(&file, script)?;
    let r = lab.be.exec(&format!("ip -batch {}", file.display()));
    let _ = std::fs::remove_file(&file);
    r?;
    for (i, gw) in (11..=14).enumerate() {
        lab.sw.exec(&format!(
            "ip route add 198.18.{}.0/20 via 198.18.1.{gw}",
            64 + 16 * i
        ))?;
    }
    Ok(addrs)
}

/// The `big` service on the lab's VIP: the first half of `addrs` in pool
/// blue (weight 100), the rest in green (weight 0).
pub fn big_service(addrs: &[SocketAddr]) -> String {
    let list = |a: &[SocketAddr]| {
        a.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let half = addrs.len() / 2;
    format!(
        r#"
[[service]]
name = "big"
vip = "198.18.10.10:80"
protocol = "tcp"
pools = [
  {{ name = "blue",  weight = 100, backends = [{}] }},
  {{ name = "green", weight = 0,   backends = [{}] }},
]
"#,
        list(&addrs[..half]),
        list(&addrs[half..])
    )
}
