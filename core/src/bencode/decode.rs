//! The bencode decoder: nom parsers for the scalar tokens, an explicit stack for nesting.
//!
//! Containers are handled with a heap-allocated stack of open lists/dicts instead of recursion, so parsing
//! itself does not use the thread's stack. Dropping (and comparing, printing, encoding) a decoded value is
//! recursive, though, so the depth limit is clamped to [`MAX_DEPTH_CAP`].

use nom::bytes::complete::{tag, take};
use nom::character::complete::{digit0, digit1};
use nom::combinator::opt;
use nom::IResult;

use super::{Kind, Value};

/// The hard ceiling on [`DecodeOptions::max_depth`]: deeper values would risk overflowing the stack when
/// they are dropped or walked recursively.
pub const MAX_DEPTH_CAP: usize = 1024;

/// Tunables for the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// The most lists/dicts that may be open at once. A `.torrent` needs about 5; the default, 64, leaves
    /// room for anything legitimate while refusing `llllll...` bombs early. Values above
    /// [`MAX_DEPTH_CAP`] are treated as [`MAX_DEPTH_CAP`].
    pub max_depth: usize,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions { max_depth: 64 }
    }
}

/// What went wrong while decoding, without the position (see [`DecodeError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    /// The input stopped in the middle of a value.
    #[error("unexpected end of input")]
    UnexpectedEof,
    /// A byte that cannot start or continue a value here.
    #[error("unexpected byte 0x{0:02x}")]
    UnexpectedByte(u8),
    /// `i03e` or `03:abc`: numbers have exactly one spelling.
    #[error("number with a leading zero")]
    LeadingZero,
    /// `i-0e`.
    #[error("negative zero")]
    NegativeZero,
    /// `ie` or `i-e`.
    #[error("integer without digits")]
    EmptyInteger,
    /// An integer outside the `i64` range.
    #[error("integer does not fit in 64 bits")]
    IntegerOverflow,
    /// A byte-string length prefix too large to be a length at all.
    #[error("byte-string length prefix does not fit in memory size")]
    LengthOverflow,
    /// A byte-string length prefix that points past the end of the input.
    #[error("byte string of length {len} runs past the end of input ({available} bytes left)")]
    StringPastEnd {
        /// The declared length.
        len: usize,
        /// How many bytes actually followed the `:`.
        available: usize,
    },
    /// A dictionary key that is an integer, list or dict.
    #[error("dictionary key is not a byte string")]
    NonStringKey,
    /// A dictionary that ends right after a key.
    #[error("dictionary key without a value")]
    KeyWithoutValue,
    /// The same key twice in one dictionary.
    #[error("duplicate dictionary key {0:?}")]
    DuplicateKey(String),
    /// More nested lists/dicts than [`DecodeOptions::max_depth`].
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
    /// Bytes after a complete top-level value.
    #[error("trailing bytes after the top-level value")]
    TrailingBytes,
}

/// A decoding failure and the byte offset (from the start of the input) where it was detected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid bencode at byte offset {offset}: {kind}")]
pub struct DecodeError {
    /// Offset of the offending byte (or of the start of the offending token).
    pub offset: usize,
    /// What was wrong.
    pub kind: DecodeErrorKind,
}

/// The nom error type of the token parsers: the remaining input where the problem is, and what it is.
#[derive(Debug)]
struct TokenError<'a> {
    at: &'a [u8],
    kind: DecodeErrorKind,
}

impl<'a> TokenError<'a> {
    fn new(at: &'a [u8], kind: DecodeErrorKind) -> nom::Err<Self> {
        nom::Err::Error(TokenError { at, kind })
    }
}

impl<'a> nom::error::ParseError<&'a [u8]> for TokenError<'a> {
    fn from_error_kind(input: &'a [u8], _kind: nom::error::ErrorKind) -> Self {
        let kind = match input.first() {
            None => DecodeErrorKind::UnexpectedEof,
            Some(&b) => DecodeErrorKind::UnexpectedByte(b),
        };
        TokenError { at: input, kind }
    }

    fn append(_input: &'a [u8], _kind: nom::error::ErrorKind, other: Self) -> Self {
        other
    }
}

type TResult<'a, T> = IResult<&'a [u8], T, TokenError<'a>>;

