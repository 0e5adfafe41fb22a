//! Shadow deployments: the data plane copies the packets of a sample of a
//! service's connections (chosen per flow, from their first packet) into a
//! ring buffer; this module puts each client's byte stream back in order
//! and replays it over a connection of its own to a backend of the shadow
//! pool, reads what comes back, and compares it with what the live backend
//! answered (whose replies the data plane also reports, in nat mode). The
//! shadow's answers never reach a client: they end here.
//!
//! Costs are bounded: at most `max_sessions` replays at once and
//! `max_buffer` bytes waiting per replay; past either the replay ends and
//! is counted, nothing blocks, and memory does not grow.

mod tcp;
#[cfg(test)]
mod tests;
mod udp;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

pub use crate::model::shadow::{BackendReport, Latency, Report};
use switch_common::{PROTO_TCP, PROTO_UDP, SHADOW_REPLY, SHADOW_SEGMENT, ShadowHeader};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};

/// Where a service's sampled flows are replayed to, and within what.
#[derive(Clone, Debug)]
pub struct Target {
    pub service: String,
    pub backends: Vec<SocketAddr>,
    pub max_sessions: usize,
    pub max_buffer: usize,
}

/// How long a replay waits for the shadow to connect, and for more of its
/// answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const ANSWER_IDLE: Duration = Duration::from_secs(5);
/// Samples kept for the percentiles.
const LATENCY_SAMPLES: usize = 10_000;
/// A UDP flow's socket is closed after this long without datagrams.
const UDP_IDLE: Duration = Duration::from_secs(30);

type Key = ([u8; 16], u16, [u8; 16], u16, u8);

/// One sampled TCP connection being put back in order.
struct Session {
    service: u32,
    /// Next expected sequence number.
    next: u32,
    /// Segments that came early, by sequence number.
    early: BTreeMap<u32, Vec<u8>>,
    early_bytes: usize,
    /// Where to, and the bytes waiting to be written there.
    tx: Option<mpsc::UnboundedSender<Vec<u8>>>,
    pending: Arc<AtomicUsize>,
    /// FIN: the sequence number after the last byte.
    fin: Option<u32>,
    /// When the client's first payload byte was seen (kernel ns), and when
    /// the live backend's first answer byte was.
    first_data_ns: Option<u64>,
    live_answered: bool,
    last_seen: Instant,
}

struct UdpFlow {
    /// Sends from here (non-blocking); a tokio twin of it reads the answers.
    socket: std::net::UdpSocket,
    last_seen: Instant,
}

#[derive(Default)]
struct Figures {
    report: Report,
    shadow_ttfb: Vec<f64>,
    live_ttfb: Vec<f64>,
}

/// The replays of every service's shadow.
#[derive(Default)]
pub struct Engine {
    /// Replays in flight (connected or connecting, reading the answer),
    /// bounded by each shadow's `max_sessions`.
    active: Arc<AtomicUsize>,
    targets: Mutex<HashMap<u32, Target>>,
    sessions: Mutex<HashMap<Key, Session>>,
    udp: Mutex<HashMap<Key, UdpFlow>>,
    figures: Mutex<HashMap<String, Figures>>,
}

/// Shadows may hold at most this share of the process's descriptors (its
/// soft limit), less a reserve: when descriptors run short, shadows are
/// shed first, and health probes, the API and the network watch keep what
/// they need.
fn descriptor_budget() -> usize {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return 0;
    }
    ((l.rlim_cur / 2) as usize).saturating_sub(64)
}

impl Engine {
    /// Whether one more replay socket fits in the shadows' share of
    /// descriptors.
    fn descriptor_to_spare(&self) -> bool {
        let udp = self.udp.lock().map(|u| u.len()).unwrap_or(usize::MAX);
        self.active.load(Ordering::Relaxed).saturating_add(udp) < descriptor_budget()
    }
}

fn push_sample(v: &mut Vec<f64>, x: f64) {
    if v.len() < LATENCY_SAMPLES {
        v.push(x);
    } else {
        // Keep a sliding window: replace a pseudo-random old sample.
        let i = (x.to_bits() as usize) % LATENCY_SAMPLES;
        v[i] = x;
    }
}

