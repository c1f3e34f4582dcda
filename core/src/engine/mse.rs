//! Protocol encryption (MSE/PE) in the engine: the byte layer between a peer connection's socket bytes
//! and its [`PeerSession`](crate::peer::PeerSession), chosen per connection by the session's
//! [`Policy`].
//!
//! - **Incoming**: the first bytes decide ([`mse::detect`]): `\x13BitTorrent protocol` is a plain
//!   handshake (refused under `require`), anything else starts an accepting [`Handshake`] that finds the
//!   torrent by `HASH('req2', info_hash)` among all of ours. Under `disable` no layer is made at all,
//!   so an MSE handshake fails the session's own handshake check.
//! - **Outgoing**: under `prefer` and `require` the dial opens with MSE with an empty initial payload
//!   (our BitTorrent handshake follows the handshake through the transform: Transmission 3.00 selecting
//!   plaintext does not read a handshake carried as `IA`); under `prefer` a peer that closes or goes
//!   quiet before sending a whole public key, or answers with a plain BitTorrent handshake (a client
//!   without MSE), is remembered and redialled at once with a plain handshake.
//! - **Established**: every MSE connection keeps a [`StreamLayer`]: its [`Transform`] (received
//!   bytes decrypted in place in the read buffer the driver handed over, sent bytes encrypted into a
//!   send buffer; nothing for a plaintext payload) and a [`Cut`] that keeps the decoder's reads free of
//!   copies. Connections with a plain BitTorrent handshake have no layer at all.
//!
//! The session's own handshake timeout (30 s from the dial) bounds an MSE handshake in time, and the
//! handshake's synchronisation bounds bound it in bytes. The hooks in `mod.rs` and `flow.rs` are a
//! line or two each; everything else is here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};

use crate::mse::{self, Crypto, Detection, Handshake, MseError, NoSkeys, Policy, Stage, Transform};
use crate::time::Instant;
use crate::types::InfoHash;
use crate::wire::FrameTracker;

use super::io::ConnId;
use super::Engine;

/// Size of the buffer an RC4 connection encrypts shared send buffers into (a block read from disk is a
/// slice of a bigger read, so it cannot be encrypted in place); encrypted messages are split off it,
/// so one allocation serves several blocks.
const SEND_BUF: usize = 128 * 1024;

/// Most addresses remembered as "answers only plain handshakes" (oldest forgotten first is not
/// needed: a full set just stops remembering, and such a peer then costs one failed MSE dial per try).
const MAX_PLAIN_PEERS: usize = 4096;

/// One connection's layer while it has one.
#[derive(Debug)]
enum Layer {
    /// Incoming, the first bytes so far (at most 20) until [`mse::detect`] decides.
    Detect(BytesMut),
    /// The MSE handshake runs; `held` is what the session queued meanwhile (sent once it is done).
    Handshake { hs: Box<Handshake>, held: BytesMut },
    /// After an MSE handshake (boxed: two RC4 states are half a kilobyte).
    Stream(Box<StreamLayer>),
}

/// An established MSE connection's layer: its transform (RC4, or nothing left to do for a plaintext
/// payload) and the frame cut.
#[derive(Debug)]
struct StreamLayer {
    transform: Transform,
    cut: Cut,
    /// Where shared send buffers are encrypted into (see [`SEND_BUF`]).
    send_buf: BytesMut,
}

/// Keeps the session's decoder from copying every read after an MSE handshake.
///
/// The drivers' reader tasks size their reads with a [`FrameTracker`] over the socket bytes so that an
/// allocation ends on a frame boundary, and the decoder then takes each read over without a copy (a
/// frame that straddles two allocations must be copied, and once the decoder holds a copied partial
/// frame, every later read is appended to that copy until a read happens to end on a boundary, which
/// is almost never). After an MSE handshake the socket bytes are not the peer wire (the handshake
/// itself, then ciphertext), so that tracker is lost for good, and the decoder used to copy nearly
/// every byte. This cut follows the frames of the plaintext the session gets instead: when a read does
/// not continue the previous read's allocation while the decoder holds part of a frame, the read is
/// handed over in two parts, the rest of that frame (the one copy the decoder must make) and
/// everything after it (taken over without a copy, the decoder being empty again).
#[derive(Debug, Default)]
struct Cut {
    frames: FrameTracker,
    /// Address just past the previous read's last byte.
    end: usize,
    /// Whether the session got any byte yet.
    started: bool,
}