/// `i<digits>e` (the caller has seen the `i`).
fn integer(input: &[u8]) -> TResult<'_, i64> {
    let (rest, _) = tag(b"i")(input)?;
    let (rest, minus) = opt(tag(b"-"))(rest)?;
    let (after, digits) = digit0(rest)?;
    match digits {
        [] => {
            return Err(if rest.is_empty() {
                TokenError::new(rest, DecodeErrorKind::UnexpectedEof)
            } else {
                TokenError::new(rest, DecodeErrorKind::EmptyInteger)
            })
        }
        [b'0'] if minus.is_some() => {
            return Err(TokenError::new(rest, DecodeErrorKind::NegativeZero))
        }
        [b'0', _, ..] => return Err(TokenError::new(rest, DecodeErrorKind::LeadingZero)),
        _ => {}
    }
    // Accumulate towards the sign so that i64::MIN (whose magnitude is not an i64) still parses.
    let mut n: i64 = 0;
    for &d in digits {
        let d = i64::from(d - b'0');
        n = n
            .checked_mul(10)
            .and_then(|n| {
                if minus.is_some() {
                    n.checked_sub(d)
                } else {
                    n.checked_add(d)
                }
            })
            .ok_or_else(|| TokenError::new(rest, DecodeErrorKind::IntegerOverflow))?;
    }
    let (after, _) = tag(b"e")(after)?;
    Ok((after, n))
}

/// `<len>:<bytes>`; the length is checked against the input before anything is taken.
fn byte_string(input: &[u8]) -> TResult<'_, &[u8]> {
    let (rest, digits) = digit1(input)?;
    if digits.len() > 1 && digits.first() == Some(&b'0') {
        return Err(TokenError::new(input, DecodeErrorKind::LeadingZero));
    }
    let mut len: usize = 0;
    for &d in digits {
        len = len
            .checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(d - b'0')))
            .ok_or_else(|| TokenError::new(input, DecodeErrorKind::LengthOverflow))?;
    }
    let (rest, _) = tag(b":")(rest)?;
    if len > rest.len() {
        return Err(TokenError::new(
            input,
            DecodeErrorKind::StringPastEnd {
                len,
                available: rest.len(),
            },
        ));
    }
    let (rest, bytes) = take(len)(rest)?;
    Ok((rest, bytes))
}

/// An open container on the decoder's stack. Its children so far are the tail of a scratch vector
/// shared by all open containers, starting at `base`; on close they are moved into one exactly-sized
/// `Vec`, so a container costs one allocation instead of a series of regrowths.
enum Frame<'a> {
    List {
        start: usize,
        base: usize,
    },
    Dict {
        start: usize,
        base: usize,
        /// A key that has been read and waits for its value.
        pending: Option<&'a [u8]>,
        /// Whether every key so far was strictly greater than the previous one; if so, duplicates are
        /// impossible and the final duplicate check can be skipped.
        sorted: bool,
    },
}

/// Decodes exactly one value that must span the whole input (default options).
pub fn decode(input: &[u8]) -> Result<Value<'_>, DecodeError> {
    decode_with(input, DecodeOptions::default())
}

/// Decodes exactly one value that must span the whole input.
pub fn decode_with(input: &[u8], options: DecodeOptions) -> Result<Value<'_>, DecodeError> {
    let (value, used) = decode_prefix_with(input, options)?;
    if used != input.len() {
        return Err(DecodeError {
            offset: used,
            kind: DecodeErrorKind::TrailingBytes,
        });
    }
    Ok(value)
}

/// Decodes one value from the start of the input and returns it with the number of bytes it used; the
/// rest is left to the caller (BEP 9 `ut_metadata` data messages put raw bytes after a dictionary).
pub fn decode_prefix(input: &[u8]) -> Result<(Value<'_>, usize), DecodeError> {
    decode_prefix_with(input, DecodeOptions::default())
}

fn err_at(input: &[u8], at: &[u8], kind: DecodeErrorKind) -> DecodeError {
    DecodeError {
        offset: input.len() - at.len(),
        kind,
    }
}

fn token_err(input: &[u8], e: nom::Err<TokenError<'_>>) -> DecodeError {
    match e {
        nom::Err::Error(t) | nom::Err::Failure(t) => err_at(input, t.at, t.kind),
        // Complete parsers never report Incomplete; treat it as running out of input all the same.
        nom::Err::Incomplete(_) => DecodeError {
            offset: input.len(),
            kind: DecodeErrorKind::UnexpectedEof,
        },
    }
}

