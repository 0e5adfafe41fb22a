//! API privilege levels by the caller's groups, and the audit trail that
//! says who did what — and who was refused.

use std::process::Command;

use switch_tests::{daemon::Daemon, lab::Lab};

const READ: u32 = 60_010;
const STEER: u32 = 60_011;
const ADMIN: u32 = 60_012;
const UID: u32 = 60_001;

/// The CLI as uid `UID` with exactly `groups` (no user entry needed).
fn cli_as(d: &Daemon, groups: &[u32], args: &[&str]) -> (bool, String) {
    let groups = if groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        format!(
            "--groups={}",
            groups
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let out = Command::new("setpriv")
        .arg(format!("--reuid={UID}"))
        .arg(format!("--regid={UID}"))
        .arg(groups)
        .arg(switch_tests::daemon::switch_bin().unwrap())
        .arg("--api")
        .arg(&d.api)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn each_level_may_do_its_own_and_the_history_names_every_caller() {
    let lab = Lab::new().unwrap();
    let mut d = Daemon::prepare(
        &lab.sw,
        "levels",
        &["sw0", "sw1"],
        &format!(
            "api_read_group = \"{READ}\"\napi_group = \"{STEER}\"\napi_admin_group = \"{ADMIN}\""
        ),
        &switch_tests::service::blue_green(8080, ""),
    )
    .unwrap();
    // The socket's directory as the unit makes it (RuntimeDirectoryMode).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&d.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&d.dir, Some(0), Some(0)).unwrap();
    d.spawn().unwrap();

    // In none of the groups: the socket itself is closed to it.
    let (ok, out) = cli_as(&d, &[], &["status", "web"]);
    assert!(!ok && out.contains("Permission denied"), "{out}");

    // Read: status yes, weights no (one line naming the level).
    let (ok, out) = cli_as(&d, &[READ], &["status", "web"]);
    assert!(ok, "{out}");
    let (ok, out) = cli_as(&d, &[READ], &["weights", "web", "blue=50", "green=50"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("permission denied: `weights` needs the steer level")
            && out.contains(&format!("uid {UID}"))
            && out.contains("has read"),
        "{out}"
    );
    assert_eq!(d.status("web").unwrap()["pools"][0]["weight"], 100);

    // Steer: weights yes, fleet leave (admin) no.
    let (ok, out) = cli_as(&d, &[STEER], &["weights", "web", "blue=60", "green=40"]);
    assert!(ok, "{out}");
    assert_eq!(d.status("web").unwrap()["pools"][0]["weight"], 60);
    let (ok, out) = cli_as(&d, &[STEER], &["fleet", "leave"]);
    assert!(!ok && out.contains("needs the admin level"), "{out}");
    let (ok, out) = cli_as(&d, &[STEER], &["detach"]);
    assert!(!ok && out.contains("needs the admin level"), "{out}");

    // Root: everything.
    d.ok(&["weights", "web", "blue=70", "green=30"]).unwrap();

    // The audit trail: who changed what, and who was refused.
    let h: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["history", "web", "--json"]).unwrap()).unwrap();
    let by = |uid: u32, outcome: &str, what: &str| {
        h.iter().any(|e| {
            e["actor"]["uid"] == uid
                && e["actor"]["via"] == "socket"
                && e["outcome"] == outcome
                && e["what"].as_str().unwrap_or("").contains(what)
        })
    };
    assert!(
        by(UID, "refused", "weights refused: permission denied"),
        "{h:#?}"
    );
    assert!(by(UID, "applied", "60"), "{h:#?}");
    assert!(by(0, "applied", "70"), "{h:#?}");
    // The start-up apply is the config's.
    assert!(
        h.iter().any(|e| e["actor"]["via"]
            .as_str()
            .unwrap_or("")
            .starts_with("config")),
        "{h:#?}"
    );
    // Refusals that name no service are kept under `-`.
    let h: Vec<serde_json::Value> =
        serde_json::from_str(&d.ok(&["history", "-", "--json"]).unwrap()).unwrap();
    assert!(
        h.iter().any(|e| e["what"]
            .as_str()
            .unwrap_or("")
            .starts_with("detach refused")),
        "{h:#?}"
    );
    // The text view has the actor column.
    let text = d.ok(&["history", "web"]).unwrap();
    assert!(
        text.contains("REFUSED") && text.contains(&format!("{UID}@")),
        "{text}"
    );

    // Admin: detach through the daemon, which then ends.
    let (ok, out) = cli_as(&d, &[ADMIN], &["detach"]);
    assert!(ok, "{out}");
    let status = d.child.as_mut().unwrap().wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!d.pins.exists(), "pins left after detach");
}
