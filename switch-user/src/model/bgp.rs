//! What the BGP part of `switch status` shows: sessions as BIRD reports
//! them and what this host announces.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One BGP session as BIRD reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub neighbor: IpAddr,
    /// BIRD's words: "Established", "Active", "Connect", ...
    pub state: String,
}

/// What the BGP part of `switch status` shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BgpStatus {
    pub asn: u32,
    pub sessions: Vec<Session>,
    /// VIPs announced by this host right now.
    pub announced: Vec<IpAddr>,
    /// Why this host announces nothing or not every VIP, if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn: Option<String>,
}
