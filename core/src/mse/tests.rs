//! Two endpoints over in-memory links: every policy pair, arbitrary read splits, tampering, hostile input.

use std::time::Duration;

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;
use crate::rng::{seeded, CoreRng, Rng};
use crate::time::Instant;

const T0: Instant = Instant::from_secs(100);

fn ih(n: u8) -> InfoHash {
    InfoHash([n; 20])
}

/// A 68-byte stand-in for the BitTorrent handshake carried as the initial payload.
fn ia() -> Vec<u8> {
    let mut v = b"\x13BitTorrent protocol".to_vec();
    v.extend_from_slice(&[0u8; 8]);
    v.extend_from_slice(&[7u8; 20]);
    v.extend_from_slice(b"-HB0100-abcdefghijkl");
    v
}

/// What happened on one link end.
#[derive(Debug)]
struct End {
    /// Bytes this end transmitted during the handshake (its transcript).
    sent: Vec<u8>,
    /// Payload bytes that arrived after its handshake consumed its part (still encrypted, as on the wire).
    leftover: Vec<u8>,
    result: Result<Established, MseError>,
}

/// Runs A (dialling) against B (accepting). `split` picks how many bytes the next read delivers (at least 1),
/// `tamper(dir, offset, byte)` may change a byte on the wire (dir 0: A → B, 1: B → A), `skeys` is B's
/// torrent set. A failing end closes its connection, which the other end sees as end of stream.
fn run(
    a: &mut Handshake,
    b: &mut Handshake,
    skeys: &[InfoHash],
    split: &mut dyn FnMut() -> usize,
    tamper: &mut dyn FnMut(usize, usize, &mut u8),
) -> (End, End) {
    let mut ends = [
        (
            Vec::new(),
            Vec::new(),
            None::<Result<Established, MseError>>,
        ),
        (Vec::new(), Vec::new(), None),
    ];
    // wires[0]: A → B bytes not yet read by B; wires[1]: B → A.
    let mut wires: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut offsets = [0usize; 2];
    for _round in 0..100_000 {
        for (dir, hs) in [(0usize, &mut *a), (1, &mut *b)] {
            while let Some(bytes) = hs.poll_transmit() {
                for mut byte in bytes.iter().copied() {
                    tamper(dir, offsets[dir], &mut byte);
                    offsets[dir] += 1;
                    wires[dir].push(byte);
                    ends[dir].0.push(byte);
                }
            }
        }
        let mut progressed = false;
        // Deliver to B (reads wire 0) then to A (reads wire 1).
        for (reader, wire) in [(1usize, 0usize), (0, 1)] {
            let hs: &mut Handshake = if reader == 0 { &mut *a } else { &mut *b };
            if ends[reader].2.is_some() {
                // Established or failed: later bytes are payload (or ignored).
                if ends[reader].2.as_ref().is_some_and(|r| r.is_ok()) {
                    ends[reader].1.append(&mut wires[wire]);
                }
                continue;
            }
            if wires[wire].is_empty() {
                continue;
            }
            let n = split().clamp(1, wires[wire].len());
            let chunk: Vec<u8> = wires[wire].drain(..n).collect();
            progressed = true;
            match hs.handle_read(&chunk, skeys) {
                Ok(used) => {
                    assert!(used <= chunk.len());
                    if hs.is_established() {
                        ends[reader].1.extend_from_slice(&chunk[used..]);
                        ends[reader].2 = Some(Ok(hs.take_established().expect("result once")));
                    } else {
                        assert_eq!(
                            used,
                            chunk.len(),
                            "a running handshake consumes all it gets"
                        );
                    }
                }
                Err(e) => ends[reader].2 = Some(Err(e)),
            }
        }
        // A failed end closes: the other end sees end of stream once its wire is drained.
        for (end, other) in [(0usize, 1usize), (1, 0)] {
            let failed = ends[end].2.as_ref().is_some_and(|r| r.is_err());
            let reader_of_end_wire = other;
            if failed && wires[end].is_empty() && ends[reader_of_end_wire].2.is_none() {
                let hs: &mut Handshake = if other == 0 { &mut *a } else { &mut *b };
                ends[other].2 = Some(Err(hs.handle_eof()));
                progressed = true;
            }
        }
        let done = ends.iter().all(|e| e.2.is_some());
        if done && wires.iter().all(|w| w.is_empty()) {
            break;
        }
        if !progressed && wires.iter().all(|w| w.is_empty()) {
            // Nothing moves: both wait for bytes that never come.
            for (i, hs) in [(0usize, &mut *a), (1, &mut *b)] {
                if ends[i].2.is_none() {
                    ends[i].2 = Some(Err(hs.handle_timeout(T0 + DEFAULT_TIMEOUT).unwrap_err()));
                }
            }
            break;
        }
    }
    let [ea, eb] = ends;
    let fin =
        |(sent, leftover, result): (Vec<u8>, Vec<u8>, Option<Result<Established, MseError>>)| End {
            sent,
            leftover,
            result: result.expect("the run ends with a result on both ends"),
        };
    (fin(ea), fin(eb))
}

