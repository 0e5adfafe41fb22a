//! A SYN flood at the generator's top rate against a VIP while flips run:
//! established connections are unaffected — even one that is quiet between
//! flips while the flood turns the whole flow table over many times (SYNs
//! are pinned apart, in `HALF_OPEN`) — the daemon stays responsive and its
//! memory stays bounded (the flow tables are LRUs of fixed size).

use std::{net::SocketAddr, time::Instant};

use switch_tests::{
    daemon::Daemon,
    lab::Lab,
    rate::Load,
    traffic::{Stream, line_servers},
};

#[test]
fn a_syn_flood_during_flips_breaks_no_established_connection() {
    let lab = Lab::new().unwrap();
    let generator = lab.add_generator().unwrap();
    line_servers(&lab, (1..=4).map(|i| Lab::backend(false, i, 80)).collect());
    let d = Daemon::start_on(
        &lab,
        "flood",
        &["sw0", "sw1", "sw2"],
        "max_flows = 65536",
        &service(),
    )
    .unwrap();
    let vip: SocketAddr = "198.18.10.10:80".parse().unwrap();
    let stream = lab.cli.run(move || Stream::open(vip)).unwrap();
    let (first, mut stream) = lab
        .cli
        .run(move || {
            let mut s = stream;
            (s.ask(), s)
        })
        .unwrap();
    let rss_before = d.rss_kib().unwrap();

    // 3,000,000 SYNs from 1,000,000 sources, as fast as the generator goes.
    let sw2_mac = switch_tests::parse_mac(
        lab.sw
            .exec("cat /sys/class/net/sw2/address")
            .unwrap()
            .trim(),
    )
    .unwrap();
    let load = Load::new(1_000_000, 64, false, false, 3_000_000, 0);
    // The namespace stays with this thread: if an assertion below fails,
    // unwinding removes it even while the flood thread still runs in it.
    let path = format!("/run/netns/{}", generator.name);
    let flood = std::thread::spawn(move || {
        switch_tests::enter(&path).unwrap();
        switch_tests::generator::run("g0", sw2_mac, &load)
            .unwrap()
            .pps()
    });

    let mut flips = Vec::new();
    let mut i = 0;
    while !flood.is_finished() || i < 4 {
        let to = if i % 2 == 0 { "green" } else { "blue" };
        let t = Instant::now();
        d.ok(&["flip", "web", "--to", to]).unwrap();
        flips.push(t.elapsed().as_secs_f64() * 1000.0);
        let (b, s) = lab.cli.run(move || (stream.ask(), stream)).unwrap();
        stream = s;
        assert_eq!(
            b, first,
            "the established stream moved during the flood (flip {i})"
        );
        i += 1;
    }
    let pps = flood.join().unwrap();
    let status = d.ok(&["status"]).unwrap();
    let rss_after = d.rss_kib().unwrap();
    flips.sort_by(f64::total_cmp);
    eprintln!(
        "SYN flood at {:.2} Mpps during {} flips: stream kept its backend; flip latency median {:.1} ms, max {:.1} ms; daemon RSS {} KiB before, {} KiB after\n{status}",
        pps / 1e6,
        flips.len(),
        flips[flips.len() / 2],
        flips[flips.len() - 1],
        rss_before,
        rss_after
    );
    // Responsive: every flip answered (a functional bound, not a benchmark).
    assert!(
        flips[flips.len() - 1] < 5000.0,
        "the daemon took {} ms to answer a flip",
        flips[flips.len() - 1]
    );
    // Bounded: the daemon's own memory does not grow with the flood.
    assert!(
        rss_after < rss_before + 64 * 1024,
        "daemon RSS grew from {rss_before} to {rss_after} KiB"
    );
}

fn service() -> String {
    switch_tests::service::blue_green(80, "")
}
