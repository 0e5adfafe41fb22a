//! Health probes: TCP connect or HTTP GET within a timeout. What a run of
//! results means (rise and fall) is `engine::health`.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::model::config::{HealthConfig, HealthKind};

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
