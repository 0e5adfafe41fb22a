//! The fleet's data path behind a real router: every switch host announces
//! its VIPs over BGP (its own BIRD 2), an unmodified BIRD 2 router installs
//! kernel ECMP routes, and connections survive moving between hosts.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use switch_tests::{
    daemon::Daemon,
    fleet::{BgpLab, VIP, VIP6, backend, backend6, blue_green},
};

fn services() -> String {
    format!(
        "{}\n{}",
        blue_green("web", &format!("{VIP}:80"), "mode = \"dsr\"", backend),
        blue_green("web6", &format!("[{VIP6}]:80"), "mode = \"dsr\"", backend6)
    )
}

fn start(lab: &BgpLab, hosts: usize, env: &[(&str, &str)]) -> Result<Vec<Daemon>> {
    let mut ds = Vec::new();
    for i in 1..=hosts {
        ds.push(lab.daemon(i, &services(), env)?);
    }
    lab.wait_next_hops(VIP, hosts, 20)?;
    lab.wait_next_hops(VIP6, hosts, 20)?;
    Ok(ds)
}

/// `webn`: a nat service on 198.18.40.20:80 over all four backends.
fn nat_service() -> String {
    format!(
        "[[service]]\nname = \"webn\"\nvip = \"198.18.40.20:80\"\nprotocol = \"tcp\"\n\
         [[service.pools]]\nname = \"blue\"\nweight = 100\nbackends = [\"{}\", \"{}\", \"{}\", \"{}\"]\n",
        backend(1),
        backend(2),
        backend(3),
        backend(4)
    )
}

fn new_flows(d: &Daemon, svc: &str) -> Result<u64> {
    Ok(d.status(svc)?["new_flows"].as_u64().unwrap_or(0))
}

#[test]
fn the_router_learns_one_route_per_host_and_every_host_gets_new_flows() -> Result<()> {
    let lab = BgpLab::new(3)?;
    lab.start_backends()?;
    let ds = start(&lab, 3, &[])?;
    for (svc, url) in [
        ("web", format!("http://{VIP}/")),
        ("web6", format!("http://[{VIP6}]/")),
    ] {
        let out = lab.cli.exec(&format!(
            "for k in $(seq 60); do curl -s --max-time 2 {url} >/dev/null && echo ok || echo FAILED; done"
        ))?;
        assert_eq!(out.matches("ok").count(), 60, "{svc}: {out}");
        for (i, d) in ds.iter().enumerate() {
            let n = new_flows(d, svc)?;
            assert!(n > 0, "{svc}: host {} got no new flow", i + 1);
        }
    }
    wait_announced(&ds[0], "web")?;
    wait_announced(&ds[0], "web6")?;
    let st = ds[0].status("web")?;
    let sessions = st["bgp"]["sessions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !sessions.is_empty() && sessions.iter().all(|s| s["state"] == "Established"),
        "{st}"
    );
    Ok(())
}

