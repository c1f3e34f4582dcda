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
//!   plaintext does not read a handshake carried as `IA`); under `prefer` a peer that closes or goes quiet before
//!   sending a whole public key (a client without MSE) is remembered and redialled at once with a plain
//!   handshake.
//! - **Established**: RC4 connections keep a [`Transform`]: received bytes are decrypted in place in
//!   the read buffer the driver handed over, sent bytes are encrypted into the send buffer. Plaintext
//!   connections (plain handshake, or MSE with `crypto_select` = plaintext) have no layer at all after
//!   the handshake, so they cost exactly what a plain connection costs.
//!
//! The session's own handshake timeout (30 s from the dial) bounds an MSE handshake in time, and the
//! handshake's synchronisation bounds bound it in bytes. The hooks in `mod.rs` and `flow.rs` are one
//! line each; everything else is here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};

use crate::mse::{self, Crypto, Detection, Handshake, MseError, NoSkeys, Policy, Stage, Transform};
use crate::time::Instant;
use crate::types::InfoHash;

use super::io::ConnId;
use super::Engine;

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
    /// An RC4 stream (boxed: two RC4 states are half a kilobyte).
    Stream(Box<Transform>),
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
            Some(Layer::Stream(t)) if t.encrypts() => match data.try_into_mut() {
                Ok(mut own) => {
                    t.encrypt_in_place(&mut own);
                    own.freeze()
                }
                Err(shared) => {
                    let mut out = BytesMut::with_capacity(shared.len());
                    t.encrypt_into(&shared, &mut out);
                    out.freeze()
                }
            },
            _ => data,
        }
    }
}

/// What the read hook tells the engine.
pub(super) enum ReadOutcome {
    /// Hand these bytes to the session (possibly empty).
    Payload(BytesMut),
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
            return ReadOutcome::Payload(data);
        };
        match layer {
            Layer::Stream(t) => {
                t.decrypt_in_place(&mut data);
                if !t.decrypts() && !t.encrypts() {
                    self.mse.layers.remove(&id);
                }
                ReadOutcome::Payload(data)
            }
            Layer::Detect(first) => {
                first.extend_from_slice(&data);
                match mse::detect(first) {
                    Detection::NeedMore => ReadOutcome::Nothing,
                    Detection::Plain if self.mse.policy.accepts(Detection::Plain) => {
                        let first = std::mem::take(first);
                        self.mse.layers.remove(&id);
                        ReadOutcome::Payload(first)
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
        if transform.decrypts() || transform.encrypts() {
            self.mse
                .layers
                .insert(id, Layer::Stream(Box::new(transform)));
        }
        ReadOutcome::Payload(data)
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
