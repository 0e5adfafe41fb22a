//! `state.json`: versioned, read back by newer daemons, refused clearly when
//! it comes from a newer one; and a CLI that does not hang on a silent daemon.

use std::time::{Duration, Instant};

use switch_user::{
    api::Command,
    client::call_with_timeout,
    controller::Controller,
    daemon::{STATE_SCHEMA, read_state, write_state},
    dataplane::Capacity,
    programmer::Programmer,
};

fn dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("switch-state-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_state_file_carries_its_schema_and_reads_back() {
    let d = dir("roundtrip");
    let path = d.join("state.json");
    let ctl = Controller::new(Programmer::new(7, Capacity::small()));
    write_state(&path, &ctl).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["schema"], STATE_SCHEMA);
    let back = read_state(text.as_bytes()).unwrap();
    assert_eq!(back.programmer.seed, 7);
    assert!(!d.join("state.json.tmp").exists(), "no temporary file left");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn an_older_file_is_read_and_a_newer_one_refused() {
    let ctl = Controller::new(Programmer::new(9, Capacity::small()));
    // Schema 1 had no `schema` key: the controller alone.
    let v1 = serde_json::to_vec(&ctl).unwrap();
    assert_eq!(read_state(&v1).unwrap().programmer.seed, 9);

    let mut newer: serde_json::Value = serde_json::to_value(&ctl).unwrap();
    newer["schema"] = (STATE_SCHEMA + 1).into();
    let e = read_state(&serde_json::to_vec(&newer).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("newer switch"), "{e}");

    let e = read_state(b"{not json").unwrap_err().to_string();
    assert!(e.contains("bad JSON"), "{e}");
}

#[test]
fn the_cli_gives_up_on_a_daemon_that_never_answers() {
    let d = dir("silent");
    let sock = d.join("silent.sock");
    let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    // Accepts and keeps the connection open without a word.
    let t = std::thread::spawn(move || {
        let c = l.accept();
        std::thread::sleep(Duration::from_secs(2));
        drop(c);
    });
    let began = Instant::now();
    let e = call_with_timeout(
        &sock,
        Command::Status { service: None },
        Duration::from_millis(300),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("did not answer"), "{e}");
    assert!(began.elapsed() < Duration::from_secs(2));
    t.join().unwrap();
    std::fs::remove_dir_all(d).unwrap();
}
