//! Percent-encoding for URLs and magnet links, on top of the `percent-encoding` crate: one place for
//! the byte sets and for the strict decoding that refuses malformed escapes (the crate passes them
//! through unchanged, which suits lenient servers but not a parser that must reject bad input).

use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, CONTROLS, NON_ALPHANUMERIC};

/// Every byte but RFC 3986 "unreserved" characters (`A-Za-z0-9-._~`) is escaped: binary-safe, as
/// a tracker query's raw 20-byte info-hash and peer id need.
pub const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Like [`QUERY_VALUE`] but also keeps `:`, `/` and `@`, which are safe and usual in magnet values,
/// so trackers' URLs in a link stay readable.
pub const MAGNET_VALUE: &AsciiSet = &QUERY_VALUE.remove(b':').remove(b'/').remove(b'@');

/// Every byte that is not visible ASCII (controls, space, DEL, non-ASCII): what an HTTP request
/// target must not carry raw. Existing `%XX` escapes pass unchanged.
pub const REQUEST_TARGET: &AsciiSet = &CONTROLS.add(b' ');

/// Percent-encodes `bytes` escaping every byte in `set` as `%XX` (upper-case hex).
pub fn encode(bytes: &[u8], set: &'static AsciiSet) -> String {
    percent_encoding::percent_encode(bytes, set).to_string()
}

/// Percent-encodes a string (its UTF-8 bytes) escaping every byte in `set`.
pub fn encode_str(s: &str, set: &'static AsciiSet) -> String {
    utf8_percent_encode(s, set).to_string()
}

/// Decodes `%XX` escapes leniently: a `%` not followed by two hex digits stays as it is; with
/// `plus_is_space`, `+` is a space (HTML form encoding).
pub fn decode_lenient(s: &str, plus_is_space: bool) -> Vec<u8> {
    if plus_is_space && s.contains('+') {
        percent_decode(s.replace('+', " ").as_bytes()).collect()
    } else {
        percent_decode(s.as_bytes()).collect()
    }
}

/// Decodes `%XX` escapes, refusing (with the byte offset of the first bad `%`) any `%` that is not
/// followed by two hex digits; with `plus_is_space`, `+` is a space.
pub fn decode_strict(s: &str, plus_is_space: bool) -> Result<Vec<u8>, usize> {
    let b = s.as_bytes();
    if let Some(at) = b.iter().enumerate().position(|(i, c)| {
        *c == b'%'
            && !b
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    }) {
        return Err(at);
    }
    Ok(decode_lenient(s, plus_is_space))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strict_refuses_what_lenient_passes_through() {
        assert_eq!(decode_lenient("a%20b+c%ff", true), b"a b c\xff");
        assert_eq!(decode_lenient("a+b", false), b"a+b");
        assert_eq!(decode_lenient("%4", true), b"%4");
        assert_eq!(decode_lenient("%zz", true), b"%zz");
        assert_eq!(decode_strict("a%2Bb+c", true), Ok(b"a+b c".to_vec()));
        assert_eq!(decode_strict("x%4", false), Err(1));
        assert_eq!(decode_strict("%zz", false), Err(0));
        // A sign is not a hex digit (`from_str_radix` would have taken "+1").
        assert_eq!(decode_strict("%+1", false), Err(0));
        assert_eq!(decode_strict("ok%", false), Err(2));
    }

    #[test]
    fn the_sets_escape_what_they_say() {
        assert_eq!(
            encode(b"a-._~ /:@\x00\xff", QUERY_VALUE),
            "a-._~%20%2F%3A%40%00%FF"
        );
        assert_eq!(encode_str("a b/:@é", MAGNET_VALUE), "a%20b/:@%C3%A9");
    }

    proptest! {
        #[test]
        fn round_trips_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let e = encode(&bytes, QUERY_VALUE);
            prop_assert_eq!(decode_strict(&e, false), Ok(bytes.clone()));
            prop_assert_eq!(decode_strict(&e, true), Ok(bytes));
        }

        #[test]
        fn garbage_never_panics(s in ".{0,64}") {
            let _ = decode_strict(&s, true);
            let _ = decode_lenient(&s, true);
        }
    }
}
