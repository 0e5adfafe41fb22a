//! The fleet's state in etcd: reads, the conditioned writes, the lease and
//! the leader key. Nothing here decides anything.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};

use super::{HostReport, Keys, Ledger, Verdict};
use crate::{
    engine::controller::replica::ServiceRecord, model::api::Event, model::config::FleetConfig,
};

/// How long one etcd call may take before the host treats etcd as gone.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Store {
    client: Client,
    pub keys: Keys,
    pub host: String,
}

/// Everything a host needs to catch up, read at one revision.
#[derive(Default)]
pub struct Snapshot {
    pub revision: i64,
    pub services: BTreeMap<String, (ServiceRecord, i64)>,
    pub hosts: BTreeMap<String, HostReport>,
    /// The leader's name and its key's create revision (its fencing token).
    pub leader: Option<(String, i64)>,
    pub health: BTreeMap<SocketAddr, Verdict>,
    pub health_revision: i64,
    pub ledger: Option<Ledger>,
    /// Service records that could not be read: by service, the key and
    /// why, and the record's revision.
    pub rejected: BTreeMap<String, (String, i64)>,
}

/// One atomic change of the fleet's state.
#[derive(Default)]
pub struct Change {
    /// Service records to write (None: delete), each conditioned on the
    /// revision in `base` (0: must not exist).
    pub services: BTreeMap<String, Option<ServiceRecord>>,
    pub base: BTreeMap<String, i64>,
    pub events: Vec<Event>,
    pub health: Option<BTreeMap<SocketAddr, Verdict>>,
    pub ledger: Option<Ledger>,
    /// A leader's write: only while its leader key is this one.
    pub fence: Option<i64>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.events.is_empty()
            && self.health.is_none()
            && self.ledger.is_none()
    }
}

/// Why a write did not happen.
#[derive(Debug)]
pub enum Refused {
    /// Another change came first (the revision it was validated against).
    Conflict(String),
    /// The writer no longer leads.
    NotLeader,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Conflict(s) => write!(
                f,
                "service {s:?} was changed by another command at the same time; nothing was changed: look at `switch status` and try again"
            ),
            Refused::NotLeader => write!(f, "this host no longer leads the fleet"),
        }
    }
}

impl std::error::Error for Refused {}

/// TLS towards etcd: the configured CA (else the system's roots) and the
/// client certificate, if any.
fn tls_options(cfg: &FleetConfig) -> Result<etcd_client::TlsOptions> {
    let t = cfg.tls.clone().unwrap_or_default();
    let read = |p: &std::path::PathBuf, what: &str| {
        std::fs::read(p).with_context(|| format!("fleet.tls.{what} {}", p.display()))
    };
    let mut o = etcd_client::TlsOptions::new();
    o = match &t.ca {
        Some(ca) => o.ca_certificate(etcd_client::Certificate::from_pem(read(ca, "ca")?)),
        None => o.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&t.cert, &t.key) {
        o = o.identity(etcd_client::Identity::from_pem(
            read(cert, "cert")?,
            read(key, "key")?,
        ));
    }
    Ok(o)
}

/// Why etcd would not talk to this host, in one sentence naming the
/// cause (TLS, the password, permissions), or plain unreachability.
pub fn explain(cfg: &FleetConfig, e: etcd_client::Error) -> anyhow::Error {
    match cause(cfg, &format!("{e:?} {e}")) {
        Some(why) => anyhow!("{why}; forwarding goes on with the last applied state"),
        None => unreachable(e),
    }
}

/// The cause in an error's text, when it is TLS, the password or
/// permissions (None: etcd is plainly unreachable or something else).
pub fn cause(cfg: &FleetConfig, text: &str) -> Option<String> {
    let low = text.to_lowercase();
    let why = if low.contains("unknownissuer") || low.contains("invalid peer certificate") {
        "TLS: etcd's certificate is not signed by a CA this host trusts (fleet.tls.ca)".to_string()
    } else if [
        "certificaterequired",
        "certificate required",
        "unknownca",
        "unknown ca",
        "badcertificate",
        "bad certificate",
    ]
    .iter()
    .any(|w| low.contains(w))
    {
        // etcd says "bad certificate" for a missing one too.
        if cfg.tls.as_ref().is_none_or(|t| t.cert.is_none()) {
            "TLS: etcd requires a client certificate and this host gives none (fleet.tls.cert, fleet.tls.key)".to_string()
        } else {
            "TLS: etcd refused this host's client certificate (not signed by a CA it trusts)"
                .to_string()
        }
    } else if low.contains("authentication failed") || low.contains("invalid user id or password") {
        format!(
            "etcd refused the user {:?} or its password (fleet.user, fleet.password_file)",
            cfg.user.as_deref().unwrap_or("")
        )
    } else if low.contains("permission denied") {
        format!(
            "etcd user {:?} has no permission on {}/ (grant it readwrite on the prefix)",
            cfg.user.as_deref().unwrap_or(""),
            cfg.prefix
        )
    } else {
        return None;
    };
    Some(why)
}

