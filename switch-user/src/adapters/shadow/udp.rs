//! UDP shadows: each sampled datagram sent again from a socket of our own per flow.

use super::*;

impl Engine {
    pub(super) fn udp_datagram(self: &Arc<Self>, h: &ShadowHeader, key: Key, data: &[u8]) {
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
            // `flows` is held here: count it without the engine's helper.
            if flows.len() >= target.max_sessions
                || self.active.load(Ordering::Relaxed) + flows.len() >= descriptor_budget()
            {
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
}
