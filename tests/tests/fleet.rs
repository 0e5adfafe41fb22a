//! Fleet mode with a real etcd, three real daemons (XDP in their own
//! namespaces) and real traffic: commands from any host, leader fail-over
//! at the same step, fenced writes, fleet-wide gates and health, etcd down.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use switch_tests::{
    daemon::Daemon,
    fleet::{FleetLab, SEED, VIP, backend},
};

fn services(health: bool) -> String {
    let h = if health {
        "health = { kind = \"tcp\", interval = \"200ms\", timeout = \"150ms\", rise = 1, fall = 2 }\n"
    } else {
        ""
    };
    format!(
        "[[service]]\nname = \"web\"\nvip = \"{VIP}:80\"\nprotocol = \"tcp\"\n{h}\
         [[service.pools]]\nname = \"blue\"\nweight = 100\nbackends = [\"{}\", \"{}\"]\n\
         [[service.pools]]\nname = \"green\"\nweight = 0\nbackends = [\"{}\", \"{}\"]\n",
        backend(1),
        backend(2),
        backend(3),
        backend(4)
    )
}

fn fleet(st: &serde_json::Value) -> &serde_json::Value {
    &st["fleet"]
}

fn weight(st: &serde_json::Value, pool: &str) -> u64 {
    st["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == pool))
        .and_then(|p| p["weight"].as_u64())
        .unwrap_or(u64::MAX)
}

/// Starts three hosts and waits until they see each other and a leader.
fn start(lab: &FleetLab, svc: &str) -> Result<Vec<Daemon>> {
    let mut ds = Vec::new();
    for i in 1..=3 {
        ds.push(lab.daemon(i, svc, "lease = \"2s\"", SEED)?);
    }
    for d in &ds {
        d.wait_for("web", 20, |st| {
            let f = fleet(st);
            f["leader"].is_string()
                && f["hosts"]
                    .as_array()
                    .is_some_and(|h| h.iter().filter(|h| h["alive"] == true).count() == 3)
        })?;
    }
    Ok(ds)
}

/// `n` requests from client `i`, each on a new connection: answers by backend.
fn requests(lab: &FleetLab, i: usize, n: usize) -> Result<BTreeMap<String, usize>> {
    let out = lab.clis[i - 1].exec(&format!(
        "for k in $(seq {n}); do curl -s --max-time 2 http://{VIP}/ || echo FAILED; done"
    ))?;
    let mut by = BTreeMap::new();
    for l in out.lines() {
        let who = l.trim_start_matches("hello from ").to_string();
        *by.entry(who).or_insert(0) += 1;
    }
    Ok(by)
}

fn share_green(by: &BTreeMap<String, usize>) -> f64 {
    let green: usize = [backend(3), backend(4)]
        .iter()
        .map(|b| by.get(b).copied().unwrap_or(0))
        .sum();
    green as f64 / by.values().sum::<usize>().max(1) as f64
}

#[test]
fn a_canary_from_any_host_changes_every_host_within_a_second() -> Result<()> {
    let lab = FleetLab::new(3)?;
    lab.start_backends(&[1, 2, 3, 4])?;
    let ds = start(&lab, &services(false))?;
    // Every client, through its own host, reaches the blue pool.
    for i in 1..=3 {
        let by = requests(&lab, i, 10)?;
        assert!(!by.contains_key("FAILED"), "host {i}: {by:?}");
        assert_eq!(share_green(&by), 0.0, "host {i}: {by:?}");
    }
    // Started from host 3's CLI.
    let t = Instant::now();
    ds[2].ok(&[
        "canary", "web", "--to", "green", "--steps", "30,60", "--interval", "1h", "--min-flows",
        "0",
    ])?;
    for d in &ds {
        d.wait_for("web", 5, |st| weight(st, "green") == 30)?;
    }
    let converged = t.elapsed();
    assert!(
        converged < Duration::from_secs(1),
        "all hosts applied after {converged:?}"
    );
    // Every host's split follows the weight, and every host has the same
    // generation of the service.
    let revs: Vec<i64> = ds
        .iter()
        .map(|d| d.status("web").map(|st| fleet(&st)["revision"].as_i64().unwrap_or(0)))
        .collect::<Result<_>>()?;
    assert!(revs.iter().all(|r| *r == revs[0] && *r > 0), "{revs:?}");
    for i in 1..=3 {
        let by = requests(&lab, i, 200)?;
        assert!(!by.contains_key("FAILED"), "host {i}: {by:?}");
        let g = share_green(&by);
        assert!((0.18..=0.42).contains(&g), "host {i}: green share {g}: {by:?}");
    }
    // The fleet's history is the same on every host.
    let h1 = ds[0].ok(&["history", "web", "--json"])?;
    let h2 = ds[1].ok(&["history", "web", "--json"])?;
    assert_eq!(h1, h2);
    assert!(h1.contains("canary"), "{h1}");
    Ok(())
}

#[test]
fn concurrent_conflicting_commands_one_wins_nothing_half_applied() -> Result<()> {
    let lab = FleetLab::new(3)?;
    lab.start_backends(&[1, 2, 3, 4])?;
    let ds = start(&lab, &services(false))?;
    let mut conflicts = 0;
    for round in 0..40u32 {
        let (wa, wb) = (10 + round, 50 + round);
        let a = ds[0].cli_spawn(&["weights", "web", &format!("green={wa}")])?;
        let b = ds[1].cli_spawn(&["weights", "web", &format!("green={wb}")])?;
        let (ra, rb) = (a.wait_with_output()?, b.wait_with_output()?);
        let (oka, okb) = (ra.status.success(), rb.status.success());
        assert!(oka || okb, "neither command went through");
        for (ok, r) in [(oka, &ra), (okb, &rb)] {
            if !ok {
                let e = String::from_utf8_lossy(&r.stderr);
                assert!(e.contains("changed by another command"), "{e}");
                assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
                conflicts += 1;
            }
        }
        // Every host ends on the same weight: the winner's (or the later).
        let expect: Vec<u64> = match (oka, okb) {
            (true, false) => vec![wa as u64],
            (false, true) => vec![wb as u64],
            _ => vec![wa as u64, wb as u64],
        };
        let mut seen = vec![];
        for d in &ds {
            let st = d.wait_for("web", 5, |st| expect.contains(&weight(st, "green")))?;
            seen.push(weight(&st, "green"));
        }
        std::thread::sleep(Duration::from_millis(200));
        for d in &ds {
            seen.push(weight(&d.status("web")?, "green"));
        }
        assert!(seen.iter().all(|w| *w == seen[0]), "hosts disagree: {seen:?}");
        if conflicts > 0 && round > 5 {
            break;
        }
    }
    if conflicts == 0 {
        bail!("no two commands ever met in 40 rounds; the conflict path went untested");
    }
    Ok(())
}

#[test]
fn a_host_with_another_seed_is_refused() -> Result<()> {
    let lab = FleetLab::new(3)?;
    lab.start_backends(&[1, 2])?;
    let _a = lab.daemon(1, &services(false), "", SEED)?;
    let err = match lab.daemon(2, &services(false), "", "0badbeef") {
        Ok(mut d) => {
            // It may have started before etcd answered: it must exit.
            let t = Instant::now();
            loop {
                if let Some(c) = d.child.as_mut()
                    && let Some(s) = c.try_wait()?
                {
                    break format!("exited {s}");
                }
                if t.elapsed() > Duration::from_secs(10) {
                    bail!("a host with another seed kept running");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("exited") || err.contains("daemon exited"), "{err}");
    // Nothing of it reached etcd.
    let hosts = lab.etcdctl("get --prefix --keys-only /switch/hosts/")?;
    assert!(!hosts.contains("sw-2"), "{hosts}");
    Ok(())
}
