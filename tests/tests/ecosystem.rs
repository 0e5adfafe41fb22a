//! The parts operators already run, for real: Prometheus scraping the
//! daemon and judging a canary, promtool checking the shipped alert rules,
//! the Grafana dashboard's queries against the metrics we export, systemd's
//! readiness protocol, shell completions and the man page.

use std::{path::PathBuf, process::Command, time::Duration};

use switch_tests::{
    daemon::{Daemon, switch_bin},
    lab::Lab,
    traffic::{Load, line_servers, reset_servers},
};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// A real Prometheus in the switch host's namespace scrapes the daemon's
/// `/metrics`; the canary's gate asks it for the new pool's reset rate (from
/// our own metrics) and rolls the canary back when it rises.
#[test]
fn a_real_prometheus_rolls_back_a_canary_of_a_resetting_version() {
    let lab = Lab::new().unwrap();
    line_servers(
        &lab,
        (1..=2).map(|i| Lab::backend(false, i, 8080)).collect(),
    );
    reset_servers(
        &lab,
        (3..=4).map(|i| Lab::backend(false, i, 8080)).collect(),
    );
    let config = &switch_tests::service::blue_green(8080, "");
    let d = Daemon::start_with(&lab, "realprom", "metrics = \"127.0.0.1:19560\"", config).unwrap();
    let dir = d.dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        "global:\n  scrape_interval: 500ms\n  evaluation_interval: 500ms\n\
         scrape_configs:\n  - job_name: switch\n    static_configs:\n      - targets: ['127.0.0.1:19560']\n",
    )
    .unwrap();
    // Prometheus is killed with the namespace (Netns's drop).
    lab.sw
        .exec(&format!(
            "prometheus --config.file={d}/prometheus.yml --storage.tsdb.path={d}/data \
             --web.listen-address=127.0.0.1:19091 >{d}/log 2>&1 &",
            d = dir.display()
        ))
        .unwrap();
    // Until Prometheus has scraped us.
    let ready = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(200));
        lab.sw
            .exec("curl -sf 'http://127.0.0.1:19091/api/v1/query?query=up%7Bjob%3D%22switch%22%7D'")
            .is_ok_and(|o| o.contains("\"1\""))
    });
    assert!(
        ready,
        "prometheus never scraped the daemon: {}",
        std::fs::read_to_string(dir.join("log")).unwrap_or_default()
    );
    let loads: Vec<Load> = (0..3)
        .map(|_| Load::start(&lab.cli, "198.18.10.10:80".parse().unwrap()))
        .collect();
    d.ok(&[
        "canary",
        "web",
        "--to",
        "green",
        "--steps",
        "20,100",
        "--interval",
        "60s",
        // Only the Prometheus gate judges here: the built-in ratio gates
        // stay inconclusive for want of flows.
        "--min-flows",
        "1000000000",
        "--prometheus",
        "http://127.0.0.1:19091",
        "--query",
        "sum(rate(switch_backend_rsts_total{service=\"web\",pool=\"green\"}[3s]))",
        "--max",
        "1",
    ])
    .unwrap();
    let st = d
        .wait_for("web", 30, |s| s["phase"] == "rolled_back")
        .unwrap();
    drop(loads);
    assert!(
        st["strategy"].as_str().unwrap().contains("Prometheus"),
        "{st}"
    );
    assert_eq!(st["pools"][1]["weight"], 0);
}

#[test]
fn the_shipped_alert_rules_pass_promtool() {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo("packaging/switch-alerts.yml"))
        .output()
        .expect("promtool (cargo xtask setup installs prometheus)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

/// Every metric the alert rules and the dashboard query is one we export
/// (the golden page lists them all).
#[test]
fn the_dashboard_and_rules_query_metrics_we_export() {
    let golden = std::fs::read_to_string(repo("switch-user/tests/golden/metrics.txt")).unwrap();
    let exported: std::collections::BTreeSet<&str> = golden
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("packaging/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    exprs.push(std::fs::read_to_string(repo("packaging/switch-alerts.yml")).unwrap());
    assert!(exprs.len() > 5);
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("switch_") && !word.starts_with("switch_l4") {
                assert!(exported.contains(word), "{word} is not exported (in {e})");
            }
        }
    }
}

#[test]
fn completions_and_the_man_page_come_from_the_cli() {
    let bin = switch_bin().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(&bin)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        for sub in ["canary", "rolling", "flip", "backend"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let out = Command::new(&bin).arg("man").output().unwrap();
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && man.contains(".TH switch"), "{man}");
    assert!(man.contains("canary"));
    let bad = Command::new(&bin)
        .args(["completions", "nosuchshell"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// Type=notify: READY=1 arrives once the API answers.
#[test]
fn the_daemon_tells_systemd_it_is_ready_once_the_api_serves() {
    let lab = Lab::new().unwrap();
    let mut d = Daemon::start(&lab, "notify", "").unwrap();
    d.terminate().unwrap();
    let sock = d.dir.join("notify.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    d.env
        .push(("NOTIFY_SOCKET".into(), sock.display().to_string()));
    d.spawn().unwrap();
    let mut buf = [0u8; 256];
    let n = rx.recv(&mut buf).expect("no readiness message");
    let msg = String::from_utf8_lossy(&buf[..n]);
    assert!(msg.contains("READY=1"), "{msg}");
    d.ok(&["status"]).unwrap();
    let unit = std::fs::read_to_string(repo("packaging/switch.service")).unwrap();
    assert!(unit.contains("Type=notify"), "the unit waits for readiness");
}
