//! The MSE handshake state machine for both sides, sans-IO: bytes in through [`Handshake::handle_read`],
//! bytes out through [`Handshake::poll_transmit`], the result through [`Handshake::take_established`].

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::cipher::{Rc4Stream, Transform};
use super::dh::KeyPair;
use super::{
    hash, req2_hash, Crypto, MseError, Policy, Stage, CRYPTO_PLAINTEXT, CRYPTO_RC4, MAX_PAD_LEN,
    PREFIX, PUBLIC_KEY_LEN, REQ1_SYNC_BOUND, VC_LEN, VC_SYNC_BOUND,
};
use crate::rng::{CoreRng, Rng, RngExt};
use crate::time::Instant;
use crate::types::InfoHash;

/// How long a handshake may take before [`Handshake::handle_timeout`] fails it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds the torrent an incoming handshake asks for: given `HASH('req2', info_hash)` (recovered from the
/// peer's obfuscated hash), the info-hash of ours that produces it.
pub trait SkeyLookup {
    /// The torrent whose `HASH('req2', info_hash)` is `req2`, if we have one.
    fn find(&self, req2: &[u8; 20]) -> Option<InfoHash>;
}

impl<F: Fn(&[u8; 20]) -> Option<InfoHash>> SkeyLookup for F {
    fn find(&self, req2: &[u8; 20]) -> Option<InfoHash> {
        self(req2)
    }
}

/// A plain list of info-hashes (hashes each one per lookup; fine for a handful of torrents).
impl SkeyLookup for [InfoHash] {
    fn find(&self, req2: &[u8; 20]) -> Option<InfoHash> {
        self.iter().find(|ih| req2_hash(ih) == *req2).copied()
    }
}

/// No torrents: for outgoing handshakes, which never look one up.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSkeys;

impl SkeyLookup for NoSkeys {
    fn find(&self, _req2: &[u8; 20]) -> Option<InfoHash> {
        None
    }
}

/// A session's torrents keyed by `HASH('req2', info_hash)`, kept up to date as torrents come and go, so
/// that an incoming handshake finds its torrent in one map lookup.
#[derive(Debug, Clone, Default)]
pub struct Req2Map(BTreeMap<[u8; 20], InfoHash>);

impl Req2Map {
    /// An empty map.
    pub fn new() -> Req2Map {
        Req2Map::default()
    }

    /// Adds a torrent.
    pub fn insert(&mut self, info_hash: InfoHash) {
        self.0.insert(req2_hash(&info_hash), info_hash);
    }

    /// Removes a torrent.
    pub fn remove(&mut self, info_hash: &InfoHash) {
        self.0.remove(&req2_hash(info_hash));
    }

    /// Number of torrents.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl SkeyLookup for Req2Map {
    fn find(&self, req2: &[u8; 20]) -> Option<InfoHash> {
        self.0.get(req2).copied()
    }
}

/// The outcome of a finished handshake.
#[derive(Debug)]
pub struct Established {
    /// The payload method that was selected.
    pub crypto: Crypto,
    /// The torrent of the connection (ours when dialling; the one the peer asked for when accepting).
    pub info_hash: InfoHash,
    /// The byte layer for the rest of the connection. Bytes of the read that finished the handshake past
    /// what [`Handshake::handle_read`] consumed, and every later read, go through it.
    pub transform: Transform,
}

#[derive(Debug)]
enum State {
    /// Reading the peer's 96-byte public key.
    PeerKey,
    /// B: searching for `HASH('req1', S)`; `searched` bytes of the buffer cannot start it.
    Req1Sync { searched: usize },
    /// B: obfuscated hash (20), VC (8), crypto_provide (4), len(PadC) (2).
    Provide,
    /// B: PadC and len(IA).
    PadC { len: usize, crypto: Crypto },
    /// A: searching for `ENCRYPT(VC)`.
    VcSync { searched: usize },
    /// A: crypto_select (4), len(PadD) (2).
    Select,
    /// A: PadD.
    PadD { len: usize, crypto: Crypto },
    /// Finished; the result waits in `established` until taken.
    Done,
    /// Failed; the error is sticky.
    Failed(MseError),
}

