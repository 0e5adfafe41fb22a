//! Keys and values of the BPF maps. Addresses and ports are stored exactly as
//! they appear on the wire (network byte order); IPv4 addresses occupy the
//! first 4 bytes of a 16-byte field, the rest zero.

/// Size of a service's selection table: a prime, as in Maglev. One slot is the
/// weight precision (1/65,537).
pub const TABLE_SIZE: usize = 65_537;
/// Table entry that means "no eligible backend".
pub const NO_BACKEND: u16 = u16::MAX;

pub const DEFAULT_MAX_SERVICES: u32 = 1024;
pub const DEFAULT_MAX_BACKENDS: u32 = 16_384;
pub const DEFAULT_MAX_FLOWS: u32 = 1 << 20;
/// Connections that have sent only a SYN (see `HALF_OPEN`); the daemon
/// sizes it at a quarter of the flow table.
pub const DEFAULT_MAX_HALF_OPEN: u32 = DEFAULT_MAX_FLOWS / 4;
/// Source cohorts (CIDR -> pool) across all services.
pub const DEFAULT_MAX_COHORTS: u32 = 1024;
/// Slots of `REPLY_HOPS` (a power of two: a slot is a hash's low bits).
pub const REPLY_HOP_SLOTS: u32 = 1 << 17;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// Map names as they appear in the object and under bpffs.
pub mod names {
    pub const PROGRAM: &str = "switch";
    pub const CONFIG: &str = "CONFIG";
    pub const SERVICES: &str = "SERVICES";
    pub const TABLES: &str = "TABLES";
    pub const BACKENDS: &str = "BACKENDS";
    pub const REALS: &str = "REALS";
    pub const FLOWS: &str = "FLOWS";
    pub const HALF_OPEN: &str = "HALF_OPEN";
    pub const SNAT: &str = "SNAT";
    pub const COHORTS: &str = "COHORTS";
    pub const DEVICES: &str = "DEVICES";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const REASONS: &str = "REASONS";
    pub const NEXTHOPS: &str = "NEXTHOPS";
    pub const REPLY_FILTER: &str = "REPLY_FILTER";
    pub const VIP_FILTER: &str = "VIP_FILTER";
    pub const SERVICE_BY_ID: &str = "SERVICE_BY_ID";
    pub const SERVICE_MISSES: &str = "SERVICE_MISSES";
    pub const SHADOWS: &str = "SHADOWS";
    pub const SHADOW_RING: &str = "SHADOW_RING";
    pub const SHADOW_LOST: &str = "SHADOW_LOST";
    pub const CLOCK: &str = "CLOCK";
    /// A cache, not state: every daemon starts its program with empty ones.
    pub const REPLY_HOPS: &str = "REPLY_HOPS";
    pub const REPLY_HOPS_EPOCH: &str = "REPLY_HOPS_EPOCH";
    /// Maps that hold state; all are pinned so a daemon restart adopts them.
    pub const PINNED: [&str; 21] = [
        CLOCK,
        SHADOWS,
        SHADOW_LOST,
        SERVICE_MISSES,
        CONFIG,
        NEXTHOPS,
        REPLY_FILTER,
        VIP_FILTER,
        SERVICE_BY_ID,
        SERVICES,
        TABLES,
        BACKENDS,
        REALS,
        FLOWS,
        HALF_OPEN,
        SNAT,
        COHORTS,
        DEVICES,
        BACKEND_STATS,
        SERVICE_STATS,
        REASONS,
    ];
}

/// Global settings, slot 0 of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Secret per-deployment hash seed; equal on every switch host of a
    /// deployment so they choose the same backend for the same flow.
    pub seed: u32,
    /// `CONFIG_*` bits. Until userspace sets `CONFIG_READY` (seed and tables
    /// written) the program passes everything to the kernel.
    pub flags: u32,
    /// How long a TCP flow stays pinned after its FIN or RST.
    pub tcp_close_grace_ns: u64,
    /// How long an idle UDP flow stays pinned.
    pub udp_idle_ns: u64,
    /// How long an idle TCP flow stays pinned (a safety net for flows whose
    /// FIN never crossed this host).
    pub tcp_idle_ns: u64,
}

