//! Health checks: TCP connect or HTTP GET with interval, timeout, rise and
//! fall (as HAProxy's `inter`/`rise`/`fall`). The counting is pure and
//! tested on its own; `probe` does the I/O.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::config::{HealthConfig, HealthKind};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub healthy: bool,
    /// When `healthy` last changed (ms).
    pub since_ms: u64,
    ok_run: u32,
    fail_run: u32,
    pub last_error: Option<String>,
}

impl Health {
    pub fn new(healthy: bool, now: u64) -> Self {
        Health {
            healthy,
            since_ms: now,
            ok_run: 0,
            fail_run: 0,
            last_error: None,
        }
    }

    /// Counts one probe result; true when the state flipped.
    pub fn record(&mut self, result: Result<(), String>, rise: u32, fall: u32, now: u64) -> bool {
        match result {
            Ok(()) => {
                self.ok_run += 1;
                self.fail_run = 0;
                if !self.healthy && self.ok_run >= rise {
                    self.healthy = true;
                    self.since_ms = now;
                    self.last_error = None;
                    return true;
                }
            }
            Err(e) => {
                self.fail_run += 1;
                self.ok_run = 0;
                self.last_error = Some(e);
                if self.healthy && self.fail_run >= fall {
                    self.healthy = false;
                    self.since_ms = now;
                    return true;
                }
            }
        }
        false
    }
}

/// One probe of `addr`.
pub async fn probe(addr: SocketAddr, cfg: &HealthConfig) -> Result<(), String> {
    let work = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        if cfg.kind == HealthKind::Tcp {
            return Ok(());
        }
        let req = format!(
            "GET {} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: switch-health\r\n\r\n",
            cfg.path
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let m = s
                .read(&mut buf[n..])
                .await
                .map_err(|e| format!("read: {e}"))?;
            if m == 0 {
                break;
            }
            n += m;
        }
        let line = String::from_utf8_lossy(&buf[..n]);
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| {
                format!(
                    "not an HTTP answer: {:?}",
                    line.lines().next().unwrap_or("")
                )
            })?;
        if cfg.expected().is_ok_and(|r| r.contains(&code)) {
            Ok(())
        } else {
            Err(format!("HTTP {code}"))
        }
    };
    match tokio::time::timeout(cfg.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("timeout after {:?}", cfg.timeout)),
    }
}

pub fn interval(cfg: &HealthConfig) -> Duration {
    cfg.interval
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_then_rise() {
        let mut h = Health::new(true, 0);
        assert!(!h.record(Err("x".into()), 2, 3, 1));
        assert!(!h.record(Err("x".into()), 2, 3, 2));
        assert!(h.record(Err("x".into()), 2, 3, 3), "third failure: down");
        assert!(!h.healthy);
        assert!(!h.record(Ok(()), 2, 3, 4));
        assert!(h.record(Ok(()), 2, 3, 5), "second success: up");
        assert!(h.healthy && h.since_ms == 5);
        // A success between failures resets the count.
        h.record(Err("x".into()), 2, 3, 6);
        h.record(Err("x".into()), 2, 3, 7);
        h.record(Ok(()), 2, 3, 8);
        assert!(!h.record(Err("x".into()), 2, 3, 9));
        assert!(h.healthy);
    }
}