/// One MSE handshake, for either side of a connection.
///
/// Feed it every byte the peer sends, from the first, with [`Handshake::handle_read`]: it consumes only
/// handshake bytes and returns how many, so whatever follows in the same read belongs to the payload stream
/// and goes through the [`Established::transform`] (in place). After each input drain
/// [`Handshake::poll_transmit`] and send its bytes in order; they come before anything the transform
/// encrypts. Call [`Handshake::handle_eof`] when the peer closes and [`Handshake::handle_timeout`] at
/// [`Handshake::poll_timeout`].
#[derive(Debug)]
pub struct Handshake {
    outgoing: bool,
    /// Ours when dialling; found by the lookup when accepting.
    info_hash: Option<InfoHash>,
    /// Our initial payload (outgoing only).
    ia: Vec<u8>,
    /// crypto bits we offer (outgoing) or accept (incoming).
    allowed: u32,
    keys: KeyPair,
    secret: [u8; PUBLIC_KEY_LEN],
    /// Our PadA or PadB (random length, random bytes).
    pad: Vec<u8>,
    /// Length of our PadC or PadD (random; its bytes are zeros, sent encrypted).
    inner_pad_len: u16,
    /// What we encrypt with (keyA when dialling, keyB when accepting), once keyed.
    send: Option<Rc4Stream>,
    /// What we decrypt with.
    recv: Option<Rc4Stream>,
    /// The sync marker: `HASH('req1', S)` for B, `ENCRYPT(VC)` (first 8 bytes) for A.
    marker: [u8; 20],
    state: State,
    /// Bytes of the current step (at most a sync window or 514 bytes of pad).
    buf: Vec<u8>,
    /// Bytes received and consumed so far.
    received: usize,
    out: BytesMut,
    deadline: Instant,
    established: Option<Established>,
}

impl Handshake {
    /// Starts a handshake on a connection we dialled for `info_hash`, offering what `policy` allows
    /// (plaintext and RC4 for `prefer`, RC4 alone for `require`), carrying `ia` (normally our 68-byte
    /// BitTorrent handshake; libtorrent accepts at most 68) as the initial payload. Our public key and
    /// PadA are ready in [`Handshake::poll_transmit`] at once. Fails under [`Policy::Disable`].
    pub fn outgoing(
        now: Instant,
        rng: &mut CoreRng,
        info_hash: InfoHash,
        policy: Policy,
        ia: &[u8],
    ) -> Result<Handshake, MseError> {
        if ia.len() > usize::from(u16::MAX) {
            return Err(MseError::InitialPayloadTooLong(ia.len()));
        }
        let mut hs = Handshake::new(now, rng, true, policy.allowed_methods(), None)?;
        hs.info_hash = Some(info_hash);
        hs.ia = ia.to_vec();
        hs.out.extend_from_slice(hs.keys.public());
        hs.out.extend_from_slice(&hs.pad);
        Ok(hs)
    }

    /// Starts a handshake on an accepted connection whose first bytes [`super::detect`] found to be MSE.
    /// Nothing is sent until the peer's public key is in. Fails under [`Policy::Disable`].
    pub fn incoming(
        now: Instant,
        rng: &mut CoreRng,
        policy: Policy,
    ) -> Result<Handshake, MseError> {
        Handshake::new(now, rng, false, policy.allowed_methods(), None)
    }

    /// A dialling handshake with chosen crypto bits and pad lengths (PadA, PadC), for tests of odd peers
    /// and of the bounds.
    #[cfg(test)]
    pub(super) fn outgoing_custom(
        now: Instant,
        rng: &mut CoreRng,
        info_hash: InfoHash,
        allowed: u32,
        ia: &[u8],
        pads: (usize, u16),
    ) -> Handshake {
        let mut hs =
            Handshake::new(now, rng, true, allowed, Some(pads)).expect("tests allow something");
        hs.info_hash = Some(info_hash);
        hs.ia = ia.to_vec();
        hs.out.extend_from_slice(hs.keys.public());
        hs.out.extend_from_slice(&hs.pad);
        hs
    }

