use super::*;
use proptest::prelude::*;

fn t(s: u64) -> Instant {
    Instant::from_secs(s)
}

fn asked(range: Range<u64>) -> FileRange {
    FileRange {
        file_index: 0,
        range,
        buf_offset: 0,
    }
}

fn url() -> TrackerUrl {
    TrackerUrl::parse("http://127.0.0.1:8080/seed/a%20b.bin").unwrap()
}

/// Feeds `wire` to a client that asked for `range` of a `file_len`-byte file, split at `cuts`.
fn run(
    wire: &[u8],
    range: Range<u64>,
    file_len: u64,
    cuts: &[usize],
) -> (Vec<u8>, Vec<ClientEvent>) {
    let mut c = RangeClient::new(Duration::from_secs(10));
    let _ = c.start(t(0), &url(), asked(range), file_len);
    let mut events = Vec::new();
    let mut at = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.sort_unstable();
    points.push(wire.len());
    for p in points {
        if p > at {
            c.handle_data(t(1), Bytes::copy_from_slice(&wire[at..p]), &mut events);
            at = p;
        }
    }
    let mut body = Vec::new();
    let mut rest = Vec::new();
    for e in events {
        match e {
            ClientEvent::Data(b) => body.extend_from_slice(&b),
            other => rest.push(other),
        }
    }
    (body, rest)
}

fn partial(body: &[u8], start: u64, total: u64) -> Vec<u8> {
    let mut w = format!(
        "HTTP/1.1 206 Partial Content\r\nServer: nginx\r\nContent-Range: bytes {}-{}/{}\r\nContent-Length: {}\r\n\r\n",
        start,
        start + body.len() as u64 - 1,
        total,
        body.len()
    )
    .into_bytes();
    w.extend_from_slice(body);
    w
}

fn chunked(body: &[u8], start: u64, total: u64, sizes: &[usize]) -> Vec<u8> {
    let mut w = format!(
        "HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\nContent-Range: bytes {}-{}/{}\r\n\r\n",
        start,
        start + body.len() as u64 - 1,
        total
    )
    .into_bytes();
    let mut at = 0;
    let mut i = 0;
    while at < body.len() {
        let n = sizes.get(i).copied().unwrap_or(7).clamp(1, body.len() - at);
        i += 1;
        w.extend_from_slice(format!("{n:x};ext=1\r\n").as_bytes());
        w.extend_from_slice(&body[at..at + n]);
        w.extend_from_slice(b"\r\n");
        at += n;
    }
    w.extend_from_slice(b"0\r\nX-Trailer: y\r\n\r\n");
    w
}

#[test]
fn request_asks_for_an_inclusive_range_with_keep_alive() {
    let r = request(&url(), &(100..200));
    let s = std::str::from_utf8(&r).unwrap();
    assert!(
        s.starts_with("GET /seed/a%20b.bin HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"),
        "{s}"
    );
    assert!(s.contains("\r\nRange: bytes=100-199\r\n"), "{s}");
    assert!(s.contains("Connection: keep-alive"));
    assert!(s.ends_with("\r\n\r\n"));
}

#[test]
fn a_partial_response_streams_its_body_and_keeps_the_connection() {
    let body: Vec<u8> = (0..100u8).collect();
    let (got, rest) = run(&partial(&body, 100, 1000), 100..200, 1000, &[]);
    assert_eq!(got, body);
    assert_eq!(rest, vec![ClientEvent::Done { keep_alive: true }]);
}

#[test]
fn keep_alive_carries_several_requests_and_interim_answers_are_skipped() {
    let mut c = RangeClient::new(Duration::from_secs(10));
    let mut ev = Vec::new();
    for round in 0..3u64 {
        let _ = c.start(t(round), &url(), asked(round * 10..round * 10 + 10), 30);
        let mut wire = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        wire.extend(partial(&[round as u8; 10], round * 10, 30));
        c.handle_data(t(round), Bytes::from(wire), &mut ev);
        assert!(c.is_reusable(), "round {round}: {ev:?}");
    }
    let data: usize = ev
        .iter()
        .map(|e| match e {
            ClientEvent::Data(b) => b.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(data, 30);
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, ClientEvent::Done { keep_alive: true }))
            .count(),
        3
    );
}

