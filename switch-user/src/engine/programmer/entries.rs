//! The map entries as the data plane reads them: keys, service entries,
//! filter bits, tables, and the one write that makes a service live.

use super::*;

pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

pub fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 }
}

pub fn service_key(s: &ServiceConfig) -> ServiceKey {
    ServiceKey {
        addr: addr_bytes(s.vip.ip()),
        port: s.vip.port().to_be(),
        proto: match s.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        },
        family: family(s.vip.ip()),
    }
}

/// The entry that marks a VIP itself (ICMP, port 0): the data plane
/// answers echo requests to addresses that have one.
pub(super) fn echo_key(s: &ServiceConfig) -> ServiceKey {
    let v4 = s.vip.is_ipv4();
    ServiceKey {
        addr: addr_bytes(s.vip.ip()),
        port: 0,
        proto: if v4 { PROTO_ICMP } else { PROTO_ICMPV6 },
        family: family(s.vip.ip()),
    }
}

pub(super) fn real_key(s: &ServiceConfig, a: SocketAddr) -> RealKey {
    let k = service_key(s);
    RealKey {
        addr: addr_bytes(a.ip()),
        port: a.port().to_be(),
        proto: k.proto,
        family: k.family,
    }
}

/// Sets an address's bit in a filter (`hash::filter_bit`).
pub(super) fn set_bit(f: &mut AddrFilter, ip: IpAddr) {
    let bit = switch_common::hash::filter_bit(&addr_bytes(ip));
    f.words[(bit >> 6) as usize] |= 1 << (bit & 63);
}

/// A service's `SERVICES` entry.
pub(super) fn service_entry(
    id: u32,
    table: u32,
    cohort_table: Option<u32>,
    prev_table: Option<u32>,
    spec: &ServiceConfig,
) -> Service {
    Service {
        id,
        table,
        cohort_table: cohort_table.unwrap_or(u32::MAX),
        mode: match spec.mode {
            ForwardMode::Nat => Mode::Nat,
            ForwardMode::Dsr => Mode::Dsr,
            ForwardMode::Fullnat => Mode::Fullnat,
        } as u8,
        flags: if spec.affinity == Affinity::Client {
            SERVICE_CLIENT_AFFINITY
        } else {
            0
        },
        prev_table: prev_table.map_or(NO_PREV_TABLE, |t| t as u16),
        snat_addr: spec.source.map(addr_bytes).unwrap_or_default(),
    }
}

/// THE COMMIT POINT of every change to a service (a flip, a canary step, a
/// weight, a backend change): one write of its `SERVICES` entry, which now
/// points at the new table. Before it, no packet saw anything new; after
/// it, every new flow does. Everything else is written before it.
pub(super) fn commit_point(maps: &mut dyn Maps, key: &ServiceKey, service: &Service) -> Result<()> {
    maps.set_service(key, service)
}

pub(super) fn mode_flag(mode: ForwardMode) -> u32 {
    match mode {
        ForwardMode::Nat => CONFIG_NAT,
        ForwardMode::Fullnat => CONFIG_FULLNAT,
        ForwardMode::Dsr => 0,
    }
}

pub fn to_table(slots: &[u16]) -> Box<Table> {
    let mut t = Box::new(Table {
        slots: [NO_BACKEND; TABLE_SIZE],
        verifier_pad: NO_BACKEND,
    });
    t.slots.copy_from_slice(slots);
    t
}