pub const CONFIG_READY: u32 = 1;
/// Some service uses nat: look up replies in `REALS`.
pub const CONFIG_NAT: u32 = 2;
/// Some service uses fullnat: look up replies in `SNAT`.
pub const CONFIG_FULLNAT: u32 = 4;
/// A fleet behind ECMP: a nat reply with no pin here belongs to a
/// connection another host forwarded when the selection table (or the one
/// before the last change) gives that connection to the replying backend.
pub const CONFIG_TABLE_REPLIES: u32 = 8;

/// How a service forwards a packet to its backend.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Destination rewritten to the backend; the switch is the backends'
    /// gateway and rewrites their replies back to the VIP.
    Nat = 0,
    /// Only the L2 destination changes; backends hold the VIP themselves and
    /// reply directly to the client.
    Dsr = 1,
    /// Source rewritten too, to a switch address and port, so backends can
    /// be anywhere routable; their replies come back to the switch.
    Fullnat = 2,
}

impl Mode {
    pub fn from_u8(v: u8) -> Option<Mode> {
        match v {
            0 => Some(Mode::Nat),
            1 => Some(Mode::Dsr),
            2 => Some(Mode::Fullnat),
            _ => None,
        }
    }
}

/// `Service::flags`: hash the client address only, so one client always
/// reaches the same backend (and so the same version).
pub const SERVICE_CLIENT_AFFINITY: u8 = 1;
pub const NO_PREV_TABLE: u16 = u16::MAX;

/// Per service: TCP packets that were not a SYN and found no pin, and how
/// many of those went to their slot's previous owner.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MissStats {
    pub nonsyn_miss: u64,
    pub nonsyn_miss_prev: u64,
}

/// Key of `SERVICES`: the VIP as a packet shows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// Value of `SERVICES`. Replacing this one value is how a whole new selection
/// state (table, pools, weights) goes live at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Index into per-service arrays (stats) and the base of its table slots.
    pub id: u32,
    /// Index into `TABLES` of the live selection table.
    pub table: u32,
    /// Index into `TABLES` of the table used for cohort sources, or
    /// `u32::MAX` when the service has no cohort.
    pub cohort_table: u32,
    pub mode: u8,
    pub flags: u8,
    /// The table live before the last change (`NO_PREV_TABLE`: none): a TCP
    /// packet that is not a SYN and has no pin goes to its slot's previous
    /// owner when the slot changed hands and that backend still serves.
    pub prev_table: u16,
    /// fullnat: the switch's own address that backends see as the source.
    pub snat_addr: [u8; 16],
}

/// A selection table: slot -> global backend index (or `NO_BACKEND`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Table {
    pub slots: [u16; TABLE_SIZE],
    /// Never read. LLVM turns `(h * M >> 32) * 2` into `h * M >> 31 & !1`,
    /// and the verifier then bounds the byte offset by 131,073 (not
    /// 131,072): one spare entry keeps that provably inside the value.
    pub verifier_pad: u16,
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendState {
    /// The slot is free; flows pinned to it are re-chosen.
    Unused = 0,
    Active = 1,
    /// No new flows; pinned flows keep going.
    Draining = 2,
    /// Failed health checks: no new flows, pinned flows are re-chosen.
    Down = 3,
}

impl BackendState {
    pub fn from_u8(v: u8) -> BackendState {
        match v {
            1 => BackendState::Active,
            2 => BackendState::Draining,
            3 => BackendState::Down,
            _ => BackendState::Unused,
        }
    }
}

/// Value of `BACKENDS`, indexed by the global backend index.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub state: u8,
    /// Bumped every time the slot is given to a different backend, so a flow
    /// pinned to the old occupant is never sent to the new one.
    pub generation: u32,
    pub service: u32,
}

/// Key of `REALS`: a backend's address as its replies show it (nat mode).
/// How to reach a backend without a route lookup: egress device, both
/// MACs and the device's MTU, kept fresh by the daemon from the kernel's
/// routes and neighbour entries. Without `NEXTHOP_VALID` (or for a packet
/// above `mtu`) the data plane asks the kernel (`bpf_fib_lookup`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    /// Largest IP packet the device sends.
    pub mtu: u16,
    pub flags: u16,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
}

pub const NEXTHOP_VALID: u16 = 1;

