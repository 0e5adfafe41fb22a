//! Deployment strategies with real traffic through the daemon: canary
//! splits and gates, previews for a cohort, rolling replacement, restarts
//! in the middle of a canary, and flips for IPv6 and UDP.

use std::{net::SocketAddr, time::Duration};

use switch_tests::{
    daemon::Daemon,
    lab::Lab,
    traffic::{
        Load, Stream, add_backend_addrs, ask_once, line_servers, reset_servers, udp_servers,
    },
};

fn vip() -> SocketAddr {
    "198.18.10.10:80".parse().unwrap()
}

fn is_green(answer: &str) -> bool {
    answer.ends_with(".13:8080") || answer.ends_with(".14:8080")
}

fn service(health: &str) -> String {
    switch_tests::service::blue_green(8080, health)
}

const HEALTH: &str =
    r#"health = { kind = "tcp", interval = "100ms", timeout = "100ms", rise = 2, fall = 2 }"#;

#[test]
fn a_ten_percent_step_sends_ten_percent_of_new_connections() {
    let lab = Lab::new().unwrap();
    line_servers(
        &lab,
        (1..=4).map(|i| Lab::backend(false, i, 8080)).collect(),
    );
    let d = Daemon::start(&lab, "split", &service("")).unwrap();
    d.ok(&["weights", "web", "blue=90", "green=10"]).unwrap();
    let (green, n) = lab
        .cli
        .run(|| {
            let n = 10_000;
            let green = (0..n)
                .filter(|_| is_green(&ask_once(vip(), None).expect("connection")))
                .count();
            (green, n)
        })
        .unwrap();
    let share = green as f64 / n as f64;
    eprintln!(
        "green share of {n} connections at a 10% step: {:.2}%",
        share * 100.0
    );
    assert!((share - 0.10).abs() <= 0.015, "share {share}");
}