impl Cut {
    /// Notes `data`, the next plaintext for the session; returns the part to hand over after `data`
    /// when it had to be split (see [`Cut`]).
    fn split(&mut self, data: &mut BytesMut) -> Option<BytesMut> {
        let start = data.as_ptr() as usize;
        let continues = start == self.end;
        self.end = start.wrapping_add(data.len());
        let at = if continues || !self.started {
            None
        } else {
            self.to_boundary(data)
        };
        self.frames.advance(data);
        self.started |= !data.is_empty();
        match at {
            Some(n) if n > 0 && n < data.len() => Some(data.split_off(n)),
            Some(0) => None,
            // The read ends inside the frame: the decoder copies it to a new buffer, which the next
            // read does not continue either, so that one is cut as well.
            _ if !continues && self.started => {
                self.end = 0;
                None
            }
            _ => None,
        }
    }

    /// Bytes of `data` up to the end of the frame (or handshake) in progress, reading the rest of a
    /// split length prefix from `data`; `None` when `data` does not get that far.
    fn to_boundary(&self, data: &[u8]) -> Option<usize> {
        let mut probe = self.frames.clone();
        let mut off = 0usize;
        loop {
            if let Some(left) = probe.until_boundary() {
                return usize::try_from(left).ok()?.checked_add(off);
            }
            let step = usize::try_from(probe.next_stop()).ok()?;
            let part = data.get(off..off.checked_add(step)?)?;
            probe.advance(part);
            off += step;
        }
    }
}

/// The engine's encryption state: the policy, every connection's layer, and the peers that only speak
/// plain BitTorrent.
#[derive(Debug, Default)]
pub(super) struct MseConns {
    policy: Policy,
    layers: BTreeMap<ConnId, Layer>,
    /// Connections whose handshake was MSE (either payload method): PEX advertises them with flag 0x01.
    via_mse: BTreeSet<ConnId>,
    /// Connections established with an RC4 payload stream (for stats and tests).
    rc4: BTreeSet<ConnId>,
    /// Addresses whose MSE dial failed like a plain-only client's: dialled plain from now on.
    plain_peers: BTreeSet<SocketAddr>,
}

impl MseConns {
    /// The state for a session with `policy`.
    pub(super) fn new(policy: Policy) -> MseConns {
        MseConns {
            policy,
            ..MseConns::default()
        }
    }

    /// The session's policy.
    pub(super) fn policy(&self) -> Policy {
        self.policy
    }

    /// Whether the connection's session must not send yet (its bytes wait for the MSE handshake).
    pub(super) fn holds(&self, id: ConnId) -> bool {
        matches!(
            self.layers.get(&id),
            Some(Layer::Detect(_) | Layer::Handshake { .. })
        )
    }

    /// Whether reads on `id` go through the layer (otherwise they go straight to the session).
    pub(super) fn has_layer(&self, id: ConnId) -> bool {
        self.layers.contains_key(&id)
    }

    /// Whether the connection's handshake was MSE (PEX flag 0x01, "supports encryption").
    pub(super) fn via_mse(&self, id: ConnId) -> bool {
        self.via_mse.contains(&id)
    }

    /// Bytes the session sends on `id`, through its transform; untouched unless the stream is RC4.
    /// A buffer nobody else holds (a block just read from disk, a message just encoded) is encrypted
    /// in place; a shared one is encrypted into a new send buffer.
    pub(super) fn encrypt(&mut self, id: ConnId, data: Bytes) -> Bytes {
        match self.layers.get_mut(&id) {
            Some(Layer::Stream(l)) if l.transform.encrypts() => match data.try_into_mut() {
                Ok(mut own) => {
                    l.transform.encrypt_in_place(&mut own);
                    own.freeze()
                }
                Err(shared) => {
                    if l.send_buf.capacity() < shared.len() {
                        l.send_buf = BytesMut::with_capacity(shared.len().max(SEND_BUF));
                    }
                    l.transform.encrypt_into(&shared, &mut l.send_buf);
                    l.send_buf.split().freeze()
                }
            },
            _ => data,
        }
    }
}