    /// An accepting handshake with chosen crypto bits and pad lengths (PadB, PadD).
    #[cfg(test)]
    pub(super) fn incoming_custom(
        now: Instant,
        rng: &mut CoreRng,
        allowed: u32,
        pads: (usize, u16),
    ) -> Handshake {
        Handshake::new(now, rng, false, allowed, Some(pads)).expect("tests allow something")
    }

    /// `pads`: fixed lengths of (our PadA/PadB, our PadC/PadD) instead of random ones.
    fn new(
        now: Instant,
        rng: &mut CoreRng,
        outgoing: bool,
        allowed: u32,
        pads: Option<(usize, u16)>,
    ) -> Result<Handshake, MseError> {
        if allowed == 0 {
            return Err(MseError::Disabled);
        }
        let keys = KeyPair::generate(rng);
        let (pad_len, inner_pad_len) = match pads {
            Some((outer, inner)) => (outer.min(MAX_PAD_LEN), inner.min(MAX_PAD_LEN as u16)),
            None => (
                rng.random_range(0..=MAX_PAD_LEN),
                rng.random_range(0..=MAX_PAD_LEN as u16),
            ),
        };
        let mut pad = vec![0u8; pad_len];
        rng.fill_bytes(&mut pad);
        Ok(Handshake {
            outgoing,
            info_hash: None,
            ia: Vec::new(),
            allowed,
            keys,
            secret: [0; PUBLIC_KEY_LEN],
            pad,
            inner_pad_len,
            send: None,
            recv: None,
            marker: [0; 20],
            state: State::PeerKey,
            buf: Vec::new(),
            received: 0,
            out: BytesMut::new(),
            deadline: now + DEFAULT_TIMEOUT,
            established: None,
        })
    }

    /// Moves the deadline (the default is [`DEFAULT_TIMEOUT`] after the start).
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// Whether we dialled.
    pub fn is_outgoing(&self) -> bool {
        self.outgoing
    }

    /// Where the handshake is.
    pub fn stage(&self) -> Stage {
        match &self.state {
            State::PeerKey => Stage::PublicKey,
            State::Req1Sync { .. } => Stage::Req1Sync,
            State::Provide => Stage::CryptoProvide,
            State::PadC { .. } => Stage::PadC,
            State::VcSync { .. } => Stage::VcSync,
            State::Select => Stage::CryptoSelect,
            State::PadD { .. } => Stage::PadD,
            State::Done | State::Failed(_) => Stage::Done,
        }
    }

    /// Bytes received from the peer and consumed by the handshake so far.
    pub fn received(&self) -> usize {
        self.received
    }