/// `n` slow downloads of /big (2 MiB) from the client, each its own
/// connection; returns when all have started.
fn downloads(lab: &BgpLab, n: usize, url: &str) -> Result<std::process::Child> {
    let script = format!(
        "for k in $(seq {n}); do (curl -s -o /dev/null --max-time 60 -w '%{{http_code}} %{{size_download}}\\n' {url} || echo FAILED) & done; wait"
    );
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.cli.name, "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    // Every connection established (and pinned on its host) before the
    // caller changes anything.
    let t = Instant::now();
    let mut last = (0, 0);
    loop {
        let est = lab
            .cli
            .exec("ss -tn | grep -c ESTAB || true")?
            .trim()
            .parse::<usize>()
            .unwrap_or(0);
        // All of them, or as many as ever get there (a steady count).
        if est >= n || (est > n / 2 && est == last.0 && last.1 >= 10) {
            break;
        }
        last = if est == last.0 {
            (est, last.1 + 1)
        } else {
            (est, 0)
        };
        if t.elapsed() > Duration::from_secs(15) {
            bail!(
                "only {est} of {n} downloads connected:\n{}",
                lab.cli
                    .exec(&format!(
                        "ss -tn; curl -sS -o /dev/null -w '%{{http_code}} %{{size_download}}' --max-time 3 {url} 2>&1; true"
                    ))
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

/// Every download complete (HTTP 200, 2 MiB): none was reset.
fn all_complete(child: std::process::Child, n: usize) -> Result<usize> {
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let good = text.lines().filter(|l| *l == "200 2097152").count();
    // A broken download prints its partial result and FAILED.
    let failed = text.lines().filter(|l| *l == "FAILED").count();
    if good + failed != n {
        bail!("{good} complete and {failed} failed of {n}: {text}");
    }
    Ok(good)
}

#[test]
fn long_lived_connections_survive_their_host_leaving_or_losing_its_link() -> Result<()> {
    let lab = BgpLab::new(3)?;
    lab.start_backends()?;
    let ds = start(&lab, 3, &[])?;
    let n = 30;
    let dl = downloads(&lab, n, &format!("http://{VIP}/big"))?;
    // Graceful: host 1 leaves.
    ds[0].ok(&["fleet", "leave"])?;
    lab.wait_next_hops(VIP, 2, 10)?;
    wait_announcement(&ds[0], "web", false)?;
    std::thread::sleep(Duration::from_secs(2));
    // Abrupt: host 2's link goes down (its BGP session times out).
    lab.lab.sws[1].exec("ip link set eth0 down")?;
    lab.wait_next_hops(VIP, 1, 15)?;
    let good = all_complete(dl, n)?;
    assert_eq!(good, n, "{} of {n} downloads broke", n - good);
    // Host 2 back, host 1 rejoins: three routes again.
    lab.lab.sws[1].exec("ip link set eth0 up")?;
    ds[0].ok(&["fleet", "join"])?;
    lab.wait_next_hops(VIP, 3, 20)?;
    Ok(())
}

/// Long downloads, a weight change (5 → 25 % green), then two of three
/// hosts withdraw: every connection lands on host 3, which never saw them.
fn move_after_a_step(history: bool) -> Result<(usize, usize, u64)> {
    let lab = BgpLab::new(3)?;
    lab.start_backends()?;
    let env: &[(&str, &str)] = if history {
        &[]
    } else {
        &[("SWITCH_TEST_NO_SLOT_HISTORY", "1")]
    };
    let ds = start(&lab, 3, env)?;
    ds[0].ok(&["weights", "web", "blue=95", "green=5"])?;
    let n = 60;
    let dl = downloads(&lab, n, &format!("http://{VIP}/big"))?;
    ds[1].ok(&["weights", "web", "blue=75", "green=25"])?;
    ds[0].ok(&["fleet", "leave"])?;
    ds[1].ok(&["fleet", "leave"])?;
    lab.wait_next_hops(VIP, 1, 10)?;
    let good = all_complete(dl, n)?;
    let prev = ds[2].status("web")?["nonsyn_miss_prev"]
        .as_u64()
        .unwrap_or(0);
    Ok((good, n, prev))
}

#[test]
fn connections_moved_after_a_canary_step_survive_thanks_to_slot_history() -> Result<()> {
    let (good, n, prev) = move_after_a_step(true)?;
    assert_eq!(good, n, "{} of {n} downloads broke", n - good);
    assert!(prev > 0, "no packet went to a previous owner");
    // The same run without the history breaks some: the mechanism, not luck.
    let (good, n, _) = move_after_a_step(false)?;
    assert!(good < n, "all {n} survived without slot history");
    Ok(())
}

#[test]
fn hosts_leave_rejoin_and_a_fourth_joins_under_load_without_errors() -> Result<()> {
    let lab = BgpLab::new(4)?;
    lab.start_backends()?;
    let mut ds = start(&lab, 3, &[])?;
    let url = format!("http://{VIP}/");
    let cli = switch_tests::Netns {
        name: lab.cli.name.clone(),
    };
    let load = std::thread::spawn(move || {
        let r = switch_tests::http::wrk_in(&cli, &url, 10, 20, "");
        std::mem::forget(cli);
        r
    });
    std::thread::sleep(Duration::from_secs(2));
    ds[0].ok(&["fleet", "leave"])?;
    lab.wait_next_hops(VIP, 2, 10)?;
    std::thread::sleep(Duration::from_secs(1));
    ds[0].ok(&["fleet", "join"])?;
    lab.wait_next_hops(VIP, 3, 10)?;
    ds.push(lab.daemon(4, &services(), &[])?);
    lab.wait_next_hops(VIP, 4, 15)?;
    let t = Instant::now();
    let r = load.join().expect("wrk thread")?;
    assert_eq!(
        r.errors,
        0,
        "{r:?} ({:?} after the last change)",
        t.elapsed()
    );
    assert!(new_flows(&ds[3], "web")? > 0 || r.rps > 0.0);
    Ok(())
}

#[test]
fn a_fleet_refuses_fullnat_with_a_reason_and_changes_nothing() -> Result<()> {
    let lab = BgpLab::new(1)?;
    let d = lab.daemon(1, &services(), &[])?;
    lab.wait_next_hops(VIP, 1, 20)?;
    let full = format!(
        "[[service]]\nname = \"n\"\nvip = \"198.18.40.11:80\"\nprotocol = \"tcp\"\nmode = \"fullnat\"\nsource = \"198.18.30.1\"\n\
         [[service.pools]]\nname = \"a\"\nweight = 100\nbackends = [\"{}\"]\n",
        backend(1)
    );
    let file = d.dir.join("full.toml");
    std::fs::write(&file, format!("{}\n{full}", services()))?;
    let (ok, msg) = d.cli(&["apply", "-f", file.to_str().unwrap_or_default()])?;
    assert!(!ok, "fullnat was accepted in a fleet");
    assert!(
        msg.contains("fullnat is not supported in fleet mode"),
        "{msg}"
    );
    // Nothing changed: still the same services, announced.
    wait_announced(&d, "web")?;
    assert!(d.cli(&["status", "n"])?.1.contains("no service"));
    Ok(())
}

#[test]
fn nat_replies_through_a_host_that_never_saw_the_connection_are_rewritten() -> Result<()> {
    let lab = BgpLab::new(3)?;
    lab.start_backends()?;
    // The backends' way back to the clients is host 3 alone: replies of
    // connections hosts 1 and 2 forwarded cross a host without their pin.
    for b in &lab.bes {
        b.exec("ip route replace 198.18.20.0/24 via 198.18.30.3")?;
    }
    let nat = nat_service();
    let mut ds = Vec::new();
    for i in 1..=3 {
        ds.push(lab.daemon(i, &format!("{}\n{nat}", services()), &[])?);
    }
    lab.wait_next_hops("198.18.40.20", 3, 20)?;
    let out = lab.cli.exec(
        "for k in $(seq 60); do curl -s --max-time 2 http://198.18.40.20/ || echo FAILED; done",
    )?;
    assert!(!out.contains("FAILED"), "{out}");
    assert_eq!(out.matches("hello from").count(), 60, "{out}");
    for (i, d) in ds.iter().enumerate().take(2) {
        assert!(
            new_flows(d, "webn")? > 0,
            "host {} forwarded nothing",
            i + 1
        );
    }
    // Long downloads survive their host leaving, replies still via host 3.
    let n = 20;
    let dl = downloads(&lab, n, "http://198.18.40.20/big")?;
    ds[0].ok(&["fleet", "leave"])?;
    lab.wait_next_hops("198.18.40.20", 2, 10)?;
    let good = all_complete(dl, n)?;
    assert_eq!(good, n, "{} of {n} downloads broke", n - good);
    Ok(())
}

#[test]
fn a_fresh_host_takes_over_connections_moved_after_a_step() -> Result<()> {
    let lab = BgpLab::new(4)?;
    lab.start_backends()?;
    let mut ds = start(&lab, 3, &[])?;
    ds[0].ok(&["weights", "web", "blue=95", "green=5"])?;
    let n = 60;
    let dl = downloads(&lab, n, &format!("http://{VIP}/big"))?;
    ds[1].ok(&["weights", "web", "blue=75", "green=25"])?;
    // Host 4 starts after the step: it never saw the table before it, yet
    // must know each slot's previous owner like the others.
    ds.push(lab.daemon(4, &services(), &[])?);
    lab.wait_next_hops(VIP, 4, 20)?;
    for d in &ds[..3] {
        d.ok(&["fleet", "leave"])?;
    }
    lab.wait_next_hops(VIP, 1, 10)?;
    let good = all_complete(dl, n)?;
    assert_eq!(good, n, "{} of {n} downloads broke", n - good);
    let prev = ds[3].status("web")?["nonsyn_miss_prev"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        prev > 0,
        "no packet went to a previous owner on the new host"
    );
    Ok(())
}

/// Waits (a few status rounds: status reads BIRD twice a second) until
/// `svc` is reported announced.
fn wait_announced(d: &Daemon, svc: &str) -> Result<()> {
    wait_announcement(d, svc, true)
}

fn wait_announcement(d: &Daemon, svc: &str, want: bool) -> Result<()> {
    let t = Instant::now();
    while announcement(d, svc)?.0 != want {
        if t.elapsed() > Duration::from_secs(5) {
            bail!(
                "{svc} not reported announced {want}: {:?}",
                announcement(d, svc)?
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// `status --json`'s view of one service's announcement: (announced, why not).
fn announcement(d: &Daemon, svc: &str) -> Result<(bool, String)> {
    let st = d.status(svc)?;
    let vip = st["vip"].as_str().unwrap_or_default().to_string();
    let ip = vip
        .rsplit_once(':')
        .map(|(a, _)| a.trim_matches(['[', ']']).to_string())
        .unwrap_or_default();
    let why = st["bgp"]["not_announced"][&ip]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((st["announced"] == true, why))
}

#[test]
fn an_ipv6_vip_with_only_ipv4_neighbors_is_reported_not_announced_with_the_reason() -> Result<()> {
    let lab = BgpLab::new(1)?;
    lab.start_backends()?;
    let d = lab.daemon_with_neighbors(
        1,
        &services(),
        &[],
        "{ address = \"198.18.30.254\", asn = 65000 }",
    )?;
    lab.wait_next_hops(VIP, 1, 20)?;
    let t = Instant::now();
    loop {
        let (v4, _) = announcement(&d, "web")?;
        let (v6, why) = announcement(&d, "web6")?;
        if v4 && !v6 && why.contains("198.18.30.254 does not take IPv6 routes") {
            break;
        }
        if t.elapsed() > Duration::from_secs(10) {
            bail!("web announced {v4}; web6 announced {v6}, why {why:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The router agrees: no route at all for the IPv6 VIP.
    assert_eq!(lab.next_hops(VIP6)?, 0);
    let text = d.ok(&["status", "web6"])?;
    assert!(
        text.contains("this VIP NOT announced (198.18.30.254 does not take IPv6 routes"),
        "{text}"
    );
    Ok(())
}

#[test]
fn a_dead_bird_is_started_again_within_two_seconds_and_announces_again_under_load() -> Result<()> {
    let lab = BgpLab::new(2)?;
    lab.start_backends()?;
    let ds = start(&lab, 2, &[])?;
    wait_announced(&ds[0], "web")?;
    let cli = lab.cli.name.clone();
    let load = std::thread::spawn(move || {
        switch_tests::sh(&format!(
            "ip netns exec {cli} wrk -t2 -c16 -d8s http://{VIP}/"
        ))
    });
    std::thread::sleep(Duration::from_secs(2));
    let pid_file = ds[0].dir.join("state/bgp/bird.pid");
    let pid = std::fs::read_to_string(&pid_file)?;
    lab.lab.sws[0].exec(&format!("kill -9 {}", pid.trim()))?;
    let t = Instant::now();
    loop {
        let st = ds[0].status("web")?;
        if st["bgp"]["restarts"].as_u64().unwrap_or(0) >= 1 && st["bgp"]["bird_answering"] == true {
            break;
        }
        if t.elapsed() > Duration::from_secs(2) {
            bail!("2 s after BIRD died it is not running again: {st}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let new_pid = std::fs::read_to_string(&pid_file)?;
    assert_ne!(new_pid.trim(), pid.trim(), "the same BIRD?");
    assert!(
        lab.lab.metrics(1)?.contains("switch_bgp_restarts_total 1"),
        "{}",
        lab.lab.metrics(1)?
    );
    // It announces again what it should: the router is back to two paths.
    wait_announced(&ds[0], "web")?;
    lab.wait_next_hops(VIP, 2, 10)?;
    let out = load.join().expect("wrk thread")?;
    assert!(
        !out.contains("Socket errors") && !out.contains("Non-2xx"),
        "wrk saw errors:\n{out}"
    );
    Ok(())
}

/// Both VIPs reached through every host, each host with neighbors of one
/// family only: the other family's VIP rides that session (MP-BGP) with a
/// next hop of its own family (this host's address towards the router).
fn one_family_sessions_carry_both(neighbor: &str) -> Result<()> {
    let lab = BgpLab::with_router(2, true)?;
    lab.start_backends()?;
    let ds = (1..=2)
        .map(|i| lab.daemon_with_neighbors(i, &services(), &[], neighbor))
        .collect::<Result<Vec<_>>>()?;
    lab.wait_next_hops(VIP, 2, 20)?;
    lab.wait_next_hops(VIP6, 2, 20)?;
    for (svc, url) in [
        ("web", format!("http://{VIP}/")),
        ("web6", format!("http://[{VIP6}]/")),
    ] {
        let out = lab.cli.exec(&format!(
            "for k in $(seq 20); do curl -s --max-time 2 {url} >/dev/null && echo ok || echo FAILED; done"
        ))?;
        assert_eq!(out.matches("ok").count(), 20, "{svc}: {out}");
        for d in &ds {
            wait_announced(d, svc)?;
        }
    }
    Ok(())
}

#[test]
fn ipv6_vips_ride_ipv4_sessions() -> Result<()> {
    one_family_sessions_carry_both("{ address = \"198.18.30.254\", asn = 65000 }")
}

#[test]
fn ipv4_vips_ride_ipv6_sessions() -> Result<()> {
    one_family_sessions_carry_both("{ address = \"2001:2:30::fe\", asn = 65000 }")
}

/// Waits until the router's next hops for the VIP and the hosts that say
/// they announce it agree, at `want`.
fn router_agrees(lab: &BgpLab, ds: &[&Daemon], want: usize) -> Result<()> {
    let t = Instant::now();
    loop {
        let router = lab.next_hops(VIP)?;
        let mut reported = 0;
        for d in ds {
            reported += usize::from(announcement(d, "web")?.0);
        }
        if router == want && reported == want {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(15) {
            bail!("router has {router} next hops, {reported} hosts say they announce; want {want}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn what_hosts_report_matches_the_routers_table_through_leave_join_detach_and_a_dead_pool()
-> Result<()> {
    let lab = BgpLab::new(2)?;
    lab.start_backends()?;
    let checked = blue_green(
        "web",
        &format!("{VIP}:80"),
        "mode = \"dsr\"\nhealth = { kind = \"tcp\", interval = \"200ms\", timeout = \"200ms\", rise = 1, fall = 2 }",
        backend,
    );
    let mut ds = (1..=2)
        .map(|i| lab.daemon(i, &checked, &[]))
        .collect::<Result<Vec<_>>>()?;
    lab.wait_next_hops(VIP, 2, 20)?;
    router_agrees(&lab, &[&ds[0], &ds[1]], 2)?;
    ds[0].ok(&["fleet", "leave"])?;
    router_agrees(&lab, &[&ds[0], &ds[1]], 1)?;
    ds[0].ok(&["fleet", "join"])?;
    router_agrees(&lab, &[&ds[0], &ds[1]], 2)?;
    // Detach on host 2 (its daemon stopped first): BIRD stops, the router
    // withdraws it, and host 1 alone says it announces.
    ds[1].kill9();
    // From this namespace: `ip netns exec` would hide bpffs and the pins.
    let out = std::process::Command::new(switch_tests::daemon::switch_bin()?)
        .arg("detach")
        .arg("--pin-dir")
        .arg(&ds[1].pins)
        .arg("--state-dir")
        .arg(ds[1].dir.join("state"))
        .output()?;
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.contains("stopped the BGP speaker"), "{out}");
    router_agrees(&lab, &[&ds[0]], 1)?;
    // The live pool's backends die: no service of the VIP can serve, the
    // host withdraws it, and says so.
    lab.lab.fab.exec(&format!(
        "kill $(cat {d}/be1.pid) $(cat {d}/be2.pid)",
        d = lab.lab.dir.display()
    ))?;
    router_agrees(&lab, &[&ds[0]], 0)?;
    Ok(())
}

/// No `[bgp]`: the router has a static ECMP route to the VIP over the three
/// hosts and the backends' way back is ECMP over the three hosts too (as
/// with a VRRP gateway, replies and requests take different hosts). Every
/// fresh connection is answered, and `wrk` sees no error.
#[test]
fn a_fleet_without_bgp_behind_static_ecmp_answers_every_connection() -> Result<()> {
    let lab = BgpLab::new(3)?;
    lab.start_backends()?;
    lab.rt.exec(
        "ip route add 198.18.40.20/32 nexthop via 198.18.30.1 nexthop via 198.18.30.2 nexthop via 198.18.30.3",
    )?;
    for b in &lab.bes {
        b.exec(
            "sysctl -qw net.ipv4.fib_multipath_hash_policy=1 && \
             ip route replace 198.18.20.0/24 nexthop via 198.18.30.1 nexthop via 198.18.30.2 nexthop via 198.18.30.3",
        )?;
    }
    let nat = nat_service();
    let mut ds = Vec::new();
    for i in 1..=3 {
        let mut d = Daemon::prepare(
            &lab.lab.sws[i - 1],
            &format!("static{i}"),
            &["eth0"],
            &format!("seed = \"{}\"", switch_tests::fleet::SEED),
            &format!(
                "{nat}\n[fleet]\nhost = \"sw-{i}\"\netcd = [\"{}\"]\nlease = \"2s\"\n",
                switch_tests::fleet::ETCD
            ),
        )?;
        d.spawn()?;
        ds.push(d);
    }
    // The service comes from etcd (seeded by the first host): wait until
    // every host has it.
    let t = Instant::now();
    while !ds.iter().all(|d| {
        d.status("webn")
            .is_ok_and(|st| st["pools"][0]["weight"] == 100)
    }) {
        if t.elapsed() > Duration::from_secs(15) {
            bail!("the fleet did not apply webn within 15 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = lab.cli.exec(
        "for k in $(seq 200); do curl -s --max-time 2 http://198.18.40.20/ || echo FAILED; done",
    )?;
    assert!(!out.contains("FAILED"), "{out}");
    assert_eq!(out.matches("hello from").count(), 200, "{out}");
    let r = switch_tests::http::wrk_in(&lab.cli, "http://198.18.40.20/", 5, 16, "")?;
    assert_eq!(r.errors, 0, "wrk: {r:?}");
    // Every host forwarded some of them.
    for (i, d) in ds.iter().enumerate() {
        assert!(
            new_flows(d, "webn")? > 0,
            "host {} forwarded nothing",
            i + 1
        );
    }
    Ok(())
}

/// Sessions with a TCP MD5 password and BFD against a router configured
/// alike: the right password establishes (BFD up on the router), a wrong
/// one does not, and that host's status says its VIP is not announced.
#[test]
fn bgp_sessions_take_a_password_and_bfd_and_a_wrong_password_is_reported() -> Result<()> {
    let lab = BgpLab::with_router_opts(
        2,
        false,
        "password \"s3cret\"; bfd on;",
        "protocol bfd { interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }",
    )?;
    lab.start_backends()?;
    let good = lab.lab.dir.join("good-password");
    let bad = lab.lab.dir.join("bad-password");
    std::fs::write(&good, "s3cret\n")?;
    std::fs::write(&bad, "wrong\n")?;
    let neighbor = |file: &std::path::Path| {
        format!(
            "{{ address = \"198.18.30.254\", asn = 65000, password_file = \"{}\", bfd = true, bfd_interval = \"100ms\", bfd_multiplier = 3 }}",
            file.display()
        )
    };
    let svc = blue_green("web", &format!("{VIP}:80"), "mode = \"dsr\"", backend);
    let d1 = lab.daemon_with_neighbors(1, &svc, &[], &neighbor(&good))?;
    let d2 = lab.daemon_with_neighbors(2, &svc, &[], &neighbor(&bad))?;
    wait_announced(&d1, "web")?;
    lab.wait_next_hops(VIP, 1, 10)?;
    // BFD runs on the session that came up.
    let t = Instant::now();
    loop {
        let bfd = lab.rt.exec(&format!(
            "birdc -s {}/router.ctl show bfd sessions",
            lab.lab.dir.display()
        ))?;
        if bfd.contains("198.18.30.1") && bfd.contains("Up") {
            break;
        }
        if t.elapsed() > Duration::from_secs(10) {
            bail!("no BFD session up on the router:\n{bfd}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The wrong password: no session, and the host says so.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        lab.next_hops(VIP)?,
        1,
        "the host with the wrong password got in"
    );
    let st = d2.status("web")?;
    assert_ne!(st["bgp"]["sessions"][0]["state"], "Established", "{st}");
    let (announced, why) = announcement(&d2, "web")?;
    assert!(!announced, "{why}");
    // The password is in no status.
    assert!(!d1.ok(&["status", "--json"])?.contains("s3cret"));
    Ok(())
}