/// What the read hook tells the engine.
pub(super) enum ReadOutcome {
    /// Hand these bytes to the session (possibly empty), then `rest` if there is one (a read cut in two
    /// at a frame boundary, see [`Cut`]).
    Payload(BytesMut, Option<BytesMut>),
    /// Nothing for the session (the handshake consumed everything, or the connection was dropped).
    Nothing,
}

impl Engine {
    /// Hook: an incoming peer connection was accepted as `id`.
    pub(super) fn mse_accepted(&mut self, id: ConnId) {
        if self.mse.policy != Policy::Disable {
            self.mse.layers.insert(id, Layer::Detect(BytesMut::new()));
        }
    }

    /// Hook: an outgoing peer connection is up. Under `prefer` (unless the peer is known to speak only
    /// plain) and `require`, starts the MSE handshake (empty initial payload; everything the session
    /// queued, its BitTorrent handshake first, is held until the handshake is done).
    pub(super) fn mse_connected(&mut self, now: Instant, id: ConnId) {
        let policy = self.mse.policy;
        if !policy.dials_encrypted() {
            return;
        }
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if policy == Policy::Prefer && self.mse.plain_peers.contains(&c.addr) {
            return;
        }
        let Some(info_hash) = c
            .torrent
            .and_then(|tid| self.torrents.get(&tid))
            .map(|t| t.info_hash)
        else {
            return;
        };
        let mut held = BytesMut::new();
        while let Some(b) = c.session.poll_transmit() {
            held.extend_from_slice(&b);
        }
        let ia: &[u8] = &[];
        match Handshake::outgoing(now, &mut self.rng, info_hash, policy, ia) {
            Ok(mut hs) => {
                if let Some(out) = hs.poll_transmit() {
                    c.unflushed += self.utp.send_bytes(id, out, &mut self.outputs);
                }
                self.mse.layers.insert(
                    id,
                    Layer::Handshake {
                        hs: Box::new(hs),
                        held,
                    },
                );
            }
            Err(e) => self.drop_conn(now, id, &format!("encryption: {e}"), true),
        }
    }

    /// Hook: bytes arrived on peer connection `id`, which has a layer. Returns what the session gets.
    pub(super) fn mse_read(&mut self, now: Instant, id: ConnId, mut data: BytesMut) -> ReadOutcome {
        let Some(layer) = self.mse.layers.get_mut(&id) else {
            return ReadOutcome::Payload(data, None);
        };
        match layer {
            Layer::Stream(l) => {
                l.transform.decrypt_in_place(&mut data);
                let rest = l.cut.split(&mut data);
                ReadOutcome::Payload(data, rest)
            }
            Layer::Detect(first) => {
                first.extend_from_slice(&data);
                match mse::detect(first) {
                    Detection::NeedMore => ReadOutcome::Nothing,
                    Detection::Plain if self.mse.policy.accepts(Detection::Plain) => {
                        let first = std::mem::take(first);
                        self.mse.layers.remove(&id);
                        ReadOutcome::Payload(first, None)
                    }
                    Detection::Plain => {
                        self.drop_conn(
                            now,
                            id,
                            "plain BitTorrent handshake refused: encryption is required",
                            true,
                        );
                        ReadOutcome::Nothing
                    }
                    Detection::Encrypted => {
                        let first = std::mem::take(first);
                        match Handshake::incoming(now, &mut self.rng, self.mse.policy) {
                            Ok(hs) => {
                                self.mse.layers.insert(
                                    id,
                                    Layer::Handshake {
                                        hs: Box::new(hs),
                                        held: BytesMut::new(),
                                    },
                                );
                                self.mse_handshake_read(now, id, first)
                            }
                            Err(e) => {
                                self.drop_conn(now, id, &format!("encryption: {e}"), true);
                                ReadOutcome::Nothing
                            }
                        }
                    }
                }
            }
            Layer::Handshake { .. } => self.mse_handshake_read(now, id, data),
        }
    }