#[test]
fn a_preview_cohort_sees_the_new_pool_and_nobody_else_does() {
    let lab = Lab::new().unwrap();
    line_servers(
        &lab,
        (1..=4).map(|i| Lab::backend(false, i, 8080)).collect(),
    );
    lab.cli.exec("ip addr add 198.18.0.3/24 dev cli0").unwrap();
    let d = Daemon::start(&lab, "cohort", &service("")).unwrap();
    d.ok(&["flip", "web", "--to", "green", "--preview", "198.18.0.3/32"])
        .unwrap();
    let (office, others) = lab
        .cli
        .run(|| {
            let office: Vec<String> = (0..100)
                .map(|_| ask_once(vip(), Some("198.18.0.3".parse().unwrap())).unwrap())
                .collect();
            let others: Vec<String> = (0..100)
                .map(|_| ask_once(vip(), Some("198.18.0.2".parse().unwrap())).unwrap())
                .collect();
            (office, others)
        })
        .unwrap();
    assert!(
        office.iter().all(|a| is_green(a)),
        "cohort reached blue: {office:?}"
    );
    assert!(
        others.iter().all(|a| !is_green(a)),
        "others reached green: {others:?}"
    );
    d.ok(&["promote", "web"]).unwrap();
    let all = lab
        .cli
        .run(|| {
            (0..50)
                .map(|_| ask_once(vip(), None).unwrap())
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert!(
        all.iter().all(|a| is_green(a)),
        "after promote everyone sees green"
    );
    d.ok(&["rollback", "web"]).unwrap();
    let all = lab
        .cli
        .run(|| {
            (0..50)
                .map(|_| ask_once(vip(), None).unwrap())
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert!(
        all.iter().all(|a| !is_green(a)),
        "after rollback everyone sees blue"
    );
}

#[test]
fn a_healthy_canary_walks_to_100_percent_under_load() {
    let lab = Lab::new().unwrap();
    line_servers(
        &lab,
        (1..=4).map(|i| Lab::backend(false, i, 8080)).collect(),
    );
    let d = Daemon::start(&lab, "canary", &service(HEALTH)).unwrap();
    let stream = lab.cli.run(|| Stream::open(vip())).unwrap();
    let (first, mut stream) = lab
        .cli
        .run(move || {
            let mut s = stream;
            (s.ask(), s)
        })
        .unwrap();
    let load = Load::start(&lab.cli, vip());
    d.ok(&[
        "canary",
        "web",
        "--to",
        "green",
        "--steps",
        "10,50,100",
        "--interval",
        "700ms",
    ])
    .unwrap();
    let st = d
        .wait_for("web", 15, |s| {
            s["strategy"]
                .as_str()
                .is_some_and(|x| x.contains("succeeded"))
        })
        .unwrap();
    assert_eq!(st["pools"][1]["weight"], 100);
    let (b, s) = lab.cli.run(move || (stream.ask(), stream)).unwrap();
    stream = s;
    assert_eq!(b, first, "the stream opened before the canary moved");
    drop(stream);
    let (ok, failed, answers) = load.finish();
    eprintln!("canary 10/50/100 under load: {ok} ok, {failed} failed");
    assert_eq!(failed, 0);
    assert!(is_green(answers.last().unwrap()));
    let history = d.ok(&["history", "web"]).unwrap();
    assert!(
        history.contains("step 2/3") && history.contains("succeeded"),
        "{history}"
    );
}

#[test]
fn a_canary_whose_backends_reset_is_rolled_back_by_the_rst_gate() {
    let lab = Lab::new().unwrap();
    line_servers(
        &lab,
        (1..=2).map(|i| Lab::backend(false, i, 8080)).collect(),
    );
    reset_servers(
        &lab,
        (3..=4).map(|i| Lab::backend(false, i, 8080)).collect(),
    );
    let d = Daemon::start(&lab, "rstgate", &service("")).unwrap();
    let load = Load::start(&lab.cli, vip());
    d.ok(&[
        "canary",
        "web",
        "--to",
        "green",
        "--steps",
        "10,50,100",
        "--interval",
        "30s",
        "--min-flows",
        "10",
    ])
    .unwrap();
    let st = d
        .wait_for("web", 15, |s| {
            s["strategy"]
                .as_str()
                .is_some_and(|x| x.contains("rolled back"))
        })
        .unwrap();
    assert!(st["strategy"].as_str().unwrap().contains("RST"), "{st}");
    assert_eq!(st["pools"][1]["weight"], 0);
    // Connections in flight at the rollback may still reach green; give
    // them a moment, then everything must succeed.
    std::thread::sleep(Duration::from_millis(300));
    let after = load.answers().len();
    std::thread::sleep(Duration::from_millis(700));
    let (ok, failed, answers) = load.finish();
    let st = d.status("web").unwrap();
    let green_flows: u64 = st["pools"][1]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["new_flows"].as_u64().unwrap())
        .sum();
    eprintln!("broken canary: {ok} ok, {failed} failed, {green_flows} connections reached green");
    // Every failure was a connection to the broken pool; stable clients saw none.
    assert!(
        failed as u64 <= green_flows,
        "{failed} failures but only {green_flows} green connections"
    );
    assert!(
        answers
            .iter()
            .filter(|a| !a.starts_with("failed"))
            .all(|a| !is_green(a))
    );
    assert!(
        answers[after..].iter().all(|a| !a.starts_with("failed")),
        "failures after the rollback"
    );
}

#[test]
fn a_canary_whose_backends_fail_health_checks_is_rolled_back() {
    let lab = Lab::new().unwrap();
    // Green's backends have no server at all: connections are refused.
    line_servers(
        &lab,
        (1..=2).map(|i| Lab::backend(false, i, 8080)).collect(),
    );
    let d = Daemon::start(&lab, "healthgate", &service(HEALTH)).unwrap();
    d.ok(&[
        "canary",
        "web",
        "--to",
        "green",
        "--steps",
        "5,100",
        "--interval",
        "30s",
    ])
    .unwrap();
    let st = d
        .wait_for("web", 10, |s| {
            s["strategy"]
                .as_str()
                .is_some_and(|x| x.contains("rolled back"))
        })
        .unwrap();
    assert!(
        st["strategy"].as_str().unwrap().contains("unhealthy"),
        "{st}"
    );
    // After the rollback the stable pool serves everyone.
    let (ok, failed, _) = {
        let load = Load::start(&lab.cli, vip());
        std::thread::sleep(Duration::from_millis(700));
        load.finish()
    };
    assert!(ok > 20);
    assert_eq!(failed, 0);
}

#[test]
fn rolling_replacement_of_a_four_backend_pool_under_load() {
    let lab = Lab::new().unwrap();
    let old: Vec<SocketAddr> = (1..=4).map(|i| Lab::backend(false, i, 8080)).collect();
    let new: Vec<SocketAddr> = (21..=24)
        .map(|i| format!("198.18.1.{i}:8080").parse().unwrap())
        .collect();
    add_backend_addrs(&lab, &new);
    line_servers(&lab, old.iter().chain(&new).copied().collect());
    let config = format!(
        r#"
[[service]]
name = "web"
vip = "198.18.10.10:80"
protocol = "tcp"
{HEALTH}
pools = [ {{ name = "blue", weight = 100, backends = [{}] }} ]
"#,
        old.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let d = Daemon::start(&lab, "rolling", &config).unwrap();
    let load = Load::start(&lab.cli, vip());
    let mut args = vec![
        "rolling",
        "web",
        "--pool",
        "blue",
        "--drain-timeout",
        "5s",
        "--min-healthy",
        "300ms",
        "--replace",
    ];
    let pairs: Vec<String> = old
        .iter()
        .zip(&new)
        .map(|(o, n)| format!("{o}={n}"))
        .collect();
    args.extend(pairs.iter().map(String::as_str));
    d.ok(&args).unwrap();
    let st = d
        .wait_for("web", 30, |s| {
            s["strategy"]
                .as_str()
                .is_some_and(|x| x.contains("succeeded"))
        })
        .unwrap();
    let now: Vec<String> = st["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["addr"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(now, new.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed, answers) = load.finish();
    eprintln!("rolling replacement of 4 backends under load: {ok} ok, {failed} failed");
    assert_eq!(failed, 0);
    assert!(
        answers.iter().rev().take(20).all(|a| a.contains(".2")),
        "the last answers come from new backends"
    );
}

#[test]
fn a_draining_backend_keeps_a_long_lived_stream_until_it_closes() {
    let lab = Lab::new().unwrap();
    let old = Lab::backend(false, 1, 8080);
    let repl: SocketAddr = "198.18.1.21:8080".parse().unwrap();
    add_backend_addrs(&lab, &[repl]);
    line_servers(&lab, vec![old, repl]);
    let config = format!(
        "[[service]]\nname = \"web\"\nvip = \"198.18.10.10:80\"\nprotocol = \"tcp\"\n{HEALTH}\npools = [ {{ name = \"blue\", weight = 100, backends = [\"{old}\"] }} ]\n"
    );
    let d = Daemon::start(&lab, "drain", &config).unwrap();
    let stream = lab.cli.run(|| Stream::open(vip())).unwrap();
    d.ok(&[
        "rolling",
        "web",
        "--pool",
        "blue",
        "--replace",
        &format!("{old}={repl}"),
        "--drain-timeout",
        "60s",
        "--min-healthy",
        "200ms",
    ])
    .unwrap();
    let mut stream = stream;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(200));
        let (b, s) = lab.cli.run(move || (stream.ask(), stream)).unwrap();
        stream = s;
        assert_eq!(b, old.to_string(), "the stream left its draining backend");
    }
    let st = d.status("web").unwrap();
    assert!(
        st["strategy"].as_str().unwrap().contains("0/1"),
        "the drain waits for the stream: {st}"
    );
    drop(stream);
    d.wait_for("web", 10, |s| {
        s["strategy"]
            .as_str()
            .is_some_and(|x| x.contains("succeeded"))
    })
    .unwrap();
}

#[test]
fn kill_9_in_the_middle_of_a_canary_resumes_at_its_step() {
    let lab = Lab::new().unwrap();
    line_servers(
        &lab,
        (1..=4).map(|i| Lab::backend(false, i, 8080)).collect(),
    );
    let mut d = Daemon::start(&lab, "resume", &service("")).unwrap();
    // Load first: a step only advances once it had traffic to judge.
    let load = Load::start(&lab.cli, vip());
    d.ok(&[
        "canary",
        "web",
        "--to",
        "green",
        "--steps",
        "10,50,100",
        "--interval",
        "1500ms",
    ])
    .unwrap();
    d.wait_for("web", 10, |s| s["pools"][1]["weight"] == 50)
        .unwrap();
    d.kill9();
    std::thread::sleep(Duration::from_millis(200));
    d.spawn().unwrap();
    let st = d.status("web").unwrap();
    assert!(
        st["strategy"].as_str().unwrap().contains("step 2/3"),
        "resumed at its step: {st}"
    );
    d.wait_for("web", 10, |s| {
        s["strategy"]
            .as_str()
            .is_some_and(|x| x.contains("succeeded"))
    })
    .unwrap();
    let (ok, failed, _) = load.finish();
    assert!(ok > 20);
    assert_eq!(failed, 0);
}

#[test]
fn flips_of_ipv6_and_udp_services_under_load() {
    let lab = Lab::new().unwrap();
    line_servers(&lab, (1..=4).map(|i| Lab::backend(true, i, 8080)).collect());
    udp_servers(
        &lab,
        (1..=4).map(|i| Lab::backend(false, i, 5353)).collect(),
    );
    let b6 = |i| Lab::backend(true, i, 8080);
    let config = format!(
        r#"
[[service]]
name = "web6"
vip = "[2001:2:ff::10]:80"
protocol = "tcp"
pools = [
  {{ name = "blue",  weight = 100, backends = ["{}", "{}"] }},
  {{ name = "green", weight = 0,   backends = ["{}", "{}"] }},
]

[[service]]
name = "dns"
vip = "198.18.10.10:53"
protocol = "udp"
pools = [
  {{ name = "blue",  weight = 100, backends = ["198.18.1.11:5353", "198.18.1.12:5353"] }},
  {{ name = "green", weight = 0,   backends = ["198.18.1.13:5353", "198.18.1.14:5353"] }},
]
"#,
        b6(1),
        b6(2),
        b6(3),
        b6(4)
    );
    let d = Daemon::start(&lab, "v6udp", &config).unwrap();
    let tcp6 = Load::start(&lab.cli, Lab::vip(true, 80));
    let udp = Load::start_udp(&lab.cli, "198.18.10.10:53".parse().unwrap());
    for i in 0..20 {
        let to = if i % 2 == 0 { "green" } else { "blue" };
        d.ok(&["flip", "web6", "--to", to]).unwrap();
        d.ok(&["flip", "dns", "--to", to]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok6, failed6, _) = tcp6.finish();
    let (oku, failedu, answers) = udp.finish();
    eprintln!("IPv6 TCP: {ok6} ok, {failed6} failed; UDP: {oku} ok, {failedu} failed");
    assert!(ok6 > 50 && oku > 50);
    assert_eq!(failed6, 0);
    assert_eq!(failedu, 0);
    assert!(
        answers
            .iter()
            .any(|a| a.contains(".13:") || a.contains(".14:"))
    );
}

#[test]
fn a_canary_whose_backends_never_answer_is_rolled_back() {
    let lab = Lab::new().unwrap();
    line_servers(
        &lab,
        (1..=2).map(|i| Lab::backend(false, i, 8080)).collect(),
    );
    // Green points at addresses where no host lives: SYNs go unanswered.
    let config = r#"
[[service]]
name = "web"
vip = "198.18.10.10:80"
protocol = "tcp"
pools = [
  { name = "blue",  weight = 100, backends = ["198.18.1.11:8080", "198.18.1.12:8080"] },
  { name = "green", weight = 0,   backends = ["198.18.1.41:8080", "198.18.1.42:8080"] },
]
"#;
    let d = Daemon::start(&lab, "noanswer", config).unwrap();
    let loads: Vec<Load> = (0..4).map(|_| Load::start(&lab.cli, vip())).collect();
    d.ok(&[
        "canary",
        "web",
        "--to",
        "green",
        "--steps",
        "20,100",
        "--interval",
        "30s",
        "--min-flows",
        "10",
    ])
    .unwrap();
    let st = d
        .wait_for("web", 20, |s| {
            s["strategy"]
                .as_str()
                .is_some_and(|x| x.contains("rolled back"))
        })
        .unwrap();
    assert!(
        st["strategy"].as_str().unwrap().contains("no answer"),
        "{st}"
    );
    drop(loads);
}

#[test]
fn a_canary_is_rolled_back_by_its_prometheus_gate() {
    let lab = Lab::new().unwrap();
    line_servers(
        &lab,
        (1..=4).map(|i| Lab::backend(false, i, 8080)).collect(),
    );
    // A stand-in Prometheus on the switch host: the new version's error
    // rate is 0.5.
    lab.sw
        .run(|| {
            let l = std::net::TcpListener::bind("127.0.0.1:19090").unwrap();
            std::thread::spawn(move || {
                for c in l.incoming() {
                    let Ok(mut c) = c else { continue };
                    use std::io::{Read, Write};
                    let mut buf = [0u8; 2048];
                    let _ = c.read(&mut buf);
                    let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.0,"0.5"]}]}}"#;
                    let _ = write!(c, "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{body}");
                }
            });
        })
        .unwrap();
    let d = Daemon::start(&lab, "promgate", &service("")).unwrap();
    let args = [
        "canary",
        "web",
        "--to",
        "green",
        "--steps",
        "10,100",
        "--interval",
        "30s",
        "--prometheus",
        "http://127.0.0.1:19090",
        "--query",
        "sum(rate(http_errors_total{version=\"green\"}[1m]))",
        "--max",
        "0.1",
    ];
    d.ok(&args).unwrap();
    let st = d
        .wait_for("web", 10, |s| {
            s["strategy"]
                .as_str()
                .is_some_and(|x| x.contains("rolled back"))
        })
        .unwrap();
    assert!(
        st["strategy"].as_str().unwrap().contains("Prometheus"),
        "{st}"
    );
    assert_eq!(st["pools"][1]["weight"], 0);
}
