//! The bencode encoder: canonical output (dictionary keys sorted as raw byte strings).

use std::collections::BTreeMap;

use super::{Kind, Value};

/// An owned bencode value, for building messages and `.torrent` files. Dictionaries are ordered maps
/// keyed by raw bytes, so encoding is canonical by construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedValue {
    /// A signed 64-bit integer.
    Int(i64),
    /// A byte string.
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<OwnedValue>),
    /// A dictionary; iteration (and encoding) order is the byte order of the keys.
    Dict(BTreeMap<Vec<u8>, OwnedValue>),
}

impl OwnedValue {
    /// An empty dictionary, to fill with [`OwnedValue::insert`].
    pub fn dict() -> Self {
        OwnedValue::Dict(BTreeMap::new())
    }

    /// Sets `key` to `value` if this is a dictionary (does nothing otherwise) and returns `self`, so that
    /// small messages can be built in one expression.
    pub fn with(mut self, key: impl AsRef<[u8]>, value: impl Into<OwnedValue>) -> Self {
        self.insert(key, value);
        self
    }

    /// Sets `key` to `value` if this is a dictionary; returns whether it was one.
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl Into<OwnedValue>) -> bool {
        match self {
            OwnedValue::Dict(map) => {
                map.insert(key.as_ref().to_vec(), value.into());
                true
            }
            _ => false,
        }
    }

    /// The canonical bencoding of this value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the canonical bencoding of this value to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            OwnedValue::Int(n) => encode_int(out, *n),
            OwnedValue::Bytes(b) => encode_bytes(out, b),
            OwnedValue::List(items) => {
                out.push(b'l');
                for item in items {
                    item.encode_into(out);
                }
                out.push(b'e');
            }
            OwnedValue::Dict(map) => {
                out.push(b'd');
                for (k, v) in map {
                    encode_bytes(out, k);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }
}

impl From<i64> for OwnedValue {
    fn from(n: i64) -> Self {
        OwnedValue::Int(n)
    }
}

impl From<&str> for OwnedValue {
    fn from(s: &str) -> Self {
        OwnedValue::Bytes(s.as_bytes().to_vec())
    }
}

impl From<String> for OwnedValue {
    fn from(s: String) -> Self {
        OwnedValue::Bytes(s.into_bytes())
    }
}

impl From<&[u8]> for OwnedValue {
    fn from(b: &[u8]) -> Self {
        OwnedValue::Bytes(b.to_vec())
    }
}

impl From<Vec<u8>> for OwnedValue {
    fn from(b: Vec<u8>) -> Self {
        OwnedValue::Bytes(b)
    }
}

impl From<Vec<OwnedValue>> for OwnedValue {
    fn from(items: Vec<OwnedValue>) -> Self {
        OwnedValue::List(items)
    }
}

impl From<BTreeMap<Vec<u8>, OwnedValue>> for OwnedValue {
    fn from(map: BTreeMap<Vec<u8>, OwnedValue>) -> Self {
        OwnedValue::Dict(map)
    }
}

/// Appends `i<n>e`.
pub fn encode_int(out: &mut Vec<u8>, n: i64) {
    out.push(b'i');
    out.extend_from_slice(n.to_string().as_bytes());
    out.push(b'e');
}

/// Appends `<len>:<bytes>`.
pub fn encode_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(bytes);
}

/// Appends the canonical encoding of a borrowed value (dictionary keys re-sorted).
pub(super) fn encode_borrowed(value: &Value<'_>, out: &mut Vec<u8>) {
    match value.kind() {
        Kind::Int(n) => encode_int(out, *n),
        Kind::Bytes(b) => encode_bytes(out, b),
        Kind::List(items) => {
            out.push(b'l');
            for item in items {
                encode_borrowed(item, out);
            }
            out.push(b'e');
        }
        Kind::Dict(entries) => {
            let mut sorted: Vec<&(&[u8], Value<'_>)> = entries.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'd');
            for (k, v) in sorted {
                encode_bytes(out, k);
                encode_borrowed(v, out);
            }
            out.push(b'e');
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{decode, decode_prefix};
    use super::*;

    #[test]
    fn encodes_canonically() {
        let v = OwnedValue::dict()
            .with("zeta", 1)
            .with("alpha", "x")
            .with(
                b"\xff".as_slice(),
                OwnedValue::List(vec![(-5).into(), "".into()]),
            )
            .with("Beta", OwnedValue::dict());
        assert_eq!(v.encode(), b"d4:Betade5:alpha1:x4:zetai1e1:\xffli-5e0:ee");
        assert!(!OwnedValue::Int(3).insert("k", 1));
        let mut out = Vec::new();
        encode_int(&mut out, i64::MIN);
        assert_eq!(out, b"i-9223372036854775808e");
    }

    fn arb_value() -> impl Strategy<Value = OwnedValue> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(OwnedValue::Int),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(OwnedValue::Bytes),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(OwnedValue::List),
                proptest::collection::btree_map(
                    proptest::collection::vec(any::<u8>(), 0..6),
                    inner,
                    0..6
                )
                .prop_map(OwnedValue::Dict),
            ]
        })
    }

    /// Every sub-value's raw span must re-encode to itself (the input is canonical).
    fn spans_match(v: &Value<'_>) -> bool {
        v.encode_canonical() == v.raw()
            && match v.kind() {
                Kind::List(items) => items.iter().all(spans_match),
                Kind::Dict(entries) => entries.iter().all(|(_, v)| spans_match(v)),
                _ => true,
            }
    }

    proptest! {
        #[test]
        fn decode_of_encode_is_identity(v in arb_value()) {
            let bytes = v.encode();
            let decoded = decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decoded.to_owned_value(), v);
        }

        #[test]
        fn encode_of_decode_is_identity_for_canonical_input(v in arb_value()) {
            let canonical = v.encode();
            let decoded = decode(&canonical).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decoded.raw(), &canonical[..]);
            prop_assert_eq!(decoded.to_owned_value().encode(), canonical.clone());
            prop_assert!(spans_match(&decoded));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
            if let Ok((v, used)) = decode_prefix(&bytes) {
                prop_assert!(used <= bytes.len());
                prop_assert_eq!(v.raw(), &bytes[..used]);
            }
        }

        #[test]
        fn mutated_encodings_never_panic(
            v in arb_value(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in any::<usize>(),
        ) {
            let mut bytes = v.encode();
            for (at, b) in edits {
                if !bytes.is_empty() {
                    let i = at % bytes.len();
                    bytes[i] = b;
                }
            }
            let cut = cut % (bytes.len() + 1);
            if let Ok(d) = decode(&bytes[..cut]) {
                prop_assert_eq!(d.raw().len(), cut);
            }
        }
    }
}
