//! The core's MSE/PE handshake and transform (`hyperblow_core::mse`) against libtorrent 2.0 over
//! loopback, byte-exact. The sans-IO machines are driven by a small blocking `std::net` loop in this file
//! (the engine's own wiring is tested elsewhere), and the BitTorrent stream carried inside is spoken with
//! the core's wire encoder and decoder.
//!
//! - `we_dial_*`: a libtorrent seeder with encryption forced (RC4 only) or enabled (plaintext preferred)
//!   accepts our MSE handshake; we read its BitTorrent handshake and bitfield through the transform, ask
//!   for two blocks and compare them with the file.
//! - `libtorrent_dials_*`: a libtorrent leecher with encryption forced or enabled dials us; we detect
//!   MSE from the first bytes, find the torrent by its `req2` hash, serve the whole torrent through the
//!   transform, and compare what libtorrent wrote with the file.
//!
//! Each libtorrent process has DHT, LSD, UPnP and NAT-PMP off, listens on 127.0.0.1 and is stopped by
//! PID (see `src/interop/`); every read has a timeout.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant as StdInstant};

use bytes::BytesMut;
use hyperblow_core::mse::{
    detect, Crypto, Detection, Established, Handshake, NoSkeys, Policy, Req2Map, SkeyLookup,
    Transform,
};
use hyperblow_core::rng::seeded;
use hyperblow_core::wire::{self, BlockRequest, Decoded, Decoder, Message, Reserved};
use hyperblow_core::{InfoHash, Instant, PeerId};
use hyperblow_tests::interop::{
    free_port, mktorrent, require_tool, write_payload, LtConfig, LtPeer, LtRole, LtSource,
};

const PIECE_LOG2: u8 = 15;
const PIECE_LEN: usize = 1 << PIECE_LOG2;
const LEN: usize = 7 * PIECE_LEN + 1234;
const WAIT: Duration = Duration::from_secs(40);
const READ_TIMEOUT: Duration = Duration::from_secs(20);

struct Fixture {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    data: Vec<u8>,
    torrent: std::path::PathBuf,
    info_hash: InfoHash,
}

fn fixture(seed: u64) -> Option<Fixture> {
    require_tool("mktorrent")?;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_path_buf();
    let data = write_payload(&path.join("seed").join("mse.bin"), LEN, seed).expect("payload");
    let t = mktorrent(
        &path.join("seed").join("mse.bin"),
        &["http://127.0.0.1:9/announce"],
        PIECE_LOG2,
        &path.join("mse.torrent"),
    )
    .expect("mktorrent");
    Some(Fixture {
        dir: path,
        _dir: dir,
        data,
        torrent: t.path,
        info_hash: t.info_hash,
    })
}

fn spawn_lt(
    f: &Fixture,
    name: &str,
    role: LtRole,
    mode: &str,
    connect: Vec<std::net::SocketAddr>,
) -> Option<LtPeer> {
    let save = match role {
        LtRole::Seed => f.dir.join("seed"),
        LtRole::Leech => f.dir.join("leech"),
    };
    let mut cfg = LtConfig::new(
        name,
        role,
        LtSource::Torrent(f.torrent.clone()),
        &save,
        free_port().expect("port"),
        Duration::from_secs(60),
    );
    cfg.connect = connect;
    cfg.extra_args = vec![
        "--encryption".into(),
        mode.into(),
        "--reannounce".into(),
        "0".into(),
    ];
    std::fs::create_dir_all(f.dir.join("logs")).expect("log dir");
    std::fs::create_dir_all(&save).expect("save dir");
    LtPeer::spawn(&cfg, &f.dir.join("logs")).expect("spawn libtorrent")
}

/// An established connection: the socket, the transform and the decoder behind it.
struct Conn {
    stream: TcpStream,
    transform: Transform,
    decoder: Decoder,
}

impl Conn {
    /// Bytes off the socket: decrypted in place, then handed to the decoder.
    fn feed(&mut self, raw: &mut [u8]) {
        self.transform.decrypt_in_place(raw);
        self.decoder.extend(raw);
    }