/// Key of `REPLY_HOPS`: what the kernel's route lookup for a reply
/// (backend -> client) reads, but the ports: the client (destination), the
/// source as the kernel is asked (nat: the backend, before the rewrite;
/// fullnat: the VIP, after it), the link it came in on, the TOS and the
/// protocol. 8-aligned, built in words like `FlowKey`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyHopKey {
    pub dst: [u8; 16],
    pub src: [u8; 16],
    pub ifindex: u32,
    pub family: u8,
    pub tos: u8,
    pub proto: u8,
    pub _pad: u8,
}

/// A slot of `REPLY_HOPS`, a direct-mapped cache (an array indexed by
/// `hash::reply_hop_slot` of the key): the kernel's answer for `key`
/// (egress device, both MACs), valid while `epoch` equals
/// `REPLY_HOPS_EPOCH[0]`, for packets of up to `fits` bytes (the largest
/// the kernel forwarded: a larger packet asks again, so the MTU check
/// stays the kernel's). Any CPU may overwrite a slot while another reads
/// it; `check` (`hash::reply_hop_check` of the first eight words) lets a
/// reader that copied a slot tell a torn copy from a whole one.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyHop {
    pub key: ReplyHopKey,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub ifindex: u32,
    pub fits: u16,
    pub _pad: u16,
    pub epoch: u32,
    pub check: u64,
}

/// `ReplyHop` as 64-bit words (the last one is `check`).
pub const REPLY_HOP_WORDS: usize = 9;

/// `REPLY_HOPS_EPOCH[0]` when nat replies must ask the kernel every time
/// (routing rules that select by port, which the key leaves out).
pub const REPLY_HOPS_OFF: u32 = u32::MAX;

/// A set of addresses as a bitmap, one bit per `hash::filter_bit`: every
/// nat/fullnat backend address (`REPLY_FILTER`), every VIP (`VIP_FILTER`).
/// A clear bit proves absence; a set bit asks for the exact lookup.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AddrFilter {
    pub words: [u64; crate::hash::REPLY_FILTER_WORDS],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RealKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// Value of `REALS`: the VIP to put back as the source of a reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Real {
    pub vip: [u8; 16],
    pub vip_port: u16,
    pub _pad: [u8; 2],
    pub backend: u32,
}

/// Key of `FLOWS`: the 5-tuple of a client->VIP packet. 8-aligned, so the
/// data plane builds and copies it in words rather than 16-bit pieces.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// `Flow::flags`: a FIN or RST was seen; the entry lives for the grace time.
pub const FLOW_CLOSING: u32 = 1;
/// The flow is sampled for a shadow: its client -> VIP packets are copied to
/// the daemon.
pub const FLOW_SHADOW: u32 = 2;

/// A service's shadow, by service id: sample (out of 65,536 flows) the data
/// plane copies to the daemon; 0: no shadow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowConfig {
    pub sample: u32,
    pub _pad: u32,
}

/// Payload bytes a shadow record carries: any segment on a 1500 MTU (a
/// power of two: the verifier bounds the copy's length with a mask).
pub const SHADOW_DATA: usize = 2048;
/// Bytes of a live reply kept (enough for an HTTP/1.x status line).
pub const SHADOW_HEAD: usize = 16;
/// A client -> VIP packet of a sampled flow.
pub const SHADOW_SEGMENT: u8 = 1;
/// A live backend -> client packet of a sampled flow (nat replies).
pub const SHADOW_REPLY: u8 = 2;

/// What every shadow record starts with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowHeader {
    /// `bpf_ktime_get_ns` when the packet was seen.
    pub ts_ns: u64,
    pub client: [u8; 16],
    pub vip: [u8; 16],
    pub client_port: u16,
    pub vip_port: u16,
    /// TCP sequence number (host order) of the first payload byte, or of
    /// the SYN.
    pub seq: u32,
    pub service: u32,
    /// Payload bytes in the packet, and how many of them follow.
    pub len: u16,
    pub copied: u16,
    pub kind: u8,
    pub family: u8,
    pub proto: u8,
    pub tcp_flags: u8,
    pub _pad: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ShadowSegment {
    pub h: ShadowHeader,
    pub data: [u8; SHADOW_DATA],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ShadowReply {
    pub h: ShadowHeader,
    pub data: [u8; SHADOW_HEAD],
}

/// Value of `FLOWS`: the backend a flow is pinned to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub backend: u32,
    pub generation: u32,
    pub service: u32,
    pub flags: u32,
    /// `bpf_ktime_get_ns` of the last packet, refreshed at most once a second.
    pub last_seen_ns: u64,
    /// fullnat: the source port allocated to this flow (network order).
    pub snat_port: u16,
    pub _pad: [u8; 2],
    /// Sequence number of the SYN that opened the flow: a SYN with another
    /// one is a new connection reusing the 5-tuple.
    pub syn_seq: u32,
}

