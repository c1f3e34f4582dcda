//! Bencode (BEP 3): the serialization used by `.torrent` files, HTTP tracker replies and the extension
//! protocol.
//!
//! Decoding ([`decode`], [`decode_prefix`]) borrows from the input: byte strings are slices of it, and
//! every [`Value`] remembers the exact bytes it was decoded from ([`Value::raw`]) and where they start
//! ([`Value::offset`]). That is what makes the info-hash right: it is the SHA-1 of the `info` value's own
//! bytes, never of a re-encoding that might reorder keys or drop unknown ones.
//!
//! Encoding goes through [`OwnedValue`], whose dictionaries are `BTreeMap<Vec<u8>, _>` so that keys are
//! always written sorted as raw byte strings, which is the canonical form BEP 3 requires.
//!
//! ## Strictness
//! The decoder rejects everything that has more than one spelling (leading zeros, `-0`), anything that
//! does not fit (`i64` overflow, a length past the end of the input), non-string dictionary keys,
//! **duplicate** dictionary keys (two different readers of the same torrent could otherwise disagree on
//! its content), nesting deeper than [`DecodeOptions::max_depth`], and, for [`decode`], bytes after the
//! value. It **accepts** dictionary keys that are not in sorted order, because real-world torrents made
//! by sloppy tools have them and their info-hash is still well defined (it is taken over the raw bytes).
//!
//! Decoding never allocates in proportion to a length prefix: byte strings are borrowed, and containers
//! only grow by one entry per value actually parsed, so memory is bounded by the input's size.

mod decode;
mod encode;

pub use decode::{
    decode, decode_prefix, decode_prefix_with, decode_with, DecodeError, DecodeErrorKind,
    DecodeOptions, MAX_DEPTH_CAP,
};
pub use encode::{encode_bytes, encode_int, OwnedValue};

/// One decoded bencode value, borrowing from the input and carrying the span it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value<'a> {
    kind: Kind<'a>,
    raw: &'a [u8],
    offset: usize,
}

/// The four kinds of bencode value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<'a> {
    /// `i<n>e`: a signed 64-bit integer.
    Int(i64),
    /// `<len>:<bytes>`: a byte string (often, but not necessarily, UTF-8 text).
    Bytes(&'a [u8]),
    /// `l...e`: a list.
    List(Vec<Value<'a>>),
    /// `d...e`: a dictionary, as its (key, value) pairs in input order. Keys are unique (the decoder
    /// rejects duplicates) but not necessarily sorted.
    Dict(Vec<(&'a [u8], Value<'a>)>),
}

impl<'a> Value<'a> {
    /// Assembles a value from its parts; used by the decoder.
    pub(crate) fn new(kind: Kind<'a>, raw: &'a [u8], offset: usize) -> Self {
        Value { kind, raw, offset }
    }

    /// Which kind of value this is, with its content.
    pub fn kind(&self) -> &Kind<'a> {
        &self.kind
    }

    /// The exact bytes this value was decoded from (for the `info` dict: the bytes to hash and to serve
    /// as BEP 9 metadata).
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The byte offset of this value's first byte in the input given to the decoder, for error messages.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// A short English name of this value's kind ("integer", "byte string", "list", "dictionary"), for
    /// error messages that say what was found instead of what was expected.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Int(_) => "integer",
            Kind::Bytes(_) => "byte string",
            Kind::List(_) => "list",
            Kind::Dict(_) => "dictionary",
        }
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self.kind {
            Kind::Int(n) => Some(n),
            _ => None,
        }
    }

    /// The byte string, if this is one.
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self.kind {
            Kind::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The byte string as text, if this is a byte string holding valid UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The list's items, if this is a list.
    pub fn as_list(&self) -> Option<&[Value<'a>]> {
        match &self.kind {
            Kind::List(items) => Some(items),
            _ => None,
        }
    }

    /// The dictionary's (key, value) pairs in input order, if this is a dictionary.
    pub fn as_dict(&self) -> Option<&[(&'a [u8], Value<'a>)]> {
        match &self.kind {
            Kind::Dict(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value stored under `key`, if this is a dictionary that has it.
    pub fn get(&self, key: &[u8]) -> Option<&Value<'a>> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// A deep, owned copy (dictionary keys re-sorted), e.g. to keep or re-encode canonically.
    pub fn to_owned_value(&self) -> OwnedValue {
        match &self.kind {
            Kind::Int(n) => OwnedValue::Int(*n),
            Kind::Bytes(b) => OwnedValue::Bytes(b.to_vec()),
            Kind::List(items) => {
                OwnedValue::List(items.iter().map(Value::to_owned_value).collect())
            }
            Kind::Dict(entries) => OwnedValue::Dict(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_vec(), v.to_owned_value()))
                    .collect(),
            ),
        }
    }

    /// The canonical encoding of this value (keys sorted). Equal to [`Value::raw`] exactly when the input
    /// was canonical.
    pub fn encode_canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raw.len());
        encode::encode_borrowed(self, &mut out);
        out
    }
}
