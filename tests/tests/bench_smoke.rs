//! The benchmark harness runs (a few thousand runs per path) so it cannot
//! rot. Timings are printed, never asserted.

#[test]
fn bench_harness_runs_every_path() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switch-bench"))
        .args(["--runs", "2000", "--table-sizes", "1000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    for path in [
        "floor",
        "minimal",
        "new TCP flow, IPv4",
        "established flow, IPv6",
        "reply",
        "1000 in table",
    ] {
        assert!(stdout.contains(path), "missing row {path}");
    }
}