fn whole() -> impl FnMut() -> usize {
    || usize::MAX
}

fn no_tamper() -> impl FnMut(usize, usize, &mut u8) {
    |_, _, _| {}
}

fn pair(seed: u64, pa: Policy, pb: Policy) -> (Handshake, Handshake) {
    let mut rng = seeded(seed);
    let a = Handshake::outgoing(T0, &mut rng, ih(1), pa, &ia()).expect("A starts");
    let b = Handshake::incoming(T0, &mut rng, pb).expect("B starts");
    (a, b)
}

/// Sends `data` from `from` to `to` through their transforms, chopping it into reads of `chunk` bytes.
fn pass(from: &mut Transform, to: &mut Transform, data: &[u8], chunk: usize) -> Vec<u8> {
    let mut wire = BytesMut::new();
    from.encrypt_into(data, &mut wire);
    let mut got = Vec::new();
    for piece in wire.chunks_mut(chunk.max(1)) {
        to.decrypt_in_place(piece);
        got.extend_from_slice(piece);
    }
    got
}

#[test]
fn detect_tells_plain_from_mse() {
    let plain = b"\x13BitTorrent protocol\0\0\0\0\0\x10\0\x05";
    assert_eq!(detect(&[]), Detection::NeedMore);
    assert_eq!(detect(&plain[..1]), Detection::NeedMore);
    assert_eq!(detect(&plain[..19]), Detection::NeedMore);
    assert_eq!(detect(&plain[..20]), Detection::Plain);
    assert_eq!(detect(plain), Detection::Plain);
    assert_eq!(detect(&[0x12]), Detection::Encrypted);
    assert_eq!(detect(b"\x13BitTorrent protocoX"), Detection::Encrypted);
    assert_eq!(detect(b"\x13Bit"), Detection::NeedMore);
    assert_eq!(detect(b"\x13Bat"), Detection::Encrypted);
}

#[test]
fn policy_names_and_rules() {
    for p in [Policy::Prefer, Policy::Require, Policy::Disable] {
        assert_eq!(p.as_str().parse::<Policy>(), Ok(p));
        assert_eq!(p.to_string(), p.as_str());
    }
    assert!("forced".parse::<Policy>().is_err());
    assert_eq!(Policy::default(), Policy::Prefer);
    assert!(
        Policy::Prefer.accepts(Detection::Plain) && Policy::Prefer.accepts(Detection::Encrypted)
    );
    assert!(
        !Policy::Require.accepts(Detection::Plain) && Policy::Require.accepts(Detection::Encrypted)
    );
    assert!(
        Policy::Disable.accepts(Detection::Plain) && !Policy::Disable.accepts(Detection::Encrypted)
    );
    assert!(!Policy::Disable.dials_encrypted() && !Policy::Disable.advertises());
    let mut rng = seeded(1);
    assert_eq!(
        Handshake::outgoing(T0, &mut rng, ih(1), Policy::Disable, &ia()).unwrap_err(),
        MseError::Disabled
    );
    assert_eq!(
        Handshake::incoming(T0, &mut rng, Policy::Disable).unwrap_err(),
        MseError::Disabled
    );
    assert_eq!(
        Handshake::outgoing(T0, &mut rng, ih(1), Policy::Prefer, &vec![0; 65_536]).unwrap_err(),
        MseError::InitialPayloadTooLong(65_536)
    );
}

