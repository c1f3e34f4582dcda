//! RC4 as MSE uses it (keys from `HASH('keyA'|'keyB', S, SKEY)`, first 1,024 keystream bytes dropped), and
//! the [`Transform`] that sits between the socket and the peer wire after the handshake.

use bytes::BytesMut;

use super::{hash, PUBLIC_KEY_LEN};
use crate::types::InfoHash;

/// Keystream bytes thrown away after keying, as the specification says (RC4's first bytes leak the key).
const DISCARD: usize = 1024;

/// RC4 (the key schedule and keystream generator as published), written for speed on the payload
/// path in safe Rust: the state is a `[u8; 256]` indexed by `u8`s (so no index needs a bounds check),
/// keystream is made 8 bytes at a time and XORed into the data a 64-bit word at a time, and the next
/// byte's `S[i + 1]` is loaded before this byte's swap is stored (RC4's one serial dependency is
/// `j += S[i]`; the early load takes a store-then-load off it, fixed up in the one case where the swap
/// wrote that very entry). Measured here at about 3 CPU cycles per byte (`cargo bench --bench mse`);
/// `tests::rc4_matches_the_rustcrypto_crate` checks it against the RustCrypto `rc4` crate over
/// arbitrary keys and chunkings.
#[derive(Clone)]
pub(crate) struct Rc4 {
    s: [u8; 256],
    /// Index of the last keystream byte made (RC4's `i`; the next one uses `i + 1`).
    i: u8,
    j: u8,
}

impl Rc4 {
    /// The RC4 state keyed with `key` (1 to 256 bytes; MSE keys are always 20).
    pub(crate) fn new(key: &[u8]) -> Rc4 {
        let mut s = [0u8; 256];
        for (k, v) in s.iter_mut().enumerate() {
            *v = k as u8;
        }
        if !key.is_empty() {
            let mut j = 0u8;
            for i in 0..256 {
                j = j.wrapping_add(s[i]).wrapping_add(key[i % key.len()]);
                s.swap(i, usize::from(j));
            }
        }
        Rc4 { s, i: 0, j: 0 }
    }

    /// One keystream byte (the plain form, for the tail of a buffer).
    #[inline(always)]
    fn next(s: &mut [u8; 256], i: &mut u8, j: &mut u8) -> u8 {
        *i = i.wrapping_add(1);
        let si = s[usize::from(*i)];
        *j = j.wrapping_add(si);
        let sj = s[usize::from(*j)];
        s[usize::from(*i)] = sj;
        s[usize::from(*j)] = si;
        s[usize::from(si.wrapping_add(sj))]
    }

    /// Eight keystream bytes, in stream order.
    #[inline(always)]
    fn next8(s: &mut [u8; 256], i: &mut u8, j: &mut u8) -> [u8; 8] {
        let mut k = [0u8; 8];
        let (mut ii, mut jj) = (i.wrapping_add(1), *j);
        let mut si = s[usize::from(ii)];
        for (n, kb) in k.iter_mut().enumerate() {
            jj = jj.wrapping_add(si);
            let sj = s[usize::from(jj)];
            let ni = ii.wrapping_add(1);
            // Loaded before the swap below is stored: right unless the swap wrote S[ni], which
            // happens only when ni == jj (ni is never ii), and then S[ni] is si.
            let early = s[usize::from(ni)];
            s[usize::from(jj)] = si;
            s[usize::from(ii)] = sj;
            *kb = s[usize::from(si.wrapping_add(sj))];
            if n < 7 {
                si = if ni == jj { si } else { early };
                ii = ni;
            }
        }
        *i = ii;
        *j = jj;
        k
    }

    /// XORs the next `buf.len()` keystream bytes into `buf`.
    pub(crate) fn apply(&mut self, buf: &mut [u8]) {
        let s = &mut self.s;
        let (mut i, mut j) = (self.i, self.j);
        let mut words = buf.chunks_exact_mut(8);
        for w in &mut words {
            let k = Self::next8(s, &mut i, &mut j);
            let mut d = [0u8; 8];
            d.copy_from_slice(w);
            let x = u64::from_ne_bytes(d) ^ u64::from_ne_bytes(k);
            w.copy_from_slice(&x.to_ne_bytes());
        }
        for b in words.into_remainder() {
            *b ^= Self::next(s, &mut i, &mut j);
        }
        self.i = i;
        self.j = j;
    }
}