fn latency(v: &[f64]) -> Latency {
    if v.is_empty() {
        return Latency::default();
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    Latency {
        count: v.len() as u64,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

/// The status code of an HTTP/1.x status line at the start of `b`.
fn status_code(b: &[u8]) -> Option<u16> {
    if b.len() < 12 || !(b.starts_with(b"HTTP/1.0 ") || b.starts_with(b"HTTP/1.1 ")) {
        return None;
    }
    std::str::from_utf8(&b[9..12]).ok()?.parse().ok()
}

/// Status codes of the HTTP/1.x responses in a byte stream, one after the
/// other (Content-Length framing; stops at anything it cannot frame).
fn response_codes(mut b: &[u8]) -> Vec<u16> {
    let mut out = vec![];
    while let Some(code) = status_code(b) {
        out.push(code);
        let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&b[..end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let Some(len) = len else { break };
        let next = end + 4 + len;
        if next > b.len() {
            break;
        }
        b = &b[next..];
    }
    out
}

impl Engine {
    /// The shadows to serve now, by service id (the daemon calls this after
    /// every change). A service no longer listed stops being replayed.
    pub fn set_targets(&self, targets: HashMap<u32, Target>) {
        if let Ok(mut t) = self.targets.lock() {
            *t = targets;
        }
        if let Ok(t) = self.targets.lock()
            && let Ok(mut f) = self.figures.lock()
        {
            for target in t.values() {
                f.entry(target.service.clone()).or_default();
            }
        }
    }

    /// Forgets a service's figures (a new shadow starts from zero).
    pub fn reset(&self, service: &str) {
        if let Ok(mut f) = self.figures.lock() {
            f.remove(service);
        }
    }

    pub fn report(&self, service: &str, ring_lost: u64) -> Option<Report> {
        let f = self.figures.lock().ok()?;
        let fig = f.get(service)?;
        let mut r = fig.report.clone();
        r.ring_lost = ring_lost;
        r.shadow_ttfb = latency(&fig.shadow_ttfb);
        r.live_ttfb = latency(&fig.live_ttfb);
        let failed = r.refused + r.reset + r.timed_out + r.shadow_statuses.c5;
        r.shadow_error_rate = if r.attempts == 0 {
            0.0
        } else {
            (failed as f64 / r.attempts as f64).min(1.0)
        };
        r.response_size_difference = if r.live_bytes == 0 {
            0.0
        } else {
            (r.bytes_received as f64 - r.live_bytes as f64) / r.live_bytes as f64
        };
        r.live_error_rate = if r.live_statuses.total() == 0 {
            0.0
        } else {
            r.live_statuses.c5 as f64 / r.live_statuses.total() as f64
        };
        Some(r)
    }

    fn figures(&self, service: &str, f: impl FnOnce(&mut Figures)) {
        if let Ok(mut all) = self.figures.lock() {
            f(all.entry(service.to_string()).or_default());
        }
    }

    /// One record from the data plane's ring buffer.
    pub fn record(self: &Arc<Self>, bytes: &[u8]) {
        let hlen = std::mem::size_of::<ShadowHeader>();
        if bytes.len() < hlen {
            return;
        }
        // SAFETY: the data plane wrote a ShadowHeader at the start.
        let h: ShadowHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let data = &bytes[hlen..(hlen + h.copied as usize).min(bytes.len())];
        let key: Key = (h.client, h.client_port, h.vip, h.vip_port, h.proto);
        match (h.kind, h.proto) {
            (SHADOW_SEGMENT, PROTO_TCP) => self.tcp_segment(&h, key, data),
            (SHADOW_SEGMENT, PROTO_UDP) => self.udp_datagram(&h, key, data),
            (SHADOW_REPLY, _) => self.live_reply(&h, key, data),
            _ => {}
        }
    }

    fn target(&self, service: u32) -> Option<Target> {
        self.targets.lock().ok()?.get(&service).cloned()
    }

    fn live_reply(&self, h: &ShadowHeader, key: Key, data: &[u8]) {
        let Ok(mut sessions) = self.sessions.lock() else {
            return;
        };
        let Some(s) = sessions.get_mut(&key) else {
            return;
        };
        let Some(target) = self.target(s.service) else {
            return;
        };
        let ttfb = match (s.live_answered, s.first_data_ns) {
            (false, Some(t0)) => Some(h.ts_ns.saturating_sub(t0) as f64 / 1e6),
            _ => None,
        };
        s.live_answered = true;
        let code = status_code(data);
        let len = h.len as u64;
        self.figures(&target.service, |f| {
            f.report.live_bytes += len;
            if let Some(c) = code {
                f.report.live_statuses.add(c);
            }
            if let Some(t) = ttfb {
                push_sample(&mut f.live_ttfb, t);
            }
        });
        if s.tx.is_none() && s.fin.is_some() {
            sessions.remove(&key);
        }
    }

    /// Drops sessions that have been quiet for long (a client that vanished
    /// without FIN or RST).
    pub fn sweep(&self) {
        if let Ok(mut s) = self.sessions.lock() {
            s.retain(|_, s| s.last_seen.elapsed() < Duration::from_secs(120));
        }
    }
}
