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
    let same: Vec<&Session> = sessions
        .iter()
        .filter(|s| s.neighbor.is_ipv4() == vip.is_ipv4())
        .collect();
    Some(if same.is_empty() {
        format!(
            "no {fam} BGP neighbor: a {fam} VIP is announced over {fam} sessions only; add one to [bgp] neighbors"
        )
    } else if !same.iter().any(|s| s.state == "Established") {
        format!("no {fam} BGP session is established")
    } else {
        "not exported to any neighbor (yet)".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(n: &str, state: &str, exported: &[&str]) -> Session {
        Session {
            neighbor: n.parse().unwrap(),
            state: state.into(),
            exported: exported.iter().map(|a| a.parse().unwrap()).collect(),
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
                .contains("no IPv6 BGP neighbor")
        );
        assert!(
            why_not_announced(v4, false, &s)
                .unwrap()
                .contains("BIRD not answering")
        );
        let down = [session("198.18.0.254", "Active", &[])];
        assert!(
            why_not_announced(v4, true, &down)
                .unwrap()
                .contains("no IPv4 BGP session")
        );
    }
}
