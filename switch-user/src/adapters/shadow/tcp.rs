//! TCP shadows: each sampled connection's byte stream put back in order and replayed over a connection of our own.

use super::*;

impl Engine {
    pub(super) fn tcp_segment(self: &Arc<Self>, h: &ShadowHeader, key: Key, data: &[u8]) {
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
            if !sessions.contains_key(&key) {
                self.start_session(&mut sessions, &target, h, key);
            }
            return; // a retransmitted SYN starts nothing
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

    /// A sampled connection's SYN: a replay to one backend of the shadow
    /// pool (the same flow always to the same one), unless over the bounds.
    fn start_session(
        self: &Arc<Self>,
        sessions: &mut HashMap<Key, Session>,
        target: &Target,
        h: &ShadowHeader,
        key: Key,
    ) {
        self.figures(&target.service, |f| f.report.sampled += 1);
        if sessions.len() >= target.max_sessions
            || self.active.load(Ordering::Relaxed) >= target.max_sessions
            || target.backends.is_empty()
            || !self.descriptor_to_spare()
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
    }
}

impl Session {
    /// Takes a segment: in order it goes out (with any early ones it makes
    /// contiguous), a repeat is trimmed, an early one waits. False when the
    /// session's buffer would exceed `max`.
    pub(super) fn take(&mut self, seq: u32, data: &[u8], max: usize) -> bool {
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

    pub(super) fn drain(&mut self, max: usize) -> bool {
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

    pub(super) fn send(&mut self, data: &[u8], max: usize) -> bool {
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
pub(super) async fn replay(
    engine: Arc<Engine>,
    service: String,
    to: SocketAddr,
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    pending: Arc<AtomicUsize>,
    max_buffer: usize,
) {
    let Some(stream) = connect(&engine, &service, to).await else {
        return;
    };
    let (rd, wr) = stream.into_split();
    let first_write = Arc::new(Mutex::new(None::<Instant>));
    let ((sent, write_failed), (answer, received, first_read, err)) = tokio::join!(
        write_stream(rx, wr, pending, first_write.clone()),
        read_answer(rd, max_buffer)
    );
    let ttfb = match (first_write.lock().ok().and_then(|f| *f), first_read) {
        (Some(w), Some(r)) => Some(r.saturating_duration_since(w).as_secs_f64() * 1e3),
        _ => None,
    };
    // Counted once its outcome is known, so that a replay in flight never
    // looks like a clean one.
    let codes = response_codes(&answer);
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

/// A connection to the shadow backend, or the reason there is none counted.
async fn connect(engine: &Engine, service: &str, to: SocketAddr) -> Option<tokio::net::TcpStream> {
    let outcome = |f: &dyn Fn(&mut Report, &mut BackendReport)| {
        engine.figures(service, |fig| {
            let mut b = fig.report.backends.remove(&to).unwrap_or_default();
            fig.report.attempts += 1;
            f(&mut fig.report, &mut b);
            fig.report.backends.insert(to, b);
        });
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(to)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            outcome(&|r, b| {
                r.refused += 1;
                b.refused += 1;
            });
            None
        }
        Ok(Err(_)) => {
            outcome(&|r, b| {
                r.reset += 1;
                b.reset += 1;
            });
            None
        }
        Err(_) => {
            outcome(&|r, b| {
                r.timed_out += 1;
                b.timed_out += 1;
            });
            None
        }
    }
}

/// The client's bytes, as they come, to the shadow: (bytes sent, whether a
/// write failed).
async fn write_stream(
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    pending: Arc<AtomicUsize>,
    first_write: Arc<Mutex<Option<Instant>>>,
) -> (u64, bool) {
    let mut sent = 0u64;
    while let Some(chunk) = rx.recv().await {
        if let Ok(mut f) = first_write.lock() {
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
}

/// The shadow's answer, kept up to `max_buffer` (for its status lines; the
/// rest is only counted): (kept bytes, total, first byte's time, error).
async fn read_answer(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    max_buffer: usize,
) -> (Vec<u8>, u64, Option<Instant>, Option<std::io::ErrorKind>) {
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
}