#[test]
fn chunked_bodies_are_decoded() {
    let body: Vec<u8> = (0..50u8).collect();
    let (got, rest) = run(
        &chunked(&body, 0, 50, &[3, 20, 1]),
        0..50,
        50,
        &[5, 77, 78, 90],
    );
    assert_eq!(got, body);
    assert_eq!(rest, vec![ClientEvent::Done { keep_alive: true }]);
}

#[test]
fn connection_close_and_http10_end_keep_alive() {
    let body = [7u8; 10];
    let mut w =
        b"HTTP/1.1 206 Partial Content\r\nConnection: close\r\nContent-Range: bytes 0-9/10\r\n\r\n"
            .to_vec();
    w.extend_from_slice(&body);
    let (got, rest) = run(&w, 0..10, 10, &[]);
    assert_eq!(got, body);
    assert_eq!(rest, vec![ClientEvent::Done { keep_alive: false }]);
    let mut w = b"HTTP/1.0 206 Partial Content\r\nContent-Length: 10\r\nContent-Range: bytes 0-9/10\r\n\r\n".to_vec();
    w.extend_from_slice(&body);
    let (_, rest) = run(&w, 0..10, 10, &[]);
    assert_eq!(rest, vec![ClientEvent::Done { keep_alive: false }]);
}

#[test]
fn wrong_answers_are_named() {
    // 200 for a part of the file: refused before any body byte is taken.
    let w = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nxxxx";
    let (got, rest) = run(w, 100..200, 1000, &[]);
    assert!(got.is_empty());
    let [ClientEvent::Failed(e)] = &rest[..] else {
        panic!("{rest:?}")
    };
    assert!(e.to_string().contains("ignored the Range header"), "{e}");
    // Content-Length disagreeing with the range.
    let w = b"HTTP/1.1 206 P\r\nContent-Range: bytes 100-199/1000\r\nContent-Length: 50\r\n\r\n";
    let (_, rest) = run(w, 100..200, 1000, &[]);
    assert_eq!(
        rest,
        vec![ClientEvent::Failed(HttpError::LengthMismatch {
            got: 50,
            expected: 100
        })]
    );
    // A body longer than the range (chunked, so no length up front).
    let (_, rest) = run(&chunked(&[1u8; 20], 0, 20, &[20]), 0..10, 20, &[]);
    assert!(
        matches!(
            &rest[..],
            [ClientEvent::Failed(HttpError::Refused(
                WebSeedError::WrongRange { .. }
            ))]
        ),
        "{rest:?}"
    );
    // 404, 503 with Retry-After, redirect.
    let (_, rest) = run(
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno!",
        0..10,
        10,
        &[],
    );
    assert_eq!(rest, vec![ClientEvent::Answer(Verdict::FileMissing)]);
    let (_, rest) = run(
        b"HTTP/1.1 503 Busy\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n",
        0..10,
        10,
        &[],
    );
    assert_eq!(
        rest,
        vec![ClientEvent::Answer(Verdict::Backoff(Duration::from_secs(
            3
        )))]
    );
    let (_, rest) = run(
        b"HTTP/1.1 302 Found\r\nLocation: /b\r\n\r\n",
        0..10,
        10,
        &[],
    );
    assert_eq!(
        rest,
        vec![ClientEvent::Answer(Verdict::Redirect("/b".into()))]
    );
    // Bytes after a complete answer that nobody asked for.
    let mut w = partial(&[1; 10], 0, 10);
    w.extend_from_slice(b"junk");
    let (_, rest) = run(&w, 0..10, 10, &[]);
    assert_eq!(
        rest,
        vec![
            ClientEvent::Done { keep_alive: true },
            ClientEvent::Failed(HttpError::Unsolicited(4))
        ]
    );
    // Gzip is refused.
    let (_, rest) = run(
        b"HTTP/1.1 206 P\r\nContent-Encoding: gzip\r\n\r\n",
        0..10,
        10,
        &[],
    );
    assert_eq!(
        rest,
        vec![ClientEvent::Failed(HttpError::UnsupportedEncoding(
            "gzip".into()
        ))]
    );
}

