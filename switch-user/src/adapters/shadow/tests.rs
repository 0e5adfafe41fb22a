//! Sessions put back in order, bounded buffers, status codes of a stream.

use super::*;

fn session() -> (Session, mpsc::UnboundedReceiver<Vec<u8>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Session {
            service: 0,
            next: 1000,
            early: BTreeMap::new(),
            early_bytes: 0,
            tx: Some(tx),
            pending: Arc::new(AtomicUsize::new(0)),
            fin: None,
            first_data_ns: None,
            live_answered: false,
            last_seen: Instant::now(),
        },
        rx,
    )
}

fn drain(rx: &mut mpsc::UnboundedReceiver<Vec<u8>>) -> Vec<u8> {
    let mut out = vec![];
    while let Ok(c) = rx.try_recv() {
        out.extend(c);
    }
    out
}

#[test]
fn segments_are_put_back_in_order_and_repeats_dropped() {
    let (mut s, mut rx) = session();
    assert!(s.take(1005, b"world", 1 << 16)); // early
    assert!(s.take(1000, b"hello", 1 << 16)); // fills the gap
    assert!(s.take(1000, b"hello", 1 << 16)); // retransmission
    assert!(s.take(1008, b"ld!!", 1 << 16)); // overlap with new bytes
    assert_eq!(drain(&mut rx), b"helloworld!!");
    assert_eq!(s.next, 1012);
    assert_eq!(s.early_bytes, 0);
}

#[test]
fn a_buffer_over_its_bound_ends_the_replay() {
    let (mut s, _rx) = session();
    assert!(s.take(2000, &[0u8; 60], 100));
    assert!(!s.take(3000, &[0u8; 60], 100), "early bytes over the bound");
}

#[test]
fn status_codes_of_a_keep_alive_stream() {
    let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n";
    assert_eq!(response_codes(r), vec![200, 500]);
    assert_eq!(response_codes(b"SSH-2.0"), Vec::<u16>::new());
}