/// Checks a finished dictionary for duplicate keys (only needed when keys were not strictly sorted).
fn check_duplicates(start: usize, entries: &[(&[u8], Value<'_>)]) -> Result<(), DecodeError> {
    let mut keys: Vec<&[u8]> = entries.iter().map(|(k, _)| *k).collect();
    keys.sort_unstable();
    if let Some(pair) = keys.windows(2).find(|w| w[0] == w[1]) {
        let dup = pair[0];
        // Point at the second occurrence's value, the place a reader would notice it.
        let offset = entries
            .iter()
            .filter(|(k, _)| *k == dup)
            .nth(1)
            .map_or(start, |(_, v)| v.offset());
        return Err(DecodeError {
            offset,
            kind: DecodeErrorKind::DuplicateKey(String::from_utf8_lossy(dup).into_owned()),
        });
    }
    Ok(())
}

/// Like [`decode_prefix`] with explicit options.
pub fn decode_prefix_with(
    input: &[u8],
    options: DecodeOptions,
) -> Result<(Value<'_>, usize), DecodeError> {
    let max_depth = options.max_depth.min(MAX_DEPTH_CAP);
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut items: Vec<Value<'_>> = Vec::new();
    let mut entries: Vec<(&[u8], Value<'_>)> = Vec::new();
    let mut rest: &[u8] = input;
    loop {
        let pos = input.len() - rest.len();
        let Some((&first, tail)) = rest.split_first() else {
            return Err(err_at(input, rest, DecodeErrorKind::UnexpectedEof));
        };

        // Inside a dict waiting for a key: either the end of the dict or a byte-string key.
        if let Some(Frame::Dict {
            base,
            pending: pending @ None,
            sorted,
            ..
        }) = stack.last_mut()
        {
            if first != b'e' {
                if !first.is_ascii_digit() {
                    return Err(err_at(input, rest, DecodeErrorKind::NonStringKey));
                }
                let (after, key) = byte_string(rest).map_err(|e| token_err(input, e))?;
                if let Some((prev, _)) = entries.last().filter(|_| entries.len() > *base) {
                    if *prev == key {
                        return Err(err_at(
                            input,
                            rest,
                            DecodeErrorKind::DuplicateKey(
                                String::from_utf8_lossy(key).into_owned(),
                            ),
                        ));
                    }
                    if *prev > key {
                        *sorted = false;
                    }
                }
                *pending = Some(key);
                rest = after;
                continue;
            }
        }

        let value = match first {
            b'e' => {
                let after = tail;
                let end = input.len() - after.len();
                match stack.pop() {
                    None => return Err(err_at(input, rest, DecodeErrorKind::UnexpectedByte(b'e'))),
                    Some(Frame::List { start, base }) => {
                        rest = after;
                        let children = items.drain(base..).collect();
                        Value::new(Kind::List(children), &input[start..end], start)
                    }
                    Some(Frame::Dict {
                        pending: Some(_), ..
                    }) => return Err(err_at(input, rest, DecodeErrorKind::KeyWithoutValue)),
                    Some(Frame::Dict {
                        start,
                        base,
                        sorted,
                        pending: None,
                    }) => {
                        let children: Vec<_> = entries.drain(base..).collect();
                        if !sorted {
                            check_duplicates(start, &children)?;
                        }
                        rest = after;
                        Value::new(Kind::Dict(children), &input[start..end], start)
                    }
                }
            }
            b'l' | b'd' => {
                if stack.len() >= max_depth {
                    return Err(err_at(input, rest, DecodeErrorKind::TooDeep(max_depth)));
                }
                stack.push(if first == b'l' {
                    Frame::List {
                        start: pos,
                        base: items.len(),
                    }
                } else {
                    Frame::Dict {
                        start: pos,
                        base: entries.len(),
                        pending: None,
                        sorted: true,
                    }
                });
                rest = tail;
                continue;
            }
            b'i' => {
                let (after, n) = integer(rest).map_err(|e| token_err(input, e))?;
                let end = input.len() - after.len();
                rest = after;
                Value::new(Kind::Int(n), &input[pos..end], pos)
            }
            b'0'..=b'9' => {
                let (after, bytes) = byte_string(rest).map_err(|e| token_err(input, e))?;
                let end = input.len() - after.len();
                rest = after;
                Value::new(Kind::Bytes(bytes), &input[pos..end], pos)
            }
            other => return Err(err_at(input, rest, DecodeErrorKind::UnexpectedByte(other))),
        };

        // A value is complete: hand it to its parent, or finish.
        match stack.last_mut() {
            None => return Ok((value, input.len() - rest.len())),
            Some(Frame::List { .. }) => items.push(value),
            Some(Frame::Dict { pending, .. }) => match pending.take() {
                Some(key) => entries.push((key, value)),
                // Unreachable by construction (keys are read above), but never panic on input.
                None => return Err(err_at(input, rest, DecodeErrorKind::NonStringKey)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_at(input: &[u8]) -> (usize, DecodeErrorKind) {
        let e = decode(input).expect_err("input should be rejected");
        (e.offset, e.kind)
    }

    #[test]
    fn scalars() {
        assert_eq!(decode(b"i42e").unwrap().as_int(), Some(42));
        assert_eq!(decode(b"i-42e").unwrap().as_int(), Some(-42));
        assert_eq!(decode(b"i0e").unwrap().as_int(), Some(0));
        assert_eq!(
            decode(b"i9223372036854775807e").unwrap().as_int(),
            Some(i64::MAX)
        );
        assert_eq!(
            decode(b"i-9223372036854775808e").unwrap().as_int(),
            Some(i64::MIN)
        );
        assert_eq!(decode(b"4:spam").unwrap().as_bytes(), Some(&b"spam"[..]));
        assert_eq!(decode(b"0:").unwrap().as_bytes(), Some(&b""[..]));
        assert_eq!(decode(b"3:\xff\x00a").unwrap().as_str(), None);
    }

    #[test]
    fn containers_and_spans() {
        let input = b"d3:cowl3:mooi7ee4:spam4:eggse";
        let v = decode(input).unwrap();
        assert_eq!(v.raw(), &input[..]);
        let cow = v.get(b"cow").unwrap();
        assert_eq!(cow.raw(), b"l3:mooi7ee");
        assert_eq!(cow.offset(), 6);
        let list = cow.as_list().unwrap();
        assert_eq!(list[0].as_str(), Some("moo"));
        assert_eq!(list[1].as_int(), Some(7));
        assert_eq!(list[1].raw(), b"i7e");
        assert_eq!(v.get(b"spam").unwrap().as_str(), Some("eggs"));
        assert!(v.get(b"nope").is_none());
        assert!(decode(b"le").unwrap().as_list().unwrap().is_empty());
        assert!(decode(b"de").unwrap().as_dict().unwrap().is_empty());
    }

    #[test]
    fn unsorted_keys_are_accepted_and_kept_in_input_order() {
        let input = b"d1:bi1e1:ai2ee";
        let v = decode(input).unwrap();
        let keys: Vec<&[u8]> = v.as_dict().unwrap().iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, vec![&b"b"[..], &b"a"[..]]);
        assert_eq!(v.raw(), &input[..]);
        assert_eq!(v.encode_canonical(), b"d1:ai2e1:bi1ee");
    }

    #[test]
    fn integer_errors_name_offsets() {
        assert_eq!(kind_at(b"i03e"), (1, DecodeErrorKind::LeadingZero));
        assert_eq!(kind_at(b"i-0e"), (2, DecodeErrorKind::NegativeZero));
        assert_eq!(kind_at(b"i-e"), (2, DecodeErrorKind::EmptyInteger));
        assert_eq!(kind_at(b"ie"), (1, DecodeErrorKind::EmptyInteger));
        assert_eq!(kind_at(b"i"), (1, DecodeErrorKind::UnexpectedEof));
        assert_eq!(kind_at(b"i12"), (3, DecodeErrorKind::UnexpectedEof));
        assert_eq!(kind_at(b"i12x"), (3, DecodeErrorKind::UnexpectedByte(b'x')));
        assert_eq!(
            kind_at(b"i9223372036854775808e"),
            (1, DecodeErrorKind::IntegerOverflow)
        );
        assert_eq!(
            kind_at(b"i-9223372036854775809e"),
            (2, DecodeErrorKind::IntegerOverflow)
        );
        assert_eq!(kind_at(b"i+1e"), (1, DecodeErrorKind::EmptyInteger));
    }

    #[test]
    fn string_errors_name_offsets() {
        assert_eq!(kind_at(b"03:abc"), (0, DecodeErrorKind::LeadingZero));
        assert_eq!(
            kind_at(b"l999999999:0123456789e"),
            (
                1,
                DecodeErrorKind::StringPastEnd {
                    len: 999_999_999,
                    available: 11
                }
            )
        );
        assert_eq!(
            kind_at(b"99999999999999999999999999:x"),
            (0, DecodeErrorKind::LengthOverflow)
        );
        assert_eq!(kind_at(b"4"), (1, DecodeErrorKind::UnexpectedEof));
        assert_eq!(kind_at(b"4x"), (1, DecodeErrorKind::UnexpectedByte(b'x')));
    }

    #[test]
    fn structure_errors_name_offsets() {
        assert_eq!(kind_at(b""), (0, DecodeErrorKind::UnexpectedEof));
        assert_eq!(kind_at(b"l"), (1, DecodeErrorKind::UnexpectedEof));
        assert_eq!(kind_at(b"li1e"), (4, DecodeErrorKind::UnexpectedEof));
        assert_eq!(kind_at(b"e"), (0, DecodeErrorKind::UnexpectedByte(b'e')));
        assert_eq!(kind_at(b"x"), (0, DecodeErrorKind::UnexpectedByte(b'x')));
        assert_eq!(kind_at(b"di1ei2ee"), (1, DecodeErrorKind::NonStringKey));
        assert_eq!(kind_at(b"dlei2ee"), (1, DecodeErrorKind::NonStringKey));
        assert_eq!(kind_at(b"d1:ae"), (4, DecodeErrorKind::KeyWithoutValue));
        assert_eq!(kind_at(b"i1ei2e"), (3, DecodeErrorKind::TrailingBytes));
        assert_eq!(kind_at(b"dei"), (2, DecodeErrorKind::TrailingBytes));
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        assert_eq!(
            kind_at(b"d1:ai1e1:ai2ee"),
            (7, DecodeErrorKind::DuplicateKey("a".into()))
        );
        // Not adjacent: found by the check at the end of an unsorted dict, pointing at the second value.
        assert_eq!(
            kind_at(b"d1:bi1e1:ai2e1:bi3ee"),
            (16, DecodeErrorKind::DuplicateKey("b".into()))
        );
    }

    #[test]
    fn depth_limit() {
        let mut deep = vec![b'l'; 64];
        deep.extend(vec![b'e'; 64]);
        assert!(decode(&deep).is_ok());
        let mut too_deep = vec![b'l'; 65];
        too_deep.extend(vec![b'e'; 65]);
        assert_eq!(kind_at(&too_deep), (64, DecodeErrorKind::TooDeep(64)));
        let opts = DecodeOptions { max_depth: 2 };
        assert!(decode_with(b"lleee", opts).is_err());
        assert!(decode_with(b"llee", opts).is_ok());
        // A huge configured limit is clamped, so nesting can never grow deep enough to overflow the stack.
        let mut very_deep = vec![b'l'; 200_000];
        very_deep.extend(vec![b'e'; 200_000]);
        let unlimited = DecodeOptions {
            max_depth: usize::MAX,
        };
        assert_eq!(
            decode_with(&very_deep, unlimited).unwrap_err().kind,
            DecodeErrorKind::TooDeep(MAX_DEPTH_CAP)
        );
        let mut at_cap = vec![b'l'; MAX_DEPTH_CAP];
        at_cap.extend(vec![b'e'; MAX_DEPTH_CAP]);
        assert!(decode_with(&at_cap, unlimited).is_ok());
    }

    #[test]
    fn prefix_leaves_the_rest() {
        let input = b"d8:msg_typei1e5:piecei0eeRAWDATA";
        let (v, used) = decode_prefix(input).unwrap();
        assert_eq!(&input[used..], b"RAWDATA");
        assert_eq!(v.get(b"msg_type").and_then(Value::as_int), Some(1));
    }

    #[test]
    fn error_message_names_offset() {
        let e = decode(b"i03e").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid bencode at byte offset 1: number with a leading zero"
        );
    }
}
