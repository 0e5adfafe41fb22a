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

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use switch_common::{PROTO_TCP, PROTO_UDP, SHADOW_REPLY, SHADOW_SEGMENT, ShadowHeader};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};

/// A running (or ended) shadow, as the controller keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowSpec {
    pub to: String,
    pub sample_percent: f64,
    /// Flows in 65,536 that are sampled (what the data plane gets).
    pub sample: u32,
    pub started_ms: u64,
    pub until_ms: Option<u64>,
    pub max_sessions: usize,
    pub max_buffer: usize,
    /// Why it ended, once it has.
    #[serde(default)]
    pub ended: Option<String>,
}

impl ShadowSpec {
    pub fn running(&self) -> bool {
        self.ended.is_none()
    }
}

/// Percentiles of a sample of times.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// HTTP/1.x status classes seen (1xx..5xx); `other` for answers that were
/// not HTTP/1.x.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Statuses {
    #[serde(rename = "1xx")]
    pub c1: u64,
    #[serde(rename = "2xx")]
    pub c2: u64,
    #[serde(rename = "3xx")]
    pub c3: u64,
    #[serde(rename = "4xx")]
    pub c4: u64,
    #[serde(rename = "5xx")]
    pub c5: u64,
}

impl Statuses {
    fn add(&mut self, code: u16) {
        match code / 100 {
            1 => self.c1 += 1,
            2 => self.c2 += 1,
            3 => self.c3 += 1,
            4 => self.c4 += 1,
            5 => self.c5 += 1,
            _ => {}
        }
    }
    pub fn total(&self) -> u64 {
        self.c1 + self.c2 + self.c3 + self.c4 + self.c5
    }
}

/// What one shadow backend did with the replays it got.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendReport {
    pub replayed: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub refused: u64,
    pub reset: u64,
    pub timed_out: u64,
    pub statuses: Statuses,
}

/// The shadow's figures against the live pool's, for the same sampled
/// connections.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Sampled connections (TCP) or flows (UDP) seen.
    pub sampled: u64,
    /// Replays that connected and are over (their outcome counted below).
    pub replayed: u64,
    /// Replays whose outcome is known: `replayed` plus those that never
    /// connected (refused, or reset or timed out while connecting).
    pub attempts: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub refused: u64,
    pub reset: u64,
    pub timed_out: u64,
    /// Replays ended early: `max_sessions` reached, `max_buffer` exceeded,
    /// a segment too large to copy.
    pub overflow: u64,
    /// Copies the data plane could not queue (ring buffer full).
    pub ring_lost: u64,
    /// UDP: datagrams sent to the shadow, and its answers (dropped here).
    pub datagrams: u64,
    pub datagram_replies: u64,
    pub shadow_ttfb: Latency,
    pub live_ttfb: Latency,
    pub shadow_statuses: Statuses,
    pub live_statuses: Statuses,
    /// Response bytes of the live pool for the sampled connections.
    pub live_bytes: u64,
    /// (shadow bytes - live bytes) / live bytes over the sampled
    /// connections: how much bigger (or smaller) the shadow's answers are.
    pub response_size_difference: f64,
    /// Share of replays that failed (refused, reset, timed out, 5xx) and
    /// the live pool's share of 5xx answers.
    pub shadow_error_rate: f64,
    pub live_error_rate: f64,
    pub backends: BTreeMap<SocketAddr, BackendReport>,
}