    /// Feeds `data` to a running handshake; once it finishes, sends what the session held and returns
    /// the rest of `data`, through the transform.
    fn mse_handshake_read(&mut self, now: Instant, id: ConnId, mut data: BytesMut) -> ReadOutcome {
        let torrents = &self.torrents;
        let Some(Layer::Handshake { hs, .. }) = self.mse.layers.get_mut(&id) else {
            return ReadOutcome::Nothing;
        };
        let result = if hs.is_outgoing() {
            hs.handle_read(&data, &NoSkeys)
        } else {
            // The torrents keyed by HASH('req2', info_hash); a SHA-1 per torrent per incoming MSE
            // handshake, once.
            let lookup = |req2: &[u8; 20]| -> Option<InfoHash> {
                torrents
                    .values()
                    .map(|t| t.info_hash)
                    .find(|ih| mse::req2_hash(ih) == *req2)
            };
            hs.handle_read(&data, &lookup)
        };
        let out = hs.poll_transmit();
        let established = hs.take_established();
        if let (Some(out), Some(c)) = (out, self.conns.get_mut(&id)) {
            c.unflushed += self.utp.send_bytes(id, out, &mut self.outputs);
        }
        let used = match result {
            Ok(n) => n,
            Err(e) => {
                self.mse_failed(now, id, &e);
                return ReadOutcome::Nothing;
            }
        };
        let Some(est) = established else {
            return ReadOutcome::Nothing;
        };
        let Some(Layer::Handshake { held, .. }) = self.mse.layers.remove(&id) else {
            return ReadOutcome::Nothing;
        };
        self.mse.via_mse.insert(id);
        let mut transform = est.transform;
        if transform.is_encrypted() {
            self.mse.rc4.insert(id);
        }
        if !held.is_empty() {
            let mut out = BytesMut::with_capacity(held.len());
            transform.encrypt_into(&held, &mut out);
            if let Some(c) = self.conns.get_mut(&id) {
                c.unflushed += self.utp.send_bytes(id, out.freeze(), &mut self.outputs);
            }
        }
        data.advance(used);
        transform.decrypt_in_place(&mut data);
        // Kept for plaintext payloads too: the cut is what keeps their reads free of copies.
        let mut layer = Box::new(StreamLayer {
            transform,
            cut: Cut::default(),
            send_buf: BytesMut::new(),
        });
        let rest = layer.cut.split(&mut data);
        self.mse.layers.insert(id, Layer::Stream(layer));
        ReadOutcome::Payload(data, rest)
    }

    /// A handshake failed: close the connection; under `prefer`, a dialled peer that looks like a
    /// plain-only client is remembered and redialled plain at once.
    fn mse_failed(&mut self, now: Instant, id: ConnId, e: &MseError) {
        self.drop_conn(now, id, &format!("encryption handshake: {e}"), true);
    }

    /// Hook (in `drop_conn`, after the connection left the tables): forgets its layer; a dial under
    /// `prefer` that ended before the peer's public key came in marks the address plain-only and makes
    /// it diallable again at once.
    pub(super) fn mse_dropped(
        &mut self,
        now: Instant,
        id: ConnId,
        addr: SocketAddr,
        torrent: Option<super::TorrentId>,
    ) {
        self.mse.via_mse.remove(&id);
        self.mse.rc4.remove(&id);
        let Some(layer) = self.mse.layers.remove(&id) else {
            return;
        };
        let Layer::Handshake { hs, .. } = layer else {
            return;
        };
        if !hs.is_outgoing() || self.mse.policy != Policy::Prefer {
            return;
        }
        let waiting_for_key =
            hs.stage() == Stage::PublicKey || hs.error().is_some_and(MseError::suggests_plain_peer);
        if !waiting_for_key || self.mse.plain_peers.len() >= MAX_PLAIN_PEERS {
            return;
        }
        self.mse.plain_peers.insert(addr);
        if let Some(e) = torrent
            .and_then(|tid| self.torrents.get_mut(&tid))
            .and_then(|t| t.book.entries.get_mut(&addr))
        {
            // Undo the back-off this failure earned: the plain redial is the same attempt.
            e.failures = e.failures.saturating_sub(1);
            e.next_try = now;
        }
        self.dial_dirty = true;
    }

    /// Whether `addr` was found to answer only plain handshakes (tests).
    #[cfg(test)]
    pub(super) fn mse_plain_peer(&self, addr: &SocketAddr) -> bool {
        self.mse.plain_peers.contains(addr)
    }

    /// Whether connection `id` still runs a cipher in either direction (tests).
    #[cfg(test)]
    pub(super) fn mse_has_cipher(&self, id: ConnId) -> bool {
        matches!(self.mse.layers.get(&id), Some(Layer::Stream(l))
            if l.transform.decrypts() || l.transform.encrypts())
    }

