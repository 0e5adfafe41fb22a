//! What the BGP part of `switch status` shows: sessions and routes as BIRD
//! reports them — what the router is really told, not what the daemon
//! intended.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

/// One BGP session as BIRD reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub neighbor: IpAddr,
    /// BIRD's words: "Established", "Active", "Connect", ...; "unknown"
    /// when BIRD does not answer.
    pub state: String,
    /// The VIPs BIRD exports to this neighbor right now (`birdc show route
    /// export`); empty unless the session is established.
    #[serde(default)]
    pub exported: Vec<IpAddr>,
    /// The address families the session carries ("ipv4", "ipv6"): its own,
    /// and the other one (multiprotocol BGP) when no neighbor of that
    /// family is configured and a next hop of it is known.
    #[serde(default)]
    pub families: Vec<String>,
    /// Of those, the ones whose channel BIRD reports up (the neighbor took
    /// the family).
    #[serde(default)]
    pub accepted: Vec<String>,
}

impl Session {
    pub fn carries(&self, vip: IpAddr) -> bool {
        let fam = if vip.is_ipv4() { "ipv4" } else { "ipv6" };
        self.families.iter().any(|f| f == fam)
    }
}

/// What the BGP part of `switch status` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BgpStatus {
    pub asn: u32,
    pub sessions: Vec<Session>,
    /// VIPs a neighbor is told about right now: exported over at least one
    /// established session, as BIRD reports it.
    pub announced: Vec<IpAddr>,
    /// Whether BIRD answered; when it does not, nothing counts as announced.
    #[serde(default = "yes")]
    pub bird_answering: bool,
    /// VIPs this host means to announce that no neighbor is told about,
    /// each with why.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub not_announced: BTreeMap<IpAddr, String>,
    /// Why this host announces nothing or not every VIP, if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn: Option<String>,
    /// Times the daemon found BIRD dead and started it again.
    #[serde(default)]
    pub restarts: u64,
}

fn yes() -> bool {
    true
}

impl Default for BgpStatus {
    fn default() -> Self {
        BgpStatus {
            asn: 0,
            sessions: Vec::new(),
            announced: Vec::new(),
            bird_answering: true,
            not_announced: BTreeMap::new(),
            withdrawn: None,
            restarts: 0,
        }
    }
}

/// Why a VIP this host means to announce reaches no neighbor, given what
/// BIRD reports (`None`: it is announced).
pub fn why_not_announced(
    vip: IpAddr,
    bird_answering: bool,
    sessions: &[Session],
) -> Option<String> {
    if !bird_answering {
        return Some("unknown: BIRD not answering".into());
    }
    if sessions.iter().any(|s| s.exported.contains(&vip)) {
        return None;
    }
    let fam = if vip.is_ipv4() { "IPv4" } else { "IPv6" };
    let chan = if vip.is_ipv4() { "ipv4" } else { "ipv6" };
    let same: Vec<&Session> = sessions.iter().filter(|s| s.carries(vip)).collect();
    let up: Vec<&&Session> = same.iter().filter(|s| s.state == "Established").collect();
    Some(if same.is_empty() {
        format!(
            "no BGP session carries {fam} routes: add a {fam} neighbor, or give a {fam} next hop for the other family's sessions ([bgp] next_hop6 / next_hop)"
        )
    } else if up.is_empty() {
        format!("no BGP session carrying {fam} routes is established")
    } else if !up.iter().any(|s| s.accepted.iter().any(|a| a == chan)) {
        let n: Vec<String> = up.iter().map(|s| s.neighbor.to_string()).collect();
        format!(
            "{} does not take {fam} routes on its session (multiprotocol BGP is off on its side)",
            n.join(", ")
        )
    } else {
        "not exported to any neighbor (yet)".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(n: &str, state: &str, exported: &[&str]) -> Session {
        let neighbor: IpAddr = n.parse().unwrap();
        Session {
            neighbor,
            state: state.into(),
            exported: exported.iter().map(|a| a.parse().unwrap()).collect(),
            families: vec![if neighbor.is_ipv4() { "ipv4" } else { "ipv6" }.into()],
            accepted: vec![if neighbor.is_ipv4() { "ipv4" } else { "ipv6" }.into()],
        }
    }

    #[test]
    fn a_vip_is_announced_only_when_bird_exports_it() {
        let v4: IpAddr = "198.18.10.10".parse().unwrap();
        let v6: IpAddr = "2001:2:ff::10".parse().unwrap();
        let s = [session("198.18.0.254", "Established", &["198.18.10.10"])];
        assert_eq!(why_not_announced(v4, true, &s), None);
        assert!(
            why_not_announced(v6, true, &s)
                .unwrap()
                .contains("no BGP session carries IPv6 routes")
        );
        let mut mp = s.clone();
        mp[0].families.push("ipv6".into());
        assert!(
            why_not_announced(v6, true, &mp)
                .unwrap()
                .contains("198.18.0.254 does not take IPv6 routes")
        );
        mp[0].accepted.push("ipv6".into());
        mp[0].exported.push(v6);
        assert_eq!(why_not_announced(v6, true, &mp), None);
        assert!(
            why_not_announced(v4, false, &s)
                .unwrap()
                .contains("BIRD not answering")
        );
        let down = [session("198.18.0.254", "Active", &[])];
        assert!(
            why_not_announced(v4, true, &down)
                .unwrap()
                .contains("no BGP session carrying IPv4 routes is established")
        );
    }
}