/// Key of `SNAT`: a fullnat reply as it arrives from the backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnatKey {
    pub backend: [u8; 16],
    pub snat: [u8; 16],
    pub backend_port: u16,
    pub snat_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Value of `SNAT`: where the reply really goes, and as whom.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatValue {
    pub client: [u8; 16],
    pub vip: [u8; 16],
    pub client_port: u16,
    pub vip_port: u16,
    pub backend: u32,
}

/// Key of `COHORTS` (an LPM trie): service id then source address, so one
/// trie holds the cohorts of every service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CohortKey {
    pub service: [u8; 4],
    pub addr: [u8; 16],
}

/// Per-CPU counters of one backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// TCP RSTs sent by the backend (nat/fullnat: seen on the return path).
    pub rsts: u64,
    /// TCP SYN-ACKs sent by the backend: new flows minus these are
    /// connection attempts it never answered (nat/fullnat).
    pub synacks: u64,
}

/// Per-CPU counters of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub no_backend: u64,
}

/// Why a packet got the verdict it got: the index into `REASONS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Forwarded to a backend (client -> VIP).
    Forwarded = 0,
    /// A backend's reply rewritten back to the VIP and forwarded.
    ReplyForwarded,
    /// Not for a VIP or from a backend: passed to the kernel untouched.
    NotVip,
    /// Not IPv4/IPv6 (ARP, LLDP...): passed untouched.
    NotIp,
    /// Header cut short: passed untouched (the kernel drops it).
    Truncated,
    /// IPv4 header with options: passed untouched.
    Ipv4Options,
    /// IPv4 fragment: passed untouched, ports are not in every fragment.
    Fragment,
    /// IPv6 extension header before L4: passed untouched.
    Ipv6ExtHeader,
    /// 802.1Q/802.1ad tag: passed untouched.
    Vlan,
    /// TTL or hop limit would reach zero: passed so the kernel answers ICMP.
    TtlExpired,
    /// VIP without an eligible backend: dropped.
    NoBackend,
    /// Route lookup found no neighbour: rewritten packet handed to the kernel
    /// so ARP/ND resolves it.
    FibNoNeigh,
    /// Route lookup failed (no route, blackhole...): dropped.
    FibFailed,
    /// Egress device not in the devmap: rewritten packet handed to the kernel.
    NotRedirectable,
    /// The program is loaded but userspace has not marked it ready.
    NotReady,
    /// Malformed header (bad IHL, bad length): passed untouched.
    Malformed,
    /// Larger than the egress MTU: rewritten packet handed to the kernel,
    /// which fragments it or answers "packet too big".
    FragNeeded,
    /// fullnat: no free source port towards that backend: dropped.
    NoSnatPort,
    ReplyNotOurs,
    NoNeigh,
    /// An ICMP error about a VIP flow sent on to the backend that owns it.
    IcmpToBackend,
    /// An ICMP error quoting a flow no pin or table here knows (or a
    /// connection not made through a VIP): passed untouched.
    IcmpUnknownFlow,
    /// An ICMP error whose quote is malformed: passed untouched.
    IcmpMalformed,
    /// ICMP that is no error about a flow (echo, redirects, neighbour
    /// discovery, a quote cut short): passed untouched.
    IcmpPassed,
    /// An echo request to a VIP, answered.
    IcmpEchoReply,
}