    /// Whether the handshake has finished (its result may already have been taken).
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The error the handshake failed with, if it did.
    pub fn error(&self) -> Option<&MseError> {
        match &self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// The result, once: the method, the torrent and the transform for the rest of the stream.
    pub fn take_established(&mut self) -> Option<Established> {
        self.established.take()
    }

    /// Bytes to send, in order (none while there is nothing new).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.split().freeze())
        }
    }

    /// When [`Handshake::handle_timeout`] should be called, while the handshake runs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Done | State::Failed(_) => None,
            _ => Some(self.deadline),
        }
    }

    /// Fails the handshake if its deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), MseError> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        if self.poll_timeout().is_some_and(|d| now >= d) {
            let e = MseError::Timeout {
                stage: self.stage(),
                received: self.received,
            };
            self.state = State::Failed(e.clone());
            return Err(e);
        }
        Ok(())
    }

    /// The peer closed the connection: the error that describes where the handshake stood.
    pub fn handle_eof(&mut self) -> MseError {
        if let State::Failed(e) = &self.state {
            return e.clone();
        }
        let e = MseError::Closed {
            stage: self.stage(),
            received: self.received,
        };
        self.state = State::Failed(e.clone());
        e
    }

    /// Feeds bytes the peer sent (in stream order, from its first byte). Returns how many of `data` the
    /// handshake consumed; once it is established the rest of `data` is payload for the transform.
    /// `skeys` finds the torrent of an incoming handshake (outgoing ones ignore it: pass [`NoSkeys`]).
    /// Errors are sticky.
    pub fn handle_read(
        &mut self,
        data: &[u8],
        skeys: &(impl SkeyLookup + ?Sized),
    ) -> Result<usize, MseError> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        let mut used = 0;
        while used < data.len() && !matches!(self.state, State::Done) {
            match self.advance(&data[used..], skeys) {
                Ok(n) => used += n,
                Err(e) => {
                    self.buf = Vec::new();
                    self.state = State::Failed(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(used)
    }

    /// Appends up to `want - buf.len()` bytes of `data`; returns (consumed, whether `want` is reached).
    fn fill(&mut self, data: &[u8], want: usize) -> (usize, bool) {
        let n = want.saturating_sub(self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        self.received += n;
        (n, self.buf.len() >= want)
    }

    /// Runs one step on `data` (non-empty); returns bytes consumed. Every call either consumes a byte or
    /// ends the handshake, so `handle_read` terminates.
    fn advance(
        &mut self,
        data: &[u8],
        skeys: &(impl SkeyLookup + ?Sized),
    ) -> Result<usize, MseError> {
        match self.state {
            State::PeerKey => {
                let (n, full) = self.fill(data, PUBLIC_KEY_LEN);
                // A plain-only peer that sends its BitTorrent handshake first (instead of hanging up on
                // our key) would otherwise keep us waiting for 96 bytes until the handshake timeout. A
                // real public key starts with these 20 bytes with probability 2^-160.
                if self.outgoing && self.buf.get(..PREFIX.len()) == Some(&PREFIX[..]) {
                    return Err(MseError::PlainAnswer);
                }
                if full {
                    let mut key = [0u8; PUBLIC_KEY_LEN];
                    key.copy_from_slice(&self.buf[..PUBLIC_KEY_LEN]);
                    self.buf.clear();
                    self.secret = self.keys.shared_secret(&key)?;
                    if self.outgoing {
                        self.send_step3();
                    } else {
                        self.out.extend_from_slice(self.keys.public());
                        self.out.extend_from_slice(&self.pad);
                        self.marker = hash(&[b"req1", &self.secret]);
                        self.state = State::Req1Sync { searched: 0 };
                    }
                }
                Ok(n)
            }
            State::Req1Sync { searched } => {
                let window = REQ1_SYNC_BOUND - PUBLIC_KEY_LEN;
                match self.sync(data, window, 20, searched) {
                    Some(Ok(n)) => {
                        self.state = State::Provide;
                        Ok(n)
                    }
                    Some(Err(searched)) => {
                        self.state = State::Req1Sync { searched };
                        Ok(data.len())
                    }
                    None => Err(MseError::Req1NotFound),
                }
            }
            State::VcSync { searched } => {
                let window = VC_SYNC_BOUND - PUBLIC_KEY_LEN;
                match self.sync(data, window, VC_LEN, searched) {
                    Some(Ok(n)) => {
                        self.state = State::Select;
                        Ok(n)
                    }
                    Some(Err(searched)) => {
                        self.state = State::VcSync { searched };
                        Ok(data.len())
                    }
                    None => Err(MseError::VcNotFound),
                }
            }
            State::Provide => {
                let (n, full) = self.fill(data, 20 + VC_LEN + 4 + 2);
                if full {
                    self.read_provide(skeys)?;
                }
                Ok(n)
            }
            State::PadC { len, crypto } => {
                let (n, full) = self.fill(data, len + 2);
                if full {
                    self.finish_incoming(len, crypto);
                }
                Ok(n)
            }
            State::Select => {
                let (n, full) = self.fill(data, 4 + 2);
                if full {
                    self.read_select()?;
                }
                Ok(n)
            }
            State::PadD { len, crypto } => {
                let (n, full) = self.fill(data, len);
                if full {
                    self.apply_recv_to_buf();
                    self.finish_outgoing(crypto);
                }
                Ok(n)
            }
            State::Done | State::Failed(_) => Ok(0),
        }
    }

    /// One synchronisation search step: appends `data` up to `window` buffered bytes and looks for the
    /// first `len` bytes of `marker` from `searched` on. `Some(Ok(n))`: found, `n` bytes of `data` were
    /// consumed (up to the marker's end; the rest is the next step's); `Some(Err(searched))`: not yet, all
    /// of `data` consumed; `None`: the window is full without the marker.
    fn sync(
        &mut self,
        data: &[u8],
        window: usize,
        len: usize,
        searched: usize,
    ) -> Option<Result<usize, usize>> {
        let old = self.buf.len();
        let take = window.saturating_sub(old).min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        let marker = &self.marker[..len];
        let found = self.buf[searched..]
            .windows(len)
            .position(|w| w == marker)
            .map(|i| searched + i + len);
        match found {
            Some(end) => {
                // The marker was not complete before this call, so it ends within this call's bytes.
                let n = end.saturating_sub(old);
                self.received += n;
                self.buf.clear();
                Some(Ok(n))
            }
            None => {
                self.received += take;
                if self.buf.len() >= window {
                    None
                } else {
                    Some(Err(self.buf.len().saturating_sub(len - 1)))
                }
            }
        }
    }

    fn apply_recv_to_buf(&mut self) {
        if let Some(rc4) = self.recv.as_mut() {
            rc4.apply(&mut self.buf);
        }
    }

    /// A, on the peer's key: step 3, and the marker `ENCRYPT(VC)` to look for.
    fn send_step3(&mut self) {
        let Some(info_hash) = self.info_hash else {
            return;
        };
        let mut send = Rc4Stream::new(b"keyA", &self.secret, &info_hash);
        let mut recv = Rc4Stream::new(b"keyB", &self.secret, &info_hash);
        self.out.extend_from_slice(&hash(&[b"req1", &self.secret]));
        let req2 = req2_hash(&info_hash);
        let req3 = hash(&[b"req3", &self.secret]);
        let mut obfuscated = [0u8; 20];
        for (o, (a, b)) in obfuscated.iter_mut().zip(req2.iter().zip(req3.iter())) {
            *o = a ^ b;
        }
        self.out.extend_from_slice(&obfuscated);
        let start = self.out.len();
        self.out.put_bytes(0, VC_LEN);
        self.out.put_u32(self.allowed);
        self.out.put_u16(self.inner_pad_len);
        self.out.put_bytes(0, usize::from(self.inner_pad_len));
        // The constructor checked that the initial payload fits in a u16.
        self.out
            .put_u16(u16::try_from(self.ia.len()).unwrap_or(u16::MAX));
        self.out.extend_from_slice(&self.ia);
        send.apply(&mut self.out[start..]);
        self.ia = Vec::new();
        self.marker = [0; 20];
        recv.apply(&mut self.marker[..VC_LEN]);
        self.send = Some(send);
        self.recv = Some(recv);
        self.state = State::VcSync { searched: 0 };
    }

    /// B, with the obfuscated hash, VC, crypto_provide and len(PadC) buffered.
    fn read_provide(&mut self, skeys: &(impl SkeyLookup + ?Sized)) -> Result<(), MseError> {
        let req3 = hash(&[b"req3", &self.secret]);
        let mut req2 = [0u8; 20];
        for (o, (a, b)) in req2.iter_mut().zip(self.buf[..20].iter().zip(req3.iter())) {
            *o = a ^ b;
        }
        let info_hash = skeys.find(&req2).ok_or(MseError::UnknownTorrent)?;
        let mut recv = Rc4Stream::new(b"keyA", &self.secret, &info_hash);
        let send = Rc4Stream::new(b"keyB", &self.secret, &info_hash);
        recv.apply(&mut self.buf[20..]);
        if self.buf[20..20 + VC_LEN].iter().any(|&b| b != 0) {
            return Err(MseError::BadVerificationConstant);
        }
        let provided = u32::from_be_bytes([self.buf[28], self.buf[29], self.buf[30], self.buf[31]]);
        let pad = u16::from_be_bytes([self.buf[32], self.buf[33]]);
        if usize::from(pad) > MAX_PAD_LEN {
            return Err(MseError::PadTooLong(pad));
        }
        let common = provided & self.allowed;
        let crypto = if common & CRYPTO_PLAINTEXT != 0 {
            Crypto::Plaintext
        } else if common & CRYPTO_RC4 != 0 {
            Crypto::Rc4
        } else {
            return Err(MseError::NoCommonMethod {
                provided,
                allowed: self.allowed,
            });
        };
        self.info_hash = Some(info_hash);
        self.send = Some(send);
        self.recv = Some(recv);
        self.buf.clear();
        self.state = State::PadC {
            len: usize::from(pad),
            crypto,
        };
        Ok(())
    }

    /// B, with PadC and len(IA) buffered: step 4 out, and the transform (which decrypts the initial
    /// payload even when the payload stream is plaintext).
    fn finish_incoming(&mut self, pad_len: usize, crypto: Crypto) {
        self.apply_recv_to_buf();
        let ia_len = usize::from(u16::from_be_bytes([
            self.buf[pad_len],
            self.buf[pad_len + 1],
        ]));
        self.buf = Vec::new();
        let start = self.out.len();
        self.out.put_bytes(0, VC_LEN);
        self.out.put_u32(crypto.bit());
        self.out.put_u16(self.inner_pad_len);
        self.out.put_bytes(0, usize::from(self.inner_pad_len));
        let mut send = self.send.take();
        if let Some(rc4) = send.as_mut() {
            rc4.apply(&mut self.out[start..]);
        }
        let recv = self.recv.take();
        let transform = match crypto {
            Crypto::Rc4 => Transform::new(send, recv, None),
            Crypto::Plaintext => Transform::new(None, recv, Some(ia_len)),
        };
        self.finish(crypto, transform);
    }

    /// A, with crypto_select and len(PadD) buffered.
    fn read_select(&mut self) -> Result<(), MseError> {
        self.apply_recv_to_buf();
        let selected = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let pad = u16::from_be_bytes([self.buf[4], self.buf[5]]);
        self.buf.clear();
        let crypto = match selected {
            CRYPTO_PLAINTEXT if self.allowed & CRYPTO_PLAINTEXT != 0 => Crypto::Plaintext,
            CRYPTO_RC4 if self.allowed & CRYPTO_RC4 != 0 => Crypto::Rc4,
            _ => {
                return Err(MseError::BadSelect {
                    selected,
                    offered: self.allowed,
                })
            }
        };
        if usize::from(pad) > MAX_PAD_LEN {
            return Err(MseError::PadTooLong(pad));
        }
        if pad == 0 {
            self.finish_outgoing(crypto);
        } else {
            self.state = State::PadD {
                len: usize::from(pad),
                crypto,
            };
        }
        Ok(())
    }

    fn finish_outgoing(&mut self, crypto: Crypto) {
        self.buf = Vec::new();
        let (send, recv) = (self.send.take(), self.recv.take());
        let transform = match crypto {
            Crypto::Rc4 => Transform::new(send, recv, None),
            Crypto::Plaintext => Transform::plain(),
        };
        self.finish(crypto, transform);
    }

    fn finish(&mut self, crypto: Crypto, transform: Transform) {
        self.state = State::Done;
        self.established = self.info_hash.map(|info_hash| Established {
            crypto,
            info_hash,
            transform,
        });
    }
}
