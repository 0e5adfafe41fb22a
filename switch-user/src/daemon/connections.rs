//! Bounds on API callers: how many may be connected, how long one may sit
//! idle, how long a request line may be.
//!
//! At the cap a newcomer takes the place of the connection idle the
//! longest (as a web server reuses keep-alive connections), so a pile of
//! idle clients cannot lock an operator out; only when every connection is
//! busy with a request is the newcomer refused, at once.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Concurrent API connections.
pub(super) const MAX_CONNECTIONS: usize = 256;
/// A connection with no request for this long is closed.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest request line (an `apply` of thousands of backends is a few
/// hundred KiB).
pub(super) const MAX_LINE: usize = 1 << 20;

/// One connection's state, as the registry sees it.
pub(super) struct Conn {
    id: u64,
    idle: AtomicBool,
    /// When it last became idle (ms since the registry began).
    idle_since: AtomicU64,
    /// Told to close (its place was given to a newcomer).
    pub(super) close: tokio::sync::Notify,
}

impl Conn {
    pub(super) fn set_idle(&self, idle: bool, registry: &Registry) {
        if idle {
            self.idle_since.store(
                registry.began.elapsed().as_millis() as u64,
                Ordering::Relaxed,
            );
        }
        self.idle.store(idle, Ordering::Relaxed);
    }
}

pub(super) struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
    next: AtomicU64,
    began: Instant,
    max: usize,
}

impl Registry {
    pub(super) fn new(max: usize) -> Registry {
        Registry {
            conns: Mutex::default(),
            next: AtomicU64::new(0),
            began: Instant::now(),
            max,
        }
    }

    /// A place for a new connection, or None when every one is busy.
    pub(super) fn admit(&self) -> Option<Arc<Conn>> {
        let mut conns = self.conns.lock().ok()?;
        if conns.len() >= self.max {
            let oldest = conns
                .values()
                .filter(|c| c.idle.load(Ordering::Relaxed))
                .min_by_key(|c| c.idle_since.load(Ordering::Relaxed))?
                .clone();
            conns.remove(&oldest.id);
            oldest.close.notify_one();
        }
        let c = Arc::new(Conn {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            idle: AtomicBool::new(true),
            idle_since: AtomicU64::new(self.began.elapsed().as_millis() as u64),
            close: tokio::sync::Notify::new(),
        });
        conns.insert(c.id, c.clone());
        Some(c)
    }

    pub(super) fn leave(&self, c: &Conn) {
        if let Ok(mut conns) = self.conns.lock() {
            conns.remove(&c.id);
        }
    }
}

/// What reading one request line gave.
pub(super) enum Line {
    Text(String),
    /// The caller closed the connection.
    End,
    TooLong,
    NotUtf8,
}

/// Reads one line of at most `max` bytes (without its newline); a longer
/// one is read no further.
pub(super) async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() { Line::End } else { text(buf) });
        }
        if let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            if buf.len() + i > max {
                return Ok(Line::TooLong);
            }
            buf.extend_from_slice(&chunk[..i]);
            r.consume(i + 1);
            return Ok(text(buf));
        }
        let n = chunk.len();
        if buf.len() + n > max {
            return Ok(Line::TooLong);
        }
        buf.extend_from_slice(chunk);
        r.consume(n);
    }
}

fn text(buf: Vec<u8>) -> Line {
    match String::from_utf8(buf) {
        Ok(s) => Line::Text(s),
        Err(_) => Line::NotUtf8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_longest_idle_makes_room_and_busy_ones_do_not() {
        let r = Registry::new(2);
        let a = r.admit().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let b = r.admit().unwrap();
        b.set_idle(false, &r);
        // `a` is idle: it goes.
        let c = r.admit().unwrap();
        assert!(!r.conns.lock().unwrap().contains_key(&a.id));
        c.set_idle(false, &r);
        // Both busy: refused.
        assert!(r.admit().is_none());
        r.leave(&b);
        assert!(r.admit().is_some());
    }

    #[tokio::test]
    async fn lines_over_the_bound_are_not_read_on() {
        let data = b"short\n0123456789abcdef\n".to_vec();
        let mut r = tokio::io::BufReader::with_capacity(4, &data[..]);
        assert!(matches!(read_line(&mut r, 8).await.unwrap(), Line::Text(s) if s == "short"));
        assert!(matches!(read_line(&mut r, 8).await.unwrap(), Line::TooLong));
    }
}