pub const REASON_COUNT: u32 = 25;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::Forwarded,
        Reason::ReplyForwarded,
        Reason::NotVip,
        Reason::NotIp,
        Reason::Truncated,
        Reason::Ipv4Options,
        Reason::Fragment,
        Reason::Ipv6ExtHeader,
        Reason::Vlan,
        Reason::TtlExpired,
        Reason::NoBackend,
        Reason::FibNoNeigh,
        Reason::FibFailed,
        Reason::NotRedirectable,
        Reason::NotReady,
        Reason::Malformed,
        Reason::FragNeeded,
        Reason::NoSnatPort,
        Reason::ReplyNotOurs,
        Reason::NoNeigh,
        Reason::IcmpToBackend,
        Reason::IcmpUnknownFlow,
        Reason::IcmpMalformed,
        Reason::IcmpPassed,
        Reason::IcmpEchoReply,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Forwarded => "forwarded",
            Reason::ReplyForwarded => "reply_forwarded",
            Reason::NotVip => "not_vip",
            Reason::NotIp => "not_ip",
            Reason::Truncated => "truncated",
            Reason::Ipv4Options => "ipv4_options",
            Reason::Fragment => "fragment",
            Reason::Ipv6ExtHeader => "ipv6_ext_header",
            Reason::Vlan => "vlan",
            Reason::TtlExpired => "ttl_expired",
            Reason::NoBackend => "no_backend",
            Reason::FibNoNeigh => "fib_no_neigh",
            Reason::FibFailed => "fib_failed",
            Reason::NotRedirectable => "not_redirectable",
            Reason::NotReady => "not_ready",
            Reason::Malformed => "malformed",
            Reason::FragNeeded => "frag_needed",
            Reason::NoSnatPort => "no_snat_port",
            Reason::ReplyNotOurs => "reply_not_ours",
            Reason::NoNeigh => "no_neigh",
            Reason::IcmpToBackend => "icmp_to_backend",
            Reason::IcmpUnknownFlow => "icmp_unknown_flow",
            Reason::IcmpMalformed => "icmp_malformed",
            Reason::IcmpPassed => "icmp_passed",
            Reason::IcmpEchoReply => "icmp_echo_reply",
        }
    }
}

/// Settings of the benchmark packet generator (`packet_gen` program): where in the
/// template frame the varied fields and checksums are, and the inverted
/// checksums of the template with those fields zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenConfig {
    pub flows: u32,
    pub sport_off: u16,
    pub src_low_off: u16,
    pub l4_csum_off: u16,
    pub ip_csum_off: u16,
    pub l4_csum_inv: u16,
    pub ip_csum_inv: u16,
    pub family: u8,
    pub _pad: u8,
    /// Bytes of headers `GEN_TEMPLATE` restores in every frame.
    pub hdr_len: u16,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C) with explicit padding and no pointers.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for Table {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for ReplyHopKey {}
    unsafe impl aya::Pod for ReplyHop {}
    unsafe impl aya::Pod for AddrFilter {}
    unsafe impl aya::Pod for MissStats {}
    unsafe impl aya::Pod for ShadowConfig {}
    unsafe impl aya::Pod for RealKey {}
    unsafe impl aya::Pod for Real {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for SnatKey {}
    unsafe impl aya::Pod for SnatValue {}
    unsafe impl aya::Pod for GenConfig {}
    unsafe impl aya::Pod for CohortKey {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for ServiceStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data plane turns a reason's number back into a `Reason` with a
    /// bounds check and a transmute: the numbers must be 0..REASON_COUNT.
    #[test]
    fn reasons_are_numbered_densely() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "{}", r.name());
        }
    }

    #[test]
    fn flow_keys_are_word_aligned_and_unpadded() {
        assert_eq!(core::mem::align_of::<FlowKey>(), 8);
        assert_eq!(core::mem::size_of::<FlowKey>(), 40);
        assert_eq!(core::mem::align_of::<ReplyHopKey>(), 8);
        assert_eq!(core::mem::size_of::<ReplyHopKey>(), 40);
        assert_eq!(core::mem::size_of::<ReplyHop>(), 8 * crate::REPLY_HOP_WORDS);
        assert_eq!(core::mem::offset_of!(ReplyHop, dmac), 40);
        assert_eq!(core::mem::offset_of!(ReplyHop, ifindex), 52);
        assert_eq!(core::mem::offset_of!(ReplyHop, fits), 56);
        assert_eq!(core::mem::offset_of!(ReplyHop, epoch), 60);
        assert_eq!(core::mem::offset_of!(ReplyHop, check), 64);
    }
}
