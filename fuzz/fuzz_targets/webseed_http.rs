//! Web-seed answers: a ranged GET's response, in any chunking (Content-Length, chunked, or
//! close-delimited framing, interim 1xx, redirects, errors), never panics, never hands out more
//! body bytes than the range asked for, and the parser never buffers past its head cap.
#![no_main]

use bytes::Bytes;
use hyperblow_core::time::Instant;
use hyperblow_core::tracker::http::TrackerUrl;
use hyperblow_core::webseed::http::{ClientEvent, RangeClient, ResponseParser};
use hyperblow_core::webseed::FileRange;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let url = TrackerUrl::parse("http://127.0.0.1:8080/seed/file.bin").expect("valid URL");
    let start = u64::from(ctl & 0x0f) * 100;
    let asked = FileRange {
        file_index: 0,
        range: start..start + 1000,
        buf_offset: 0,
    };
    let mut client = RangeClient::new(Duration::from_secs(30));
    let _ = client.start(Instant::from_secs(1), &url, asked, 10_000);
    let chunk = usize::from(ctl >> 4) * 7 + 1;
    let mut events = Vec::new();
    let mut body = 0usize;
    for piece in rest.chunks(chunk) {
        client.handle_data(Instant::from_secs(2), Bytes::copy_from_slice(piece), &mut events);
    }
    client.handle_eof(&mut events);
    for e in &events {
        if let ClientEvent::Data(b) = e {
            body += b.len();
        }
    }
    assert!(body <= 1000, "more body bytes than asked for: {body}");

    // The bare parser on the same bytes, one piece at a time.
    let mut parser = ResponseParser::new();
    for piece in rest.chunks(chunk) {
        let mut input = Bytes::copy_from_slice(piece);
        loop {
            match parser.parse(&mut input) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = parser.eof();
});