/// One direction's RC4 keystream, already past the discarded bytes.
pub(super) struct Rc4Stream(Rc4);

impl std::fmt::Debug for Rc4Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rc4Stream")
    }
}

impl Rc4Stream {
    /// The keystream for `HASH(label, S, SKEY)` with its first 1,024 bytes dropped. `label` is `keyA` for
    /// what the dialling side sends, `keyB` for what the accepting side sends.
    pub(super) fn new(
        label: &[u8; 4],
        secret: &[u8; PUBLIC_KEY_LEN],
        skey: &InfoHash,
    ) -> Rc4Stream {
        let key = hash(&[label, secret, &skey.0]);
        let mut rc4 = Rc4::new(&key);
        let mut sink = [0u8; DISCARD];
        rc4.apply(&mut sink);
        Rc4Stream(rc4)
    }

    /// XORs the next `buf.len()` keystream bytes into `buf` (encrypts or decrypts in place).
    pub(super) fn apply(&mut self, buf: &mut [u8]) {
        self.0.apply(buf);
    }
}

/// The byte layer of an established connection: what comes off the socket goes through
/// [`Transform::decrypt_in_place`] before the peer wire decoder sees it, and what the peer session sends
/// goes through [`Transform::encrypt_into`] (or [`Transform::encrypt_in_place`]) on its way to the socket.
///
/// Plaintext connections (a plain BitTorrent handshake, or MSE with `crypto_select` = plaintext) pass
/// bytes through untouched; RC4 connections XOR the keystream in place, so the layer adds no copy beyond
/// the cipher's own pass. An accepted MSE connection whose payload is plaintext still decrypts its first
/// `len(IA)` bytes (the initial payload is always RC4); the transform does that and then drops the
/// keystream.
#[derive(Debug, Default)]
pub struct Transform {
    send: Option<Rc4Stream>,
    recv: Option<Rc4Stream>,
    /// `Some(n)`: only the next `n` received bytes are RC4 (the initial payload); `None`: all of them.
    recv_limit: Option<usize>,
}

impl Transform {
    /// The identity transform (a plain BitTorrent connection).
    pub fn plain() -> Transform {
        Transform::default()
    }

    pub(super) fn new(
        send: Option<Rc4Stream>,
        recv: Option<Rc4Stream>,
        recv_limit: Option<usize>,
    ) -> Transform {
        let mut t = Transform {
            send,
            recv,
            recv_limit,
        };
        if t.recv_limit == Some(0) {
            t.recv = None;
            t.recv_limit = None;
        }
        t
    }

    /// Whether the payload is RC4 in at least one direction from here on (false for plaintext, also while
    /// an initial payload is still being decrypted).
    pub fn is_encrypted(&self) -> bool {
        self.send.is_some() || (self.recv.is_some() && self.recv_limit.is_none())
    }

    /// Whether received bytes still need [`Transform::decrypt_in_place`] (false once nothing would change).
    pub fn decrypts(&self) -> bool {
        self.recv.is_some()
    }

    /// Whether sent bytes need [`Transform::encrypt_into`] (false for a plaintext payload).
    pub fn encrypts(&self) -> bool {
        self.send.is_some()
    }

    /// Decrypts bytes just read from the socket, in place, in stream order.
    pub fn decrypt_in_place(&mut self, buf: &mut [u8]) {
        let Some(rc4) = self.recv.as_mut() else {
            return;
        };
        match self.recv_limit {
            None => rc4.apply(buf),
            Some(left) => {
                let n = left.min(buf.len());
                rc4.apply(&mut buf[..n]);
                if n == left {
                    self.recv = None;
                    self.recv_limit = None;
                } else {
                    self.recv_limit = Some(left - n);
                }
            }
        }
    }

    /// Encrypts bytes about to be sent, in place, in stream order.
    pub fn encrypt_in_place(&mut self, buf: &mut [u8]) {
        if let Some(rc4) = self.send.as_mut() {
            rc4.apply(buf);
        }
    }

    /// Appends `data` to the send buffer `out`, encrypted (the append is the copy the send path makes
    /// anyway; the cipher then runs over the appended bytes while they are in cache).
    pub fn encrypt_into(&mut self, data: &[u8], out: &mut BytesMut) {
        let start = out.len();
        out.extend_from_slice(data);
        self.encrypt_in_place(&mut out[start..]);
    }
}