    fn next(&mut self) -> Option<Decoded> {
        let deadline = StdInstant::now() + READ_TIMEOUT;
        loop {
            if let Some(d) = self.decoder.decode().expect("libtorrent's stream decodes") {
                return Some(d);
            }
            let mut buf = [0u8; 16 * 1024];
            let n = match self.stream.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => 0,
                Err(e) => panic!("read: {e}"),
            };
            if n == 0 {
                return None;
            }
            self.feed(&mut buf[..n]);
            assert!(StdInstant::now() < deadline, "no message in time");
        }
    }

    fn send(&mut self, plain: &[u8]) {
        let mut out = BytesMut::new();
        self.transform.encrypt_into(plain, &mut out);
        self.stream.write_all(&out).expect("write");
    }

    fn send_msg(&mut self, m: Message) {
        let mut plain = BytesMut::new();
        m.encode(&mut plain).expect("encodes");
        self.send(&plain);
    }
}

/// Runs the handshake over the socket (`first`: bytes already read); returns the result and the
/// payload bytes that came with the read that finished it (still as on the wire).
fn drive(
    stream: &mut TcpStream,
    hs: &mut Handshake,
    skeys: &(impl SkeyLookup + ?Sized),
    first: &[u8],
) -> (Established, Vec<u8>) {
    let mut pending = first.to_vec();
    loop {
        while let Some(out) = hs.poll_transmit() {
            stream.write_all(&out).expect("write handshake");
        }
        if !pending.is_empty() {
            let used = hs
                .handle_read(&pending, skeys)
                .expect("handshake with libtorrent");
            while let Some(out) = hs.poll_transmit() {
                stream.write_all(&out).expect("write handshake");
            }
            if let Some(est) = hs.take_established() {
                return (est, pending[used..].to_vec());
            }
            pending.clear();
        }
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).expect("read during handshake");
        if n == 0 {
            panic!("libtorrent closed: {}", hs.handle_eof());
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

fn our_handshake(info_hash: InfoHash) -> [u8; wire::HANDSHAKE_LEN] {
    let mut rng = seeded(3);
    wire::Handshake::new(info_hash, PeerId::generate(&mut rng), Reserved::empty()).to_bytes()
}

fn we_dial(mode: &str, policy: Policy, want: Crypto) {
    let Some(f) = fixture(11) else { return };
    let Some(lt) = spawn_lt(&f, &format!("lt-seed-{mode}"), LtRole::Seed, mode, vec![]) else {
        return;
    };
    lt.wait_seeding(WAIT).expect("seeding");
    let mut stream = TcpStream::connect(lt.addr()).expect("connect");
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    let mut rng = seeded(21);
    let ia = our_handshake(f.info_hash);
    let mut hs = Handshake::outgoing(Instant::from_secs(0), &mut rng, f.info_hash, policy, &ia)
        .expect("starts");
    let (est, mut rest) = drive(&mut stream, &mut hs, &NoSkeys, &[]);
    assert_eq!(est.crypto, want);
    let mut conn = Conn {
        stream,
        transform: est.transform,
        decoder: Decoder::new(wire::max_frame_len_for(8)),
    };
    conn.feed(&mut rest);
    match conn.next() {
        Some(Decoded::Handshake(h)) => assert_eq!(h.info_hash, f.info_hash),
        other => panic!("expected libtorrent's handshake, got {other:?}"),
    }
    let mut unchoked = false;
    let mut blocks = Vec::new();
    let last = (LEN / PIECE_LEN) as u32;
    let wanted = [
        BlockRequest {
            index: 0,
            begin: 0,
            length: 16384,
        },
        BlockRequest {
            index: last,
            begin: 0,
            length: (LEN % PIECE_LEN) as u32,
        },
    ];
    while blocks.len() < wanted.len() {
        match conn.next().expect("libtorrent stays connected") {
            Decoded::Message(Message::Bitfield(bits)) => {
                assert_eq!(bits[0], 0xff, "a seeder has every piece");
                conn.send_msg(Message::Interested);
            }
            Decoded::Message(Message::Unchoke) if !unchoked => {
                unchoked = true;
                for r in wanted {
                    conn.send_msg(Message::Request(r));
                }
            }
            Decoded::Message(Message::Piece {
                index,
                begin,
                block,
            }) => {
                let at = index as usize * PIECE_LEN + begin as usize;
                assert_eq!(
                    &block[..],
                    &f.data[at..at + block.len()],
                    "block {index}/{begin}"
                );
                blocks.push(index);
            }
            _ => {}
        }
    }
    assert_eq!(blocks.len(), 2);
    lt.process().stop();
}

fn libtorrent_dials(mode: &str, policy: Policy, want: Crypto) {
    let Some(f) = fixture(12) else { return };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let Some(lt) = spawn_lt(
        &f,
        &format!("lt-leech-{mode}"),
        LtRole::Leech,
        mode,
        vec![listener.local_addr().expect("addr")],
    ) else {
        return;
    };
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = StdInstant::now() + WAIT;
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(StdInstant::now() < deadline, "libtorrent did not dial us");
                assert!(
                    lt.process().is_running(),
                    "libtorrent exited: {}",
                    lt.process().log_tail(20)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    // Detection from the first bytes.
    let mut first = Vec::new();
    while detect(&first) == Detection::NeedMore {
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).expect("first bytes");
        assert!(n > 0, "libtorrent closed before its first bytes");
        first.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        detect(&first),
        Detection::Encrypted,
        "libtorrent opens with MSE"
    );
    let mut skeys = Req2Map::new();
    skeys.insert(InfoHash([9; 20]));
    skeys.insert(f.info_hash);
    let mut rng = seeded(22);
    let mut hs = Handshake::incoming(Instant::from_secs(0), &mut rng, policy).expect("starts");
    let (est, mut rest) = drive(&mut stream, &mut hs, &skeys, &first);
    assert_eq!((est.crypto, est.info_hash), (want, f.info_hash));
    let mut conn = Conn {
        stream,
        transform: est.transform,
        decoder: Decoder::new(wire::max_frame_len_for(8)),
    };
    conn.feed(&mut rest);
    match conn.next() {
        Some(Decoded::Handshake(h)) => assert_eq!(h.info_hash, f.info_hash),
        other => panic!("expected libtorrent's handshake in IA, got {other:?}"),
    }
    conn.send(&our_handshake(f.info_hash));
    conn.send_msg(Message::Bitfield(vec![0xff].into()));
    let mut served = 0usize;
    while let Some(d) = conn.next() {
        match d {
            Decoded::Message(Message::Interested) => conn.send_msg(Message::Unchoke),
            Decoded::Message(Message::Request(r)) => {
                let at = r.index as usize * PIECE_LEN + r.begin as usize;
                let block = f.data[at..at + r.length as usize].to_vec();
                served += block.len();
                conn.send_msg(Message::Piece {
                    index: r.index,
                    begin: r.begin,
                    block: block.into(),
                });
            }
            _ => {}
        }
        if served >= LEN {
            break;
        }
    }
    lt.wait_finished(WAIT, &[]).expect("libtorrent finished");
    let got = std::fs::read(f.dir.join("leech").join("mse.bin")).expect("downloaded file");
    assert!(got == f.data, "libtorrent's copy differs");
}

#[test]
fn we_dial_forced_libtorrent_seeder() {
    we_dial("forced", Policy::Require, Crypto::Rc4);
}

#[test]
fn we_dial_enabled_libtorrent_seeder_plaintext_selected() {
    we_dial("enabled", Policy::Prefer, Crypto::Plaintext);
}

#[test]
fn libtorrent_forced_leecher_dials_us() {
    libtorrent_dials("forced", Policy::Require, Crypto::Rc4);
}

#[test]
fn libtorrent_enabled_leecher_dials_us_plaintext_selected() {
    libtorrent_dials("enabled", Policy::Prefer, Crypto::Plaintext);
}
