//! The service most tests run, as config text: `web` on VIP
//! 198.18.10.10:80 with pool `blue` (weight 100) on backends .11 and .12
//! and pool `green` (weight 0) on .13 and .14 of 198.18.1.0/24.

/// The blue/green `web` service with its backends on `port`; `extra` lines
/// (health checks, mode, affinity) go into the service's table.
pub fn blue_green(port: u16, extra: &str) -> String {
    format!(
        r#"
[[service]]
name = "web"
vip = "198.18.10.10:80"
protocol = "tcp"
{extra}
pools = [
  {{ name = "blue",  weight = 100, backends = ["198.18.1.11:{port}", "198.18.1.12:{port}"] }},
  {{ name = "green", weight = 0,   backends = ["198.18.1.13:{port}", "198.18.1.14:{port}"] }},
]
"#
    )
}