fn unreachable(e: etcd_client::Error) -> anyhow::Error {
    if e.to_string().to_lowercase().contains("permission denied") {
        return anyhow!(
            "etcd refuses this host's user on the fleet's prefix (permission denied): grant it readwrite on the prefix; forwarding goes on with the last applied state"
        );
    }
    anyhow!(
        "etcd is unreachable ({e}); state changes are refused until it is back, forwarding goes on with the last applied state"
    )
}

impl Store {
    pub async fn connect(cfg: &FleetConfig) -> Result<Store> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(1), CALL_TIMEOUT);
        if cfg.tls.is_some() || cfg.etcd.iter().any(|e| e.starts_with("https://")) {
            opts = opts.with_tls(tls_options(cfg)?);
        }
        if let (Some(user), Some(file)) = (&cfg.user, &cfg.password_file) {
            let pw = std::fs::read_to_string(file)
                .with_context(|| format!("fleet.password_file {}", file.display()))?;
            opts = opts.with_user(user.clone(), pw.trim_end_matches(['\n', '\r']).to_string());
        }
        let client = Client::connect(&cfg.etcd, Some(opts))
            .await
            .map_err(|e| explain(cfg, e))?;
        Ok(Store {
            client,
            keys: Keys {
                prefix: cfg.prefix.clone(),
            },
            host: cfg.host.clone(),
        })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    async fn get(&self, key: String) -> Result<Option<(Vec<u8>, i64, i64)>> {
        let mut c = self.client.clone();
        let r = c.get(key, None).await.map_err(unreachable)?;
        Ok(r.kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision(), kv.create_revision())))
    }

    /// Compares this host's seed with the fleet's; the first host sets it.
    pub async fn check_seed(&self, fingerprint: &str) -> Result<()> {
        let key = self.keys.seed();
        let mut c = self.client.clone();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), fingerprint, None)])
            .or_else([TxnOp::get(key, None)]);
        let r = c.txn(txn).await.map_err(unreachable)?;
        if r.succeeded() {
            return Ok(());
        }
        let theirs = r
            .op_responses()
            .into_iter()
            .find_map(|o| match o {
                etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            })
            .unwrap_or_default();
        if theirs != fingerprint.as_bytes() {
            bail!(
                "this host's daemon.seed differs from the fleet's (fingerprint {fingerprint} here, {} in etcd): it refuses to join; give every host the same seed",
                String::from_utf8_lossy(&theirs)
            );
        }
        Ok(())
    }

    /// Refuses when a live host (its key on a lease) of another identity
    /// holds this host's name: two hosts with one name would both lead
    /// with one fencing token and mix their reports.
    pub async fn check_host(&self, name: &str, identity: &str) -> Result<()> {
        let mut c = self.client.clone();
        let r = c
            .get(self.keys.host(name), None)
            .await
            .map_err(unreachable)?;
        let Some(kv) = r.kvs().first() else {
            return Ok(());
        };
        if kv.lease() == 0 {
            return Ok(());
        }
        let theirs: HostReport = serde_json::from_slice(kv.value()).unwrap_or_default();
        if !theirs.identity.is_empty() && theirs.identity != identity {
            bail!(
                "fleet.host {name:?} is held by another live host ({}): it refuses to join; give every host its own name",
                theirs.identity
            );
        }
        Ok(())
    }

    /// A seed every host of this etcd cluster and prefix derives alike, for
    /// fleets that configure none (it is not secret: set `daemon.seed` to
    /// keep the hashing unpredictable to outsiders).
    pub async fn derived_seed(&self) -> Result<u32> {
        let mut c = self.client.clone();
        let r = c.get(self.keys.seed(), None).await.map_err(unreachable)?;
        let cluster = r.header().map(|h| h.cluster_id()).unwrap_or(0);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in b"switch-derived-seed-v1"
            .iter()
            .chain(&cluster.to_le_bytes())
            .chain(self.keys.prefix.as_bytes())
        {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Ok((h ^ (h >> 32)) as u32)
    }

    /// Writes the config file's services, only if no host ever did.
    pub async fn seed_services(&self, records: &BTreeMap<String, ServiceRecord>) -> Result<bool> {
        let seeded = self.keys.seeded();
        let mut ops = vec![TxnOp::put(seeded.clone(), self.host.clone(), None)];
        for (name, r) in records {
            ops.push(TxnOp::put(
                self.keys.service(name),
                serde_json::to_vec(r)?,
                None,
            ));
        }
        let txn = Txn::new()
            .when([Compare::create_revision(seeded, CompareOp::Equal, 0)])
            .and_then(ops);
        let mut c = self.client.clone();
        Ok(c.txn(txn).await.map_err(unreachable)?.succeeded())
    }

    /// What a host needs to forward and follow, at one revision (one
    /// transaction): services, hosts, leader, health and ledger — not the
    /// history, which grows with every change and would push a snapshot of
    /// the whole prefix past etcd's and gRPC's message limits.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut c = self.client.clone();
        let k = &self.keys;
        let prefixed = || Some(GetOptions::new().with_prefix());
        let txn = Txn::new().and_then([
            TxnOp::get(k.services(), prefixed()),
            TxnOp::get(k.hosts(), prefixed()),
            TxnOp::get(k.leader(), None),
            TxnOp::get(k.health(), None),
            TxnOp::get(k.ledger(), None),
        ]);
        let r = c.txn(txn).await.map_err(unreachable)?;
        let kvs: Vec<etcd_client::KeyValue> = r
            .op_responses()
            .into_iter()
            .filter_map(|o| match o {
                etcd_client::TxnOpResponse::Get(g) => Some(g.kvs().to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        let mut s = Snapshot {
            revision: r.header().map(|h| h.revision()).unwrap_or(0),
            ..Default::default()
        };
        for kv in &kvs {
            let Ok(key) = kv.key_str() else { continue };
            match self.keys.classify(key) {
                Some(("services", name)) => match serde_json::from_slice(kv.value()) {
                    Ok(rec) => {
                        s.services
                            .insert(name.to_string(), (rec, kv.mod_revision()));
                    }
                    Err(e) => {
                        s.rejected.insert(
                            name.to_string(),
                            (format!("{key}: unreadable: {e}"), kv.mod_revision()),
                        );
                    }
                },
                // Only a key on a lease is a live host (and a voter).
                Some(("hosts", name)) if kv.lease() != 0 => {
                    if let Ok(h) = serde_json::from_slice(kv.value()) {
                        s.hosts.insert(name.to_string(), h);
                    }
                }
                Some(("leader", _)) => {
                    s.leader = Some((
                        String::from_utf8_lossy(kv.value()).into_owned(),
                        kv.create_revision(),
                    ))
                }
                Some(("health", _)) => {
                    s.health = serde_json::from_slice(kv.value()).unwrap_or_default();
                    s.health_revision = kv.mod_revision();
                }
                Some(("ledger", _)) => s.ledger = serde_json::from_slice(kv.value()).ok(),
                _ => {}
            }
        }
        Ok(s)
    }

    /// One transaction: every service conditioned on its base revision, and
    /// a leader's write on its leader key. The revision it made, or why not.
    pub async fn commit(&self, ch: &Change) -> Result<i64> {
        let mut when = Vec::new();
        let mut ops = Vec::new();
        for (name, rec) in &ch.services {
            let key = self.keys.service(name);
            let base = ch.base.get(name).copied().unwrap_or(0);
            when.push(Compare::mod_revision(key.clone(), CompareOp::Equal, base));
            ops.push(match rec {
                Some(r) => TxnOp::put(key, serde_json::to_vec(r)?, None),
                None => TxnOp::delete(key, None),
            });
        }
        if let Some(fence) = ch.fence {
            when.push(Compare::create_revision(
                self.keys.leader(),
                CompareOp::Equal,
                fence,
            ));
        }
        for (n, e) in ch.events.iter().enumerate() {
            ops.push(TxnOp::put(
                self.keys.event(&e.service, e.at_ms, &self.host, n),
                serde_json::to_vec(e)?,
                None,
            ));
        }
        if let Some(h) = &ch.health {
            ops.push(TxnOp::put(self.keys.health(), serde_json::to_vec(h)?, None));
        }
        if let Some(l) = &ch.ledger {
            ops.push(TxnOp::put(self.keys.ledger(), serde_json::to_vec(l)?, None));
        }
        let mut c = self.client.clone();
        let r = c
            .txn(Txn::new().when(when).and_then(ops))
            .await
            .map_err(unreachable)?;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        if r.succeeded() {
            return Ok(rev);
        }
        if let Some(fence) = ch.fence {
            let now = self.get(self.keys.leader()).await?;
            if now.is_none_or(|(_, _, created)| created != fence) {
                return Err(Refused::NotLeader.into());
            }
        }
        for (name, base) in &ch.base {
            let now = self.get(self.keys.service(name)).await?;
            if now.map(|(_, m, _)| m).unwrap_or(0) != *base {
                return Err(Refused::Conflict(name.clone()).into());
            }
        }
        Err(Refused::Conflict(ch.services.keys().next().cloned().unwrap_or_default()).into())
    }

    pub async fn grant(&self, ttl: Duration) -> Result<i64> {
        let mut c = self.client.clone();
        let r = c
            .lease_grant(ttl.as_secs().max(1) as i64, None)
            .await
            .map_err(unreachable)?;
        Ok(r.id())
    }

    /// One keep-alive; false when the lease is gone (expired).
    pub async fn keep_alive(&self, lease: i64) -> Result<bool> {
        let mut c = self.client.clone();
        let (mut keeper, mut stream) = c.lease_keep_alive(lease).await.map_err(unreachable)?;
        keeper.keep_alive().await.map_err(unreachable)?;
        let r = tokio::time::timeout(CALL_TIMEOUT, stream.message())
            .await
            .context("etcd did not answer a lease keep-alive")?
            .map_err(unreachable)?;
        Ok(r.is_some_and(|r| r.ttl() > 0))
    }

    pub async fn publish(&self, report: &HostReport, lease: i64) -> Result<()> {
        let mut c = self.client.clone();
        c.put(
            self.keys.host(&self.host),
            serde_json::to_vec(report)?,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(unreachable)?;
        Ok(())
    }

    /// Becomes the leader if there is none. Some(fencing token) when it did.
    pub async fn campaign(&self, lease: i64) -> Result<Option<i64>> {
        let key = self.keys.leader();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                self.host.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let mut c = self.client.clone();
        let r = c.txn(txn).await.map_err(unreachable)?;
        Ok(r.succeeded()
            .then(|| r.header().map(|h| h.revision()).unwrap_or(0)))
    }

    /// Steps down (a clean stop): the others need not wait for the lease.
    pub async fn resign(&self, fence: i64) -> Result<()> {
        let key = self.keys.leader();
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                fence,
            )])
            .and_then([TxnOp::delete(key, None)]);
        let mut c = self.client.clone();
        c.txn(txn).await.map_err(unreachable)?;
        Ok(())
    }

    /// Keeps the newest `keep` events of a service's history, fenced like
    /// every leader write. How many were deleted.
    pub async fn prune_history(&self, service: &str, keep: usize, fence: i64) -> Result<usize> {
        let prefix = self.keys.history(service);
        let mut c = self.client.clone();
        let r = c
            .get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(unreachable)?;
        let keys = r.kvs();
        if keys.len() <= keep {
            return Ok(0);
        }
        let first_kept = keys[keys.len() - keep].key().to_vec();
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.keys.leader(),
                CompareOp::Equal,
                fence,
            )])
            .and_then([TxnOp::delete(
                prefix,
                Some(etcd_client::DeleteOptions::new().with_range(first_kept)),
            )]);
        let r = c.txn(txn).await.map_err(unreachable)?;
        Ok(if r.succeeded() { keys.len() - keep } else { 0 })
    }

    /// The fleet's history of a service, oldest first.
    pub async fn history(&self, service: &str) -> Result<Vec<Event>> {
        let mut c = self.client.clone();
        let r = c
            .get(
                self.keys.history(service),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(unreachable)?;
        Ok(r.kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }
}