#[test]
fn every_policy_pair_handshakes_and_carries_payload() {
    let cases = [
        (Policy::Prefer, Policy::Prefer, Crypto::Plaintext),
        (Policy::Prefer, Policy::Require, Crypto::Rc4),
        (Policy::Require, Policy::Prefer, Crypto::Rc4),
        (Policy::Require, Policy::Require, Crypto::Rc4),
    ];
    for (seed, (pa, pb, want)) in cases.into_iter().enumerate() {
        let (mut a, mut b) = pair(seed as u64, pa, pb);
        let (ea, eb) = run(
            &mut a,
            &mut b,
            &[ih(9), ih(1)],
            &mut whole(),
            &mut no_tamper(),
        );
        let (mut ra, mut rb) = (ea.result.expect("A ok"), eb.result.expect("B ok"));
        assert_eq!((ra.crypto, rb.crypto), (want, want), "{pa} → {pb}");
        assert_eq!((ra.info_hash, rb.info_hash), (ih(1), ih(1)));
        assert_eq!(ra.transform.is_encrypted(), want == Crypto::Rc4);
        assert!(ea.leftover.is_empty());
        // B's leftover is A's encrypted initial payload: its transform decrypts it.
        let mut first = eb.leftover.clone();
        assert_eq!(first.len(), ia().len());
        rb.transform.decrypt_in_place(&mut first);
        assert_eq!(first, ia());
        assert_eq!(rb.transform.is_encrypted(), want == Crypto::Rc4);
        // Then payload both ways, in odd-sized reads.
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 256) as u8).collect();
        assert_eq!(pass(&mut rb.transform, &mut ra.transform, &data, 333), data);
        assert_eq!(
            pass(&mut ra.transform, &mut rb.transform, &data, 1000),
            data
        );
        // On the wire it is ciphertext exactly when RC4 was selected.
        let mut wire = BytesMut::new();
        ra.transform.encrypt_into(&data, &mut wire);
        assert_eq!(wire[..] == data[..], want == Crypto::Plaintext);
    }
}

#[test]
fn refusals_between_incompatible_ends() {
    // A offers plaintext only (as some clients can be set to): B under `require` refuses it; B under
    // `prefer` accepts.
    let mut rng = seeded(5);
    let mut a = Handshake::outgoing_custom(T0, &mut rng, ih(1), CRYPTO_PLAINTEXT, &ia(), (10, 0));
    let mut b = Handshake::incoming(T0, &mut rng, Policy::Require).expect("B starts");
    let (ea, eb) = run(&mut a, &mut b, &[ih(1)], &mut whole(), &mut no_tamper());
    assert_eq!(
        eb.result.unwrap_err(),
        MseError::NoCommonMethod {
            provided: CRYPTO_PLAINTEXT,
            allowed: CRYPTO_RC4
        }
    );
    assert!(matches!(
        ea.result.unwrap_err(),
        MseError::Closed {
            stage: Stage::VcSync,
            ..
        }
    ));

    let mut a = Handshake::outgoing_custom(T0, &mut rng, ih(1), CRYPTO_PLAINTEXT, &ia(), (10, 0));
    let mut b = Handshake::incoming(T0, &mut rng, Policy::Prefer).expect("B starts");
    let (ea, eb) = run(&mut a, &mut b, &[ih(1)], &mut whole(), &mut no_tamper());
    assert_eq!(ea.result.expect("A ok").crypto, Crypto::Plaintext);
    assert_eq!(eb.result.expect("B ok").crypto, Crypto::Plaintext);

    // A responder that selects plaintext against our `require` (it accepts only plaintext).
    let mut a = Handshake::outgoing(T0, &mut rng, ih(1), Policy::Require, &ia()).expect("A");
    let mut b = Handshake::incoming_custom(T0, &mut rng, CRYPTO_PLAINTEXT, (0, 0));
    let (ea, eb) = run(&mut a, &mut b, &[ih(1)], &mut whole(), &mut no_tamper());
    assert!(matches!(
        eb.result.unwrap_err(),
        MseError::NoCommonMethod { .. }
    ));
    assert!(ea.result.is_err());
}