#[test]
fn truncation_and_silence_fail() {
    let mut c = RangeClient::new(Duration::from_secs(10));
    let _ = c.start(t(0), &url(), asked(0..10), 10);
    let mut ev = Vec::new();
    let w = partial(&[1; 10], 0, 10);
    c.handle_data(t(1), Bytes::copy_from_slice(&w[..w.len() - 4]), &mut ev);
    assert_eq!(c.poll_timeout(), Some(t(11)));
    c.handle_timeout(t(10), &mut ev);
    assert!(!ev.iter().any(|e| matches!(e, ClientEvent::Failed(_))));
    c.handle_timeout(t(11), &mut ev);
    assert_eq!(
        ev.last(),
        Some(&ClientEvent::Failed(HttpError::Timeout(
            Duration::from_secs(10)
        )))
    );
    assert_eq!(c.poll_timeout(), None);

    let mut c = RangeClient::new(Duration::from_secs(10));
    let _ = c.start(t(0), &url(), asked(0..10), 10);
    let mut ev = Vec::new();
    c.handle_data(t(1), Bytes::copy_from_slice(&w[..w.len() - 4]), &mut ev);
    c.handle_eof(&mut ev);
    assert_eq!(
        ev.last(),
        Some(&ClientEvent::Failed(HttpError::Truncated {
            expected: 10,
            received: 6
        }))
    );
}

#[test]
fn oversized_heads_are_refused_without_growing() {
    let mut p = ResponseParser::new();
    let mut junk = Bytes::from(vec![b'a'; MAX_HEAD_BYTES * 4]);
    let r = p.parse(&mut junk);
    assert!(
        matches!(
            r,
            Err(HttpError::HeadTooLarge) | Err(HttpError::MalformedHead(_))
        ),
        "{r:?}"
    );
    let mut p = ResponseParser::new();
    let mut long = b"HTTP/1.1 200 OK\r\n".to_vec();
    long.extend(std::iter::repeat_n(b"X-A: b\r\n".iter().copied(), 4000).flatten());
    let mut input = Bytes::from(long);
    let mut err = None;
    for _ in 0..10 {
        match p.parse(&mut input) {
            Err(e) => {
                err = Some(e);
                break;
            }
            Ok(None) => break,
            Ok(Some(_)) => {}
        }
    }
    assert!(err.is_some());
}

proptest! {
    /// Any chunking of a valid answer (by length, chunked, or close-delimited) gives the body exactly.
    #[test]
    fn any_chunking_gives_the_body(
        body in proptest::collection::vec(any::<u8>(), 1..300),
        start in 0u64..1000,
        sizes in proptest::collection::vec(1usize..64, 0..20),
        cuts in proptest::collection::vec(any::<usize>(), 0..30),
        framing in 0u8..3,
    ) {
        let total = start + body.len() as u64 + 5;
        let range = start..start + body.len() as u64;
        let wire = match framing {
            0 => partial(&body, start, total),
            1 => chunked(&body, start, total, &sizes),
            _ => {
                let mut w = format!("HTTP/1.1 206 P\r\nConnection: close\r\nContent-Range: bytes {}-{}/{}\r\n\r\n", start, range.end - 1, total).into_bytes();
                w.extend_from_slice(&body);
                w
            }
        };
        let (got, rest) = run(&wire, range, total, &cuts);
        prop_assert_eq!(got, body);
        prop_assert_eq!(rest, vec![ClientEvent::Done { keep_alive: framing != 2 }]);
    }

    /// Garbage never panics, and the parser never holds more than the head cap.
    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000), cuts in proptest::collection::vec(any::<usize>(), 0..10), prefix in 0u8..3) {
        let mut wire = match prefix {
            0 => Vec::new(),
            1 => b"HTTP/1.1 206 P\r\nTransfer-Encoding: chunked\r\nContent-Range: bytes 0-99/100\r\n\r\n".to_vec(),
            _ => b"HTTP/1.1 206 P\r\nContent-Range: bytes 0-99/100\r\nContent-Length: 100\r\n\r\n".to_vec(),
        };
        wire.extend_from_slice(&data);
        let (got, _) = run(&wire, 0..100, 100, &cuts);
        prop_assert!(got.len() <= 100);
        let mut p = ResponseParser::new();
        let mut input = Bytes::from(wire);
        for _ in 0..5000 {
            match p.parse(&mut input) {
                Ok(None) | Err(_) => break,
                Ok(Some(_)) => {}
            }
            if let PState::Head(b) = &p.state {
                prop_assert!(b.len() <= MAX_HEAD_BYTES);
            }
        }
    }
}