    /// Whether connection `id`'s payload stream is RC4 (tests).
    #[cfg(test)]
    pub(super) fn mse_is_rc4(&self, id: ConnId) -> bool {
        self.peer_encryption(id) == Some(Crypto::Rc4)
    }

    /// How peer connection `conn` is protected: `None` for a plain BitTorrent handshake (or a
    /// connection whose handshake has not finished), `Some(Crypto::Plaintext)` for an MSE handshake that
    /// selected a plaintext payload, `Some(Crypto::Rc4)` for an RC4 stream.
    pub fn peer_encryption(&self, conn: ConnId) -> Option<Crypto> {
        if self.mse.rc4.contains(&conn) {
            Some(Crypto::Rc4)
        } else if self.mse.via_mse.contains(&conn) {
            Some(Crypto::Plaintext)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, Bytes, BytesMut};

    use super::Cut;
    use crate::rng::{seeded, RngExt};
    use crate::types::{InfoHash, PeerId};
    use crate::wire::{Decoded, Decoder, Handshake, Message, Reserved, DEFAULT_MAX_FRAME_LEN};

    /// A handshake, then 16 KiB blocks and small messages; returns the stream and its message count.
    fn stream() -> (Vec<u8>, usize) {
        let mut buf = BytesMut::new();
        Handshake::new(InfoHash([1; 20]), PeerId([2; 20]), Reserved::FAST).encode(&mut buf);
        let mut n = 0;
        for k in 0..120u32 {
            let block = Bytes::from(vec![k as u8; 16 * 1024]);
            let m = Message::Piece {
                index: k,
                begin: 0,
                block,
            };
            m.encode(&mut buf).expect("encode");
            Message::Have { piece: k }.encode(&mut buf).expect("encode");
            Message::KeepAlive.encode(&mut buf).expect("encode");
            n += 3;
        }
        (buf.to_vec(), n)
    }

    /// Feeds `stream` to a decoder the way a driver's reader task does, in allocations of
    /// `alloc_len` bytes read in chunks of random length (contiguous within an allocation), through
    /// a [`Cut`] when `cut` is set; returns (messages decoded, bytes the decoder copied).
    fn feed(stream: &[u8], alloc_len: usize, seed: u64, cut: bool) -> (usize, u64) {
        let mut rng = seeded(seed);
        let mut dec = Decoder::new(DEFAULT_MAX_FRAME_LEN);
        let mut c = Cut::default();
        let mut msgs = 0;
        for alloc in stream.chunks(alloc_len) {
            let mut room = BytesMut::with_capacity(alloc.len());
            room.put_slice(alloc);
            while !room.is_empty() {
                let n = rng.random_range(1..=room.len().min(40_000));
                let mut chunk = room.split_to(n);
                let rest = if cut { c.split(&mut chunk) } else { None };
                for part in [Some(chunk), rest].into_iter().flatten() {
                    dec.extend_owned(part);
                    while let Some(d) = dec.decode().expect("decodes") {
                        if matches!(d, Decoded::Message(_)) {
                            msgs += 1;
                        }
                    }
                }
            }
        }
        (msgs, dec.bytes_moved())
    }

    #[test]
    fn cut_reads_leave_the_decoder_one_partial_frame_to_copy_per_allocation() {
        let (s, n) = stream();
        for seed in 0..8 {
            let alloc_len = 64 * 1024 + 1000 * seed as usize;
            let allocs = s.len().div_ceil(alloc_len) as u64;
            let (got, moved) = feed(&s, alloc_len, seed, true);
            assert_eq!(got, n, "seed {seed}");
            // One frame (a block and its header) per allocation boundary, counted twice when it took
            // more than one read to complete.
            assert!(
                moved <= allocs * 2 * (16 * 1024 + 13),
                "seed {seed}: {moved} bytes moved over {allocs} allocations"
            );
            // Without the cut the decoder copies, at each allocation boundary, only the bytes that
            // complete the straddling frame (it used to copy most of the stream).
            let (got, uncut) = feed(&s, alloc_len, seed, false);
            assert_eq!(got, n);
            assert!(
                uncut <= allocs * 2 * (16 * 1024 + 13),
                "seed {seed}: {uncut} bytes moved uncut over {allocs} allocations"
            );
        }
    }
}