#[test]
fn unknown_torrent_is_refused() {
    let (mut a, mut b) = pair(3, Policy::Prefer, Policy::Prefer);
    let (ea, eb) = run(
        &mut a,
        &mut b,
        &[ih(2), ih(3)],
        &mut whole(),
        &mut no_tamper(),
    );
    assert_eq!(eb.result.unwrap_err(), MseError::UnknownTorrent);
    assert!(ea.result.is_err());
    // The map form finds it.
    let mut map = Req2Map::new();
    map.insert(ih(1));
    map.insert(ih(2));
    assert_eq!(map.find(&req2_hash(&ih(1))), Some(ih(1)));
    map.remove(&ih(1));
    assert_eq!((map.find(&req2_hash(&ih(1))), map.len()), (None, 1));
    assert_eq!(NoSkeys.find(&req2_hash(&ih(2))), None);
    let closure = |h: &[u8; 20]| (*h == req2_hash(&ih(4))).then_some(ih(4));
    assert_eq!(closure.find(&req2_hash(&ih(4))), Some(ih(4)));
}

#[test]
fn fixed_seeds_give_reproducible_bytes() {
    let transcript = |seed: u64| {
        let (mut a, mut b) = pair(seed, Policy::Prefer, Policy::Require);
        let (ea, eb) = run(&mut a, &mut b, &[ih(1)], &mut whole(), &mut no_tamper());
        let mut ra = ea.result.expect("A ok");
        let mut wire = BytesMut::new();
        ra.transform.encrypt_into(b"payload", &mut wire);
        (ea.sent, eb.sent, wire)
    };
    let one = transcript(42);
    assert_eq!(one, transcript(42));
    assert_ne!(one.0, transcript(43).0);
    // Shape of A's transcript: Ya + PadA (96..=608), then 40 hash bytes and the encrypted rest.
    let (sent_a, sent_b, _) = &one;
    assert!(sent_a.len() >= 96 + 40 + 8 + 4 + 2 + 2 + 68);
    assert!(sent_a.len() <= 96 + 512 + 40 + 8 + 4 + 2 + 512 + 2 + 68);
    assert!(sent_b.len() >= 96 + 8 + 4 + 2 && sent_b.len() <= 96 + 512 + 8 + 4 + 2 + 512);
    // No plaintext BitTorrent header anywhere on the wire.
    assert!(!sent_a.windows(19).any(|w| w == b"BitTorrent protocol"));
}