/// `status --json`'s view of a shadow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowStatus {
    pub spec: ShadowSpec,
    pub report: Report,
}

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

    fn tcp_segment(self: &Arc<Self>, h: &ShadowHeader, key: Key, data: &[u8]) {
        const SYN: u8 = 0x02;
        const ACK: u8 = 0x10;
        const FIN: u8 = 0x01;
        const RST: u8 = 0x04;
        let Some(target) = self.target(h.service) else {
            return;
        };
        let Ok(mut sessions) = self.sessions.lock() else {
            return;
        };
        if h.tcp_flags & (SYN | ACK) == SYN {
            if sessions.contains_key(&key) {
                return; // a retransmitted SYN
            }
            self.figures(&target.service, |f| f.report.sampled += 1);
            if sessions.len() >= target.max_sessions
                || self.active.load(Ordering::Relaxed) >= target.max_sessions
                || target.backends.is_empty()
            {
                self.figures(&target.service, |f| f.report.overflow += 1);
                return;
            }
            // The same flow always goes to the same shadow backend.
            let i = (u16::from_be(h.client_port) as usize
                + h.client.iter().map(|b| *b as usize).sum::<usize>())
                % target.backends.len();
            let to = target.backends[i];
            let (tx, rx) = mpsc::unbounded_channel();
            let pending = Arc::new(AtomicUsize::new(0));
            self.active.fetch_add(1, Ordering::Relaxed);
            let (engine, service, max) = (self.clone(), target.service.clone(), target.max_buffer);
            let p = pending.clone();
            tokio::spawn(async move {
                replay(engine.clone(), service, to, rx, p, max).await;
                engine.active.fetch_sub(1, Ordering::Relaxed);
            });
            sessions.insert(
                key,
                Session {
                    service: h.service,
                    next: h.seq.wrapping_add(1),
                    early: BTreeMap::new(),
                    early_bytes: 0,
                    tx: Some(tx),
                    pending,
                    fin: None,
                    first_data_ns: None,
                    live_answered: false,
                    last_seen: Instant::now(),
                },
            );
            return;
        }
        let Some(s) = sessions.get_mut(&key) else {
            return; // not sampled (or already over)
        };
        s.last_seen = Instant::now();
        if h.tcp_flags & RST != 0 {
            s.tx = None;
            sessions.remove(&key);
            return;
        }
        let mut overflow = false;
        if (h.copied as usize) < h.len as usize {
            // A segment larger than a copy holds: the stream cannot be
            // replayed faithfully.
            overflow = true;
        } else if !data.is_empty() {
            if s.first_data_ns.is_none() {
                s.first_data_ns = Some(h.ts_ns);
            }
            overflow = !s.take(h.seq, data, target.max_buffer);
        }
        if h.tcp_flags & FIN != 0 {
            s.fin = Some(h.seq.wrapping_add(data.len() as u32));
        }
        if overflow {
            s.tx = None;
            self.figures(&target.service, |f| f.report.overflow += 1);
        }
        if s.fin.is_some_and(|f| f == s.next) {
            // All of the client's bytes are through: the replay half-closes
            // and reads the rest of the answer.
            s.tx = None;
        }
        if s.tx.is_none() && (s.fin.is_some() || overflow) {
            // Keep the entry until the live answer is in, but not for ever.
            if s.live_answered || overflow {
                sessions.remove(&key);
            }
        }
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

    fn udp_datagram(self: &Arc<Self>, h: &ShadowHeader, key: Key, data: &[u8]) {
        let Some(target) = self.target(h.service) else {
            return;
        };
        if target.backends.is_empty() || (h.copied as usize) < h.len as usize {
            return;
        }
        let Ok(mut flows) = self.udp.lock() else {
            return;
        };
        flows.retain(|_, f| f.last_seen.elapsed() < UDP_IDLE);
        if !flows.contains_key(&key) {
            self.figures(&target.service, |f| f.report.sampled += 1);
            if flows.len() >= target.max_sessions {
                self.figures(&target.service, |f| f.report.overflow += 1);
                return;
            }
            let to =
                target.backends[(u16::from_be(h.client_port) as usize) % target.backends.len()];
            let bind: SocketAddr = if to.is_ipv4() {
                "0.0.0.0:0".parse().unwrap_or(to)
            } else {
                "[::]:0".parse().unwrap_or(to)
            };
            let Ok(std_sock) = std::net::UdpSocket::bind(bind) else {
                return;
            };
            if std_sock.connect(to).is_err() || std_sock.set_nonblocking(true).is_err() {
                return;
            }
            let Ok(reader) = std_sock
                .try_clone()
                .and_then(tokio::net::UdpSocket::from_std)
            else {
                return;
            };
            let socket = std_sock;
            // The shadow's answers are read and dropped: they never reach a
            // client.
            let (engine, service) = (self.clone(), target.service.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, reader.recv(&mut buf)).await {
                    engine.figures(&service, |f| {
                        f.report.datagram_replies += 1;
                        f.report.bytes_received += n as u64;
                    });
                }
            });
            self.figures(&target.service, |f| f.report.replayed += 1);
            flows.insert(
                key,
                UdpFlow {
                    socket,
                    last_seen: Instant::now(),
                },
            );
        }
        if let Some(f) = flows.get_mut(&key) {
            f.last_seen = Instant::now();
            if f.socket.send(data).is_ok() {
                let n = data.len() as u64;
                self.figures(&target.service, |fg| {
                    fg.report.datagrams += 1;
                    fg.report.bytes_sent += n;
                });
            }
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

impl Session {
    /// Takes a segment: in order it goes out (with any early ones it makes
    /// contiguous), a repeat is trimmed, an early one waits. False when the
    /// session's buffer would exceed `max`.
    fn take(&mut self, seq: u32, data: &[u8], max: usize) -> bool {
        let offset = self.next.wrapping_sub(seq) as i32;
        if offset > 0 {
            // Starts before what we have: a retransmission, maybe with new
            // bytes at its end.
            if offset as usize >= data.len() {
                return true;
            }
            return self.send(&data[offset as usize..], max) && self.drain(max);
        }
        if offset == 0 {
            return self.send(data, max) && self.drain(max);
        }
        if self.early_bytes + data.len() > max {
            return false;
        }
        if let Some(old) = self.early.insert(seq, data.to_vec()) {
            self.early_bytes -= old.len();
        }
        self.early_bytes += data.len();
        true
    }

    fn drain(&mut self, max: usize) -> bool {
        while let Some((&seq, _)) = self.early.iter().next() {
            let offset = self.next.wrapping_sub(seq) as i32;
            if offset < 0 {
                break;
            }
            let Some(d) = self.early.remove(&seq) else {
                break;
            };
            self.early_bytes -= d.len();
            if (offset as usize) < d.len() && !self.send(&d[offset as usize..], max) {
                return false;
            }
        }
        true
    }

    fn send(&mut self, data: &[u8], max: usize) -> bool {
        self.next = self.next.wrapping_add(data.len() as u32);
        let Some(tx) = &self.tx else { return true };
        if self.pending.load(Ordering::Relaxed) + data.len() > max {
            return false;
        }
        self.pending.fetch_add(data.len(), Ordering::Relaxed);
        tx.send(data.to_vec()).is_ok()
    }
}

/// One replay: connect to the shadow backend, write the client's bytes as
/// they come, half-close when the client is done, read the whole answer.
async fn replay(
    engine: Arc<Engine>,
    service: String,
    to: SocketAddr,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    pending: Arc<AtomicUsize>,
    max_buffer: usize,
) {
    let outcome = |engine: &Engine, f: &dyn Fn(&mut Report, &mut BackendReport)| {
        engine.figures(&service, |fig| {
            let mut b = fig.report.backends.remove(&to).unwrap_or_default();
            fig.report.attempts += 1;
            f(&mut fig.report, &mut b);
            fig.report.backends.insert(to, b);
        });
    };
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(to)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                outcome(&engine, &|r, b| {
                    r.refused += 1;
                    b.refused += 1;
                });
                return;
            }
            Ok(Err(_)) => {
                outcome(&engine, &|r, b| {
                    r.reset += 1;
                    b.reset += 1;
                });
                return;
            }
            Err(_) => {
                outcome(&engine, &|r, b| {
                    r.timed_out += 1;
                    b.timed_out += 1;
                });
                return;
            }
        };
    let (mut rd, mut wr) = stream.into_split();
    let first_write = Arc::new(Mutex::new(None::<Instant>));
    let fw = first_write.clone();
    let writer = async move {
        let mut sent = 0u64;
        while let Some(chunk) = rx.recv().await {
            if let Ok(mut f) = fw.lock() {
                f.get_or_insert_with(Instant::now);
            }
            pending.fetch_sub(chunk.len(), Ordering::Relaxed);
            if wr.write_all(&chunk).await.is_err() {
                return (sent, true);
            }
            sent += chunk.len() as u64;
        }
        let _ = wr.shutdown().await;
        (sent, false)
    };
    let reader = async move {
        // The answer, kept up to --max-buffer (for its status lines); the
        // rest is only counted.
        let mut answer = Vec::new();
        let mut total = 0u64;
        let mut first: Option<Instant> = None;
        let mut buf = vec![0u8; 4096];
        loop {
            match tokio::time::timeout(ANSWER_IDLE, rd.read(&mut buf)).await {
                Ok(Ok(0)) => return (answer, total, first, None),
                Ok(Ok(n)) => {
                    first.get_or_insert_with(Instant::now);
                    total += n as u64;
                    let room = max_buffer.saturating_sub(answer.len()).min(n);
                    answer.extend_from_slice(&buf[..room]);
                }
                Ok(Err(e)) => return (answer, total, first, Some(e.kind())),
                Err(_) => return (answer, total, first, Some(std::io::ErrorKind::TimedOut)),
            }
        }
    };
    let ((sent, write_failed), (answer, received, first_read, err)) = tokio::join!(writer, reader);
    let ttfb = match (first_write.lock().ok().and_then(|f| *f), first_read) {
        (Some(w), Some(r)) => Some(r.saturating_duration_since(w).as_secs_f64() * 1e3),
        _ => None,
    };
    let codes = response_codes(&answer);
    // Counted once its outcome is known, so that a replay in flight never
    // looks like a clean one.
    engine.figures(&service, |fig| {
        let r = &mut fig.report;
        let mut b = r.backends.remove(&to).unwrap_or_default();
        r.replayed += 1;
        r.attempts += 1;
        b.replayed += 1;
        r.bytes_sent += sent;
        b.bytes_sent += sent;
        r.bytes_received += received;
        b.bytes_received += received;
        for c in &codes {
            r.shadow_statuses.add(*c);
            b.statuses.add(*c);
        }
        match err {
            Some(std::io::ErrorKind::TimedOut) => {
                r.timed_out += 1;
                b.timed_out += 1;
            }
            Some(_) => {
                r.reset += 1;
                b.reset += 1;
            }
            None if write_failed => {
                r.reset += 1;
                b.reset += 1;
            }
            None => {}
        }
        r.backends.insert(to, b);
        if let Some(t) = ttfb {
            push_sample(&mut fig.shadow_ttfb, t);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> (Session, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Session {
                service: 0,
                next: 1000,
                early: BTreeMap::new(),
                early_bytes: 0,
                tx: Some(tx),
                pending: Arc::new(AtomicUsize::new(0)),
                fin: None,
                first_data_ns: None,
                live_answered: false,
                last_seen: Instant::now(),
            },
            rx,
        )
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<Vec<u8>>) -> Vec<u8> {
        let mut out = vec![];
        while let Ok(c) = rx.try_recv() {
            out.extend(c);
        }
        out
    }

    #[test]
    fn segments_are_put_back_in_order_and_repeats_dropped() {
        let (mut s, mut rx) = session();
        assert!(s.take(1005, b"world", 1 << 16)); // early
        assert!(s.take(1000, b"hello", 1 << 16)); // fills the gap
        assert!(s.take(1000, b"hello", 1 << 16)); // retransmission
        assert!(s.take(1008, b"ld!!", 1 << 16)); // overlap with new bytes
        assert_eq!(drain(&mut rx), b"helloworld!!");
        assert_eq!(s.next, 1012);
        assert_eq!(s.early_bytes, 0);
    }

    #[test]
    fn a_buffer_over_its_bound_ends_the_replay() {
        let (mut s, _rx) = session();
        assert!(s.take(2000, &[0u8; 60], 100));
        assert!(!s.take(3000, &[0u8; 60], 100), "early bytes over the bound");
    }

    #[test]
    fn status_codes_of_a_keep_alive_stream() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(response_codes(r), vec![200, 500]);
        assert_eq!(response_codes(b"SSH-2.0"), Vec::<u16>::new());
    }
}
