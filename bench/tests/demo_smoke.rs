//! The README's main command, shortened, so it cannot rot: the demo runs
//! every phase, fails no request outside the broken canary, and cleans up.

#[test]
fn the_demo_runs_end_to_end() {
    let chart = std::env::temp_dir().join(format!("switch-demo-smoke-{}.png", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switch-demo"))
        .args(["--phase-secs", "2", "--clients", "2", "--chart"])
        .arg(&chart)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    let summary = stdout.split("== summary").nth(1).expect("summary table");
    let mut phases = 0;
    for line in summary.lines() {
        // A phase row ends in six counts: four versions, failed, resets.
        let nums: Vec<u64> = line
            .split_whitespace()
            .rev()
            .take(6)
            .filter_map(|c| c.parse().ok())
            .collect();
        if nums.len() < 6 {
            continue;
        }
        phases += 1;
        if !line.contains("canary of broken") {
            assert_eq!(nums[1], 0, "failures outside the broken canary: {line}");
        }
    }
    assert_eq!(phases, 7, "every phase ran");
    assert!(
        std::fs::metadata(&chart).unwrap().len() > 10_000,
        "chart written"
    );
    let _ = std::fs::remove_file(&chart);
}

/// `cargo xtask demo --fleet`, shortened: every phase runs, the canary
/// completes although a host is lost in the middle, and the chart of each
/// host's share is written.
#[test]
fn the_fleet_demo_runs_end_to_end() {
    let chart = std::env::temp_dir().join(format!(
        "switch-demo-fleet-smoke-{}.png",
        std::process::id()
    ));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switch-demo"))
        .args(["--fleet", "--phase-secs", "2", "--clients", "2", "--chart"])
        .arg(&chart)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    let summary = stdout.split("== summary").nth(1).expect("summary table");
    for phase in ["steady", "canary", "sw-1 lost", "sw-1 back"] {
        assert!(summary.contains(phase), "phase {phase} missing:\n{summary}");
    }
    assert!(stdout.contains("succeeded"), "the canary completed");
    // The IPv6 VIP was reached through the fleet too.
    let v6 = stdout
        .lines()
        .find(|l| l.starts_with("IPv6 VIP"))
        .expect("the IPv6 line");
    let nums: Vec<u64> = v6
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let (requests, failed) = (nums[nums.len() - 2], nums[nums.len() - 1]);
    assert!(requests > failed, "{v6}");
    assert!(
        std::fs::metadata(&chart).unwrap().len() > 10_000,
        "chart written"
    );
    let _ = std::fs::remove_file(&chart);
}