#[test]
fn longest_padding_synchronises_and_one_more_byte_does_not() {
    // PadA and PadB of 512 bytes and PadC, PadD of 512: the markers end exactly at the bounds.
    let mut rng = seeded(8);
    let mut a = Handshake::outgoing_custom(T0, &mut rng, ih(1), CRYPTO_RC4, &ia(), (512, 512));
    let mut b = Handshake::incoming_custom(T0, &mut rng, CRYPTO_RC4, (512, 512));
    let (ea, eb) = run(&mut a, &mut b, &[ih(1)], &mut whole(), &mut no_tamper());
    assert_eq!(ea.result.expect("A ok").crypto, Crypto::Rc4);
    assert_eq!(eb.result.expect("B ok").crypto, Crypto::Rc4);

    // One byte of padding more on A's side: B's req1 search must stop at 628 bytes.
    let mut a = Handshake::outgoing_custom(T0, &mut rng, ih(1), CRYPTO_RC4, &ia(), (512, 0));
    let mut b = Handshake::incoming_custom(T0, &mut rng, CRYPTO_RC4, (0, 0));
    let mut first = a.poll_transmit().expect("Ya").to_vec();
    first.push(0xAA);
    assert_eq!(b.handle_read(&first, &[ih(1)][..]), Ok(first.len()));
    let yb = b.poll_transmit().expect("Yb");
    a.handle_read(&yb, &NoSkeys).expect("A reads Yb");
    let step3 = a.poll_transmit().expect("step 3");
    assert_eq!(
        b.handle_read(&step3, &[ih(1)][..]),
        Err(MseError::Req1NotFound)
    );
    assert_eq!(b.received(), REQ1_SYNC_BOUND);

    // One byte more on B's side: A's VC search must stop at 616 bytes.
    let mut a = Handshake::outgoing_custom(T0, &mut rng, ih(1), CRYPTO_RC4, &ia(), (0, 0));
    let mut b = Handshake::incoming_custom(T0, &mut rng, CRYPTO_RC4, (512, 0));
    let ya = a.poll_transmit().expect("Ya");
    b.handle_read(&ya, &[ih(1)][..]).expect("B reads Ya");
    let mut second = b.poll_transmit().expect("Yb").to_vec();
    second.push(0x55);
    a.handle_read(&second, &NoSkeys)
        .expect("A reads Yb and PadB");
    let step3 = a.poll_transmit().expect("step 3");
    b.handle_read(&step3, &[ih(1)][..]).expect("B finishes");
    let step4 = b.poll_transmit().expect("step 4");
    assert_eq!(a.handle_read(&step4, &NoSkeys), Err(MseError::VcNotFound));
    assert_eq!(a.received(), VC_SYNC_BOUND);
}

#[test]
fn endless_padding_ends_at_the_bounds() {
    let mut rng = seeded(9);
    let mut junk = vec![0u8; 10_000];
    rng.fill_bytes(&mut junk);
    // Incoming: a valid key followed by padding that never ends.
    let mut a = Handshake::outgoing(T0, &mut rng, ih(1), Policy::Prefer, &ia()).expect("A");
    let ya = a.poll_transmit().expect("Ya");
    let mut b = Handshake::incoming(T0, &mut rng, Policy::Prefer).expect("B");
    b.handle_read(&ya[..96], &[ih(1)][..]).expect("key ok");
    let mut result = Ok(0);
    for chunk in junk.chunks(100) {
        result = b.handle_read(chunk, &[ih(1)][..]);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(MseError::Req1NotFound));
    assert_eq!(b.received(), REQ1_SYNC_BOUND);
    // Sticky.
    assert_eq!(
        b.handle_read(b"x", &[ih(1)][..]),
        Err(MseError::Req1NotFound)
    );
    assert_eq!(b.handle_eof(), MseError::Req1NotFound);

    // Outgoing: a valid key back, then endless padding.
    let b2 = Handshake::incoming(T0, &mut rng, Policy::Prefer).expect("B2");
    let mut b2 = b2;
    b2.handle_read(&ya[..96], &[ih(1)][..]).expect("key ok");
    let yb = b2.poll_transmit().expect("Yb");
    a.handle_read(&yb[..96], &NoSkeys).expect("A reads Yb");
    let result = a.handle_read(&junk, &NoSkeys);
    assert_eq!(result, Err(MseError::VcNotFound));
    assert_eq!(a.received(), VC_SYNC_BOUND);
}

