//! HTTP tracker replies: the response framing (any chunking, any framing) never panics and never
//! buffers past its caps, and announce and scrape bodies never panic the bencode reply parsers.
#![no_main]

use hyperblow_core::time::Instant;
use hyperblow_core::tracker::http::{parse_announce_response, parse_scrape_response, TrackerUrl};
use hyperblow_core::tracker::http_client::{Exchange, ExchangeConfig, Outcome};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_announce_response(data);
    let _ = parse_scrape_response(data);

    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let config = ExchangeConfig {
        max_head_bytes: 4 * 1024,
        max_body_bytes: 16 * 1024,
        ..ExchangeConfig::default()
    };
    let url = TrackerUrl::parse("http://127.0.0.1:6969/announce?x=1").expect("valid URL");
    let mut ex = Exchange::new(url, Instant::from_secs(1), config.clone());
    while ex.poll_transmit().is_some() {}
    let chunk = usize::from(ctl & 0x3f) + 1;
    let mut finished = false;
    for piece in rest.chunks(chunk) {
        ex.handle_data(piece);
        if let Some(result) = ex.poll_result() {
            finished = true;
            match result {
                Ok(Outcome::Body(body)) => {
                    assert!(body.len() <= config.max_body_bytes);
                    let _ = parse_announce_response(&body);
                }
                Ok(Outcome::Redirect(_)) => {
                    while ex.poll_transmit().is_some() {}
                    finished = false;
                }
                Err(_) => {}
            }
            if finished {
                break;
            }
        }
    }
    if !finished {
        if ctl & 0x40 != 0 {
            ex.handle_eof();
        } else {
            ex.handle_timeout(Instant::from_secs(3600));
        }
        if let Some(Ok(Outcome::Body(body))) = ex.poll_result() {
            assert!(body.len() <= config.max_body_bytes);
        }
    }
});