#[test]
fn a_plain_answer_to_our_dial_fails_at_its_20th_byte() {
    // A plain-only peer that sends its BitTorrent handshake where its public key belongs, in any
    // split: the dial fails as soon as the 20-byte prefix is complete, not after 96 bytes or a timeout.
    for split in [1, 7, 19, 20, 68] {
        let mut rng = seeded(12);
        let mut a = Handshake::outgoing(T0, &mut rng, ih(1), Policy::Prefer, &[]).expect("A");
        let theirs = ia();
        let mut fed = 0;
        let mut result = Ok(0);
        for chunk in theirs.chunks(split) {
            result = a.handle_read(chunk, &NoSkeys);
            fed += chunk.len();
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(MseError::PlainAnswer), "split {split}");
        assert!(
            fed >= 20 && fed < 20 + split,
            "split {split}: failed after {fed} bytes"
        );
        assert!(MseError::PlainAnswer.suggests_plain_peer());
    }
    // The accepting side has its own detection (`detect`); for it these are just key bytes.
    let mut rng = seeded(13);
    let mut b = Handshake::incoming(T0, &mut rng, Policy::Prefer).expect("B");
    assert_eq!(b.handle_read(&ia(), &[ih(1)][..]), Ok(68));
}

#[test]
fn truncated_keys_timeouts_and_bad_keys() {
    let mut rng = seeded(10);
    let mut a = Handshake::outgoing(T0, &mut rng, ih(1), Policy::Prefer, &ia()).expect("A");
    let ya = a.poll_transmit().expect("Ya");
    let mut b = Handshake::incoming(T0, &mut rng, Policy::Prefer).expect("B");
    assert_eq!(b.handle_read(&ya[..50], &[ih(1)][..]), Ok(50));
    assert!(b.poll_transmit().is_none());
    let e = b.handle_eof();
    assert_eq!(
        e,
        MseError::Closed {
            stage: Stage::PublicKey,
            received: 50
        }
    );
    assert!(e.suggests_plain_peer());
    assert!(e.to_string().contains("public key"), "{e}");

    // A peer that never answers: the deadline.
    assert_eq!(a.poll_timeout(), Some(T0 + DEFAULT_TIMEOUT));
    assert_eq!(a.handle_timeout(T0 + Duration::from_secs(29)), Ok(()));
    let e = a.handle_timeout(T0 + DEFAULT_TIMEOUT).unwrap_err();
    assert_eq!(
        e,
        MseError::Timeout {
            stage: Stage::PublicKey,
            received: 0
        }
    );
    assert!(e.suggests_plain_peer());
    assert_eq!(a.poll_timeout(), None);

    // Degenerate public keys.
    let mut b = Handshake::incoming(T0, &mut rng, Policy::Prefer).expect("B");
    assert_eq!(
        b.handle_read(&[0u8; 96], &[ih(1)][..]),
        Err(MseError::InvalidPublicKey)
    );
    assert!(!MseError::InvalidPublicKey.suggests_plain_peer());
}

#[test]
fn tampered_handshakes_fail_cleanly() {
    // Offsets with fixed pads: A sends Ya (96) + PadA (10), req1 (20), obfuscated hash (20), VC (8),
    // crypto_provide (4), len(PadC) (2) ...; B sends Yb (96) + PadB (7), VC (8), crypto_select (4), ...
    let start = |seed: u64, a_allowed: u32| {
        let mut rng = seeded(seed);
        let a = Handshake::outgoing_custom(T0, &mut rng, ih(1), a_allowed, &ia(), (10, 3));
        let b = Handshake::incoming_custom(T0, &mut rng, CRYPTO_PLAINTEXT | CRYPTO_RC4, (7, 5));
        (a, b)
    };
    let both = CRYPTO_PLAINTEXT | CRYPTO_RC4;
    let cases: Vec<(usize, usize, u8, u32, MseError, bool)> = vec![
        // (direction, offset, xor, A's offer, expected error, on B?)
        (0, 106 + 20 + 5, 0x01, both, MseError::UnknownTorrent, true),
        (
            0,
            106 + 40 + 3,
            0x80,
            both,
            MseError::BadVerificationConstant,
            true,
        ),
        (
            0,
            106 + 48 + 3,
            0x03,
            both,
            MseError::NoCommonMethod {
                provided: 0,
                allowed: both,
            },
            true,
        ),
        (0, 106 + 52, 0x80, both, MseError::PadTooLong(0x8003), true),
        (
            1,
            103 + 8 + 3,
            0x01,
            CRYPTO_RC4,
            MseError::BadSelect {
                selected: 0x03,
                offered: CRYPTO_RC4,
            },
            false,
        ),
        (1, 103 + 12, 0x02, both, MseError::PadTooLong(0x0205), false),
    ];
    for (i, (dir, offset, flip, offer, want, on_b)) in cases.into_iter().enumerate() {
        let (mut a, mut b) = start(i as u64, offer);
        let mut tamper = |d: usize, o: usize, byte: &mut u8| {
            if d == dir && o == offset {
                *byte ^= flip;
            }
        };
        let (ea, eb) = run(&mut a, &mut b, &[ih(1)], &mut whole(), &mut tamper);
        let (mine, other) = if on_b { (eb, ea) } else { (ea, eb) };
        assert_eq!(mine.result.unwrap_err(), want, "case {i}");
        assert!(other.result.is_err() || !on_b, "case {i}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any split of either stream into reads gives the same transcripts, the same method and the same
    /// payload.
    #[test]
    fn any_split_gives_the_same_result(
        seed in 0u64..1_000,
        pa in prop_oneof![Just(Policy::Prefer), Just(Policy::Require)],
        pb in prop_oneof![Just(Policy::Prefer), Just(Policy::Require)],
        splits in proptest::collection::vec(1usize..700, 1..64),
        chunk in 1usize..5000,
    ) {
        let reference = {
            let (mut a, mut b) = pair(seed, pa, pb);
            run(&mut a, &mut b, &[ih(1)], &mut whole(), &mut no_tamper())
        };
        let (mut a, mut b) = pair(seed, pa, pb);
        let mut k = 0;
        let mut split = || { k += 1; splits[k % splits.len()] };
        let (ea, eb) = run(&mut a, &mut b, &[ih(1)], &mut split, &mut no_tamper());
        prop_assert_eq!(&ea.sent, &reference.0.sent);
        prop_assert_eq!(&eb.sent, &reference.1.sent);
        prop_assert_eq!(&eb.leftover, &reference.1.leftover);
        let (mut ra, mut rb) = (ea.result.expect("A ok"), eb.result.expect("B ok"));
        prop_assert_eq!(ra.crypto, reference.0.result.expect("A ok").crypto);
        let mut first = eb.leftover.clone();
        // The initial payload may arrive in pieces too.
        for piece in first.chunks_mut(chunk.min(7)) {
            rb.transform.decrypt_in_place(piece);
        }
        prop_assert_eq!(first, ia());
        let data: Vec<u8> = (0..3000u32).map(|i| (i ^ (i >> 3)) as u8).collect();
        prop_assert_eq!(pass(&mut ra.transform, &mut rb.transform, &data, chunk), data.clone());
        prop_assert_eq!(pass(&mut rb.transform, &mut ra.transform, &data, chunk), data);
    }

    /// Garbage after detection never panics and ends within the byte bounds.
    #[test]
    fn garbage_never_panics_and_stays_bounded(
        garbage in proptest::collection::vec(any::<u8>(), 0..2000),
        cut in 1usize..300,
        seed in any::<u64>(),
    ) {
        let mut rng: CoreRng = seeded(seed);
        let mut b = Handshake::incoming(T0, &mut rng, Policy::Prefer).expect("B");
        let mut a = Handshake::outgoing(T0, &mut rng, ih(1), Policy::Prefer, &ia()).expect("A");
        for chunk in garbage.chunks(cut) {
            let rb = b.handle_read(chunk, &[ih(1)][..]);
            let ra = a.handle_read(chunk, &NoSkeys);
            prop_assert!(!b.is_established() && !a.is_established());
            if let Ok(n) = rb { prop_assert_eq!(n, chunk.len()); }
            if let Ok(n) = ra { prop_assert_eq!(n, chunk.len()); }
        }
        prop_assert!(b.received() <= REQ1_SYNC_BOUND);
        prop_assert!(a.received() <= VC_SYNC_BOUND);
        if garbage.len() > REQ1_SYNC_BOUND {
            prop_assert!(b.error().is_some());
        }
        if garbage.len() > VC_SYNC_BOUND {
            prop_assert!(a.error().is_some());
        }
        let _ = (b.handle_eof(), a.handle_eof());
    }
}

#[test]
fn transform_plain_is_identity_and_ia_prefix_ends() {
    let mut t = Transform::plain();
    assert!(!t.is_encrypted() && !t.encrypts() && !t.decrypts());
    let mut buf = *b"hello";
    t.decrypt_in_place(&mut buf);
    t.encrypt_in_place(&mut buf);
    assert_eq!(&buf, b"hello");
    let mut out = BytesMut::from(&b"x"[..]);
    t.encrypt_into(b"yz", &mut out);
    assert_eq!(&out[..], b"xyz");
    // Random payload after a plaintext-selected MSE handshake: after len(IA) bytes B stops decrypting.
    let (mut a, mut b) = pair(77, Policy::Prefer, Policy::Prefer);
    let (_, eb) = run(&mut a, &mut b, &[ih(1)], &mut whole(), &mut no_tamper());
    let mut rb = eb.result.expect("B ok");
    assert!(rb.transform.decrypts() && !rb.transform.is_encrypted());
    let mut rest = eb.leftover.clone();
    rest.extend_from_slice(b"plain after");
    rb.transform.decrypt_in_place(&mut rest);
    assert_eq!(&rest[..68], &ia()[..]);
    assert_eq!(&rest[68..], b"plain after");
    assert!(!rb.transform.decrypts());
}

/// Known-answer vectors (the classic ones: key "Key", "Wiki", "Secret").
#[test]
fn rc4_known_answers() {
    for (key, plain, cipher) in [
        (&b"Key"[..], &b"Plaintext"[..], "bbf316e8d940af0ad3"),
        (b"Wiki", b"pedia", "1021bf0420"),
        (b"Secret", b"Attack at dawn", "45a01f645fc35b383552544b9bf5"),
    ] {
        let mut buf = plain.to_vec();
        super::cipher::Rc4::new(key).apply(&mut buf);
        let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, cipher);
    }
}

proptest! {
    /// Our RC4 gives the RustCrypto crate's keystream for any key and any split into calls.
    #[test]
    fn rc4_matches_the_rustcrypto_crate(
        key in proptest::collection::vec(any::<u8>(), 1..64),
        data in proptest::collection::vec(any::<u8>(), 0..3000),
        cuts in proptest::collection::vec(0usize..3000, 0..8),
    ) {
        use rc4::{KeyInit, StreamCipher};
        let mut want = data.clone();
        rc4::Rc4::new_from_slice(&key).expect("key length").apply_keystream(&mut want);
        let mut got = data.clone();
        let mut ours = super::cipher::Rc4::new(&key);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(got.len())).collect();
        cuts.sort_unstable();
        let mut at = 0;
        for c in cuts.into_iter().chain([got.len()]) {
            ours.apply(&mut got[at..c]);
            at = c;
        }
        prop_assert_eq!(got, want);
    }
}
