//! The HTTP/1.1 side of a web seed: ranged `GET` requests on a keep-alive connection, and an
//! incremental response parser that hands body bytes out as slices of what was read (no copy).
//!
//! - [`request`] builds one ranged `GET`.
//! - [`ResponseParser`] reads one response at a time from bytes in any chunking: the head (status,
//!   headers, capped in size), then the body framed by `Content-Length`, by `Transfer-Encoding:
//!   chunked` (chunk sizes, extensions and trailers, each bounded), or by the end of the connection.
//!   Interim `1xx` answers are skipped. It never buffers body bytes: [`Parsed::Body`] is a slice of
//!   the input.
//! - [`RangeClient`] is one connection's exchange: it sends a request, checks the answer against it
//!   with [`super::classify`] (status, `Content-Range`, `Content-Length`), streams the body out, and
//!   says whether the connection may carry the next request. Every stall longer than the idle
//!   timeout is an error, so a slow or silent server cannot hold a request for ever.

use std::ops::Range;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use super::{classify, FileRange, Verdict, WebSeedError};
use crate::time::Instant;
use crate::tracker::http::TrackerUrl;
use crate::tracker::http_client::USER_AGENT;

/// Largest response head (status line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Most header lines in a head.
const MAX_HEADERS: usize = 48;

/// Longest chunk-size line (size and extensions) or trailer section accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 1024;

/// Builds a ranged `GET` for bytes `range` (non-empty) of the file at `url`.
pub fn request(url: &TrackerUrl, range: &Range<u64>) -> Bytes {
    Bytes::from(format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {USER_AGENT}\r\nRange: bytes={}-{}\r\n\
         Accept-Encoding: identity\r\nConnection: keep-alive\r\n\r\n",
        url.target(),
        url.host_header(),
        range.start,
        range.end.saturating_sub(1),
    ))
}

/// Why a response could not be read. Every error is final for the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HttpError {
    /// The status line or headers are not HTTP/1.x.
    #[error("malformed HTTP response head: {0}")]
    MalformedHead(String),
    /// The head did not end within [`MAX_HEAD_BYTES`].
    #[error("HTTP response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// A `Content-Length` that is not a number, or several that disagree.
    #[error("invalid Content-Length header {0:?}")]
    InvalidContentLength(String),
    /// A transfer coding other than `chunked`, or a content coding other than `identity`.
    #[error("unsupported encoding {0:?}")]
    UnsupportedEncoding(String),
    /// A malformed chunk-size line or chunk terminator.
    #[error("invalid chunked encoding: {0}")]
    InvalidChunk(&'static str),
    /// The connection closed before the head was complete.
    #[error("connection closed before the end of the HTTP response head")]
    ClosedDuringHead,
    /// The connection closed before any byte of the answer (a server closing an idle keep-alive
    /// connection as the request went out: worth one retry on a new connection).
    #[error("connection closed before the server answered")]
    ClosedBeforeAnswer,
    /// The connection closed before the body was complete.
    #[error("connection closed after {received} of {expected} body bytes")]
    Truncated {
        /// Body bytes announced (or asked for).
        expected: u64,
        /// Body bytes received.
        received: u64,
    },
    /// The body was longer than announced or than the range asked for.
    #[error("HTTP body longer than the {expected} bytes asked for")]
    TooLong {
        /// Body bytes expected.
        expected: u64,
    },
    /// `Content-Length` disagrees with the range asked for.
    #[error("Content-Length {got} for a range of {expected} bytes")]
    LengthMismatch {
        /// The length announced.
        got: u64,
        /// The range's length.
        expected: u64,
    },
    /// Bytes arrived that belong to no request.
    #[error("server sent {0} bytes nobody asked for")]
    Unsolicited(usize),
    /// Nothing arrived for this long while an answer was awaited.
    #[error("no data from the server for {0:?}")]
    Timeout(Duration),
    /// The answer is HTTP, but not one we can use (see [`WebSeedError`]).
    #[error(transparent)]
    Refused(#[from] WebSeedError),
}

/// A response's status line and the headers a range client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// Headers (name, value), in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Whether the connection stays open after this response.
    pub keep_alive: bool,
    /// Framing of the body.
    pub framing: BodyFraming,
}

impl Head {
    /// The first value of a header (name compared without case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (e.g. `204`, `304`).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes.
    Close,
}

/// One step of parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The head of a (final, non-1xx) response.
    Head(Head),
    /// Body bytes (a slice of the input).
    Body(Bytes),
    /// The response is complete; the next bytes are the next response's.
    End,
}

#[derive(Debug)]
enum Chunk {
    /// Reading a size line (bytes so far counted in `len`; the value in `size`).
    Size {
        size: u64,
        digits: u32,
        ext: bool,
        len: usize,
        cr: bool,
    },
    /// Chunk data still to come.
    Data(u64),
    /// The CRLF after chunk data.
    DataEnd { cr: bool },
    /// Trailer lines until an empty one.
    Trailer { line: usize, total: usize, cr: bool },
}

#[derive(Debug)]
enum PState {
    Head(BytesMut),
    Length(u64),
    Close,
    Chunked(Chunk),
}

/// Incremental reader of HTTP/1.x responses on one connection. See the module documentation.
#[derive(Debug)]
pub struct ResponseParser {
    state: PState,
}

impl Default for ResponseParser {
    fn default() -> Self {
        ResponseParser {
            state: PState::Head(BytesMut::new()),
        }
    }
}

fn size_chunk() -> Chunk {
    Chunk::Size {
        size: 0,
        digits: 0,
        ext: false,
        len: 0,
        cr: false,
    }
}

impl ResponseParser {
    /// A parser waiting for a response head.
    pub fn new() -> ResponseParser {
        ResponseParser::default()
    }

    /// Whether the parser is between responses (nothing of the next one read yet).
    pub fn is_idle(&self) -> bool {
        matches!(&self.state, PState::Head(b) if b.is_empty())
    }

    /// Takes what it can from the front of `input` and says what it found; `Ok(None)` when `input`
    /// is used up without a complete step. Call again with the rest until `None`.
    pub fn parse(&mut self, input: &mut Bytes) -> Result<Option<Parsed>, HttpError> {
        loop {
            match &mut self.state {
                PState::Head(buf) => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let old = buf.len();
                    let take = input.len().min(MAX_HEAD_BYTES.saturating_sub(old));
                    buf.extend_from_slice(&input[..take]);
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut resp = httparse::Response::new(&mut headers);
                    match resp
                        .parse(buf)
                        .map_err(|e| HttpError::MalformedHead(e.to_string()))?
                    {
                        httparse::Status::Partial => {
                            let _ = input.split_to(take);
                            if buf.len() >= MAX_HEAD_BYTES {
                                return Err(HttpError::HeadTooLarge);
                            }
                            return Ok(None);
                        }
                        httparse::Status::Complete(n) => {
                            let _ = input.split_to(n.saturating_sub(old).min(take));
                            let head = head_of(&resp)?;
                            if (100..200).contains(&head.status) {
                                self.state = PState::Head(BytesMut::new());
                                continue;
                            }
                            self.state = match head.framing {
                                BodyFraming::Empty => PState::Head(BytesMut::new()),
                                BodyFraming::Length(n) => PState::Length(n),
                                BodyFraming::Chunked => PState::Chunked(size_chunk()),
                                BodyFraming::Close => PState::Close,
                            };
                            return Ok(Some(Parsed::Head(head)));
                        }
                    }
                }
                PState::Length(0) => {
                    self.state = PState::Head(BytesMut::new());
                    return Ok(Some(Parsed::End));
                }
                PState::Length(left) => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    *left -= n as u64;
                    return Ok(Some(Parsed::Body(input.split_to(n))));
                }
                PState::Close => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(Parsed::Body(input.split_to(input.len()))));
                }
                PState::Chunked(chunk) => {
                    if let Chunk::Data(left) = chunk {
                        if input.is_empty() {
                            return Ok(None);
                        }
                        let n = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(input.len());
                        *left -= n as u64;
                        if *left == 0 {
                            *chunk = Chunk::DataEnd { cr: false };
                        }
                        return Ok(Some(Parsed::Body(input.split_to(n))));
                    }
                    let Some(&b) = input.first() else {
                        return Ok(None);
                    };
                    let _ = input.split_to(1);
                    if step_chunk(chunk, b)? {
                        self.state = PState::Head(BytesMut::new());
                        return Ok(Some(Parsed::End));
                    }
                }
            }
        }
    }

    /// The connection closed: `Ok(true)` if that ends a close-delimited body, `Ok(false)` if the
    /// parser was between responses, an error otherwise.
    pub fn eof(&mut self) -> Result<bool, HttpError> {
        match &self.state {
            PState::Head(b) if b.is_empty() => Ok(false),
            PState::Head(_) => Err(HttpError::ClosedDuringHead),
            PState::Close => {
                self.state = PState::Head(BytesMut::new());
                Ok(true)
            }
            PState::Length(left) => Err(HttpError::Truncated {
                expected: *left,
                received: 0,
            }),
            PState::Chunked(_) => Err(HttpError::InvalidChunk("connection closed mid-body")),
        }
    }
}

/// One byte of chunk framing (never data); `Ok(true)` when the body (with its trailers) is over.
fn step_chunk(chunk: &mut Chunk, b: u8) -> Result<bool, HttpError> {
    match chunk {
        Chunk::Size {
            size,
            digits,
            ext,
            len,
            cr,
        } => {
            *len += 1;
            if *len > MAX_CHUNK_LINE {
                return Err(HttpError::InvalidChunk("chunk-size line too long"));
            }
            if *cr {
                if b != b'\n' {
                    return Err(HttpError::InvalidChunk("CR without LF after chunk size"));
                }
                if *digits == 0 {
                    return Err(HttpError::InvalidChunk("missing chunk size"));
                }
                *chunk = if *size == 0 {
                    Chunk::Trailer {
                        line: 0,
                        total: 0,
                        cr: false,
                    }
                } else {
                    Chunk::Data(*size)
                };
                return Ok(false);
            }
            match b {
                b'\r' => *cr = true,
                _ if *ext => {}
                b';' | b' ' | b'\t' => *ext = true,
                _ => {
                    let d = (b as char)
                        .to_digit(16)
                        .ok_or(HttpError::InvalidChunk("bad chunk-size digit"))?;
                    *digits += 1;
                    if *digits > 15 {
                        return Err(HttpError::InvalidChunk("chunk size too large"));
                    }
                    *size = *size * 16 + u64::from(d);
                }
            }
            Ok(false)
        }
        Chunk::DataEnd { cr } => {
            match (b, *cr) {
                (b'\r', false) => *cr = true,
                (b'\n', true) => *chunk = size_chunk(),
                _ => return Err(HttpError::InvalidChunk("chunk data not followed by CRLF")),
            }
            Ok(false)
        }
        Chunk::Trailer { line, total, cr } => {
            *total += 1;
            if *total > MAX_CHUNK_LINE {
                return Err(HttpError::InvalidChunk("trailers too long"));
            }
            if *cr {
                if b != b'\n' {
                    return Err(HttpError::InvalidChunk("CR without LF in trailers"));
                }
                if *line == 0 {
                    return Ok(true);
                }
                *line = 0;
                *cr = false;
            } else if b == b'\r' {
                *cr = true;
            } else {
                *line += 1;
            }
            Ok(false)
        }
        Chunk::Data(_) => Ok(false),
    }
}

/// The parts of a parsed head a range client needs.
fn head_of(resp: &httparse::Response<'_, '_>) -> Result<Head, HttpError> {
    let status = resp.code.unwrap_or(0);
    let http11 = resp.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = !http11;
    let mut headers = Vec::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        let v = value.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: u64 = v
                .parse()
                .map_err(|_| HttpError::InvalidContentLength(v.to_owned()))?;
            if length.is_some_and(|l| l != n) {
                return Err(HttpError::InvalidContentLength(v.to_owned()));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                if coding.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else if !coding.eq_ignore_ascii_case("identity") {
                    return Err(HttpError::UnsupportedEncoding(coding.to_owned()));
                }
            }
        } else if h.name.eq_ignore_ascii_case("content-encoding") {
            if !v.is_empty() && !v.eq_ignore_ascii_case("identity") {
                return Err(HttpError::UnsupportedEncoding(v.to_owned()));
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in v.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && !http11 {
                    close = false;
                }
            }
        }
        headers.push((h.name.to_owned(), h.value.to_vec()));
    }
    let framing = if matches!(status, 100..=199 | 204 | 304) {
        BodyFraming::Empty
    } else if chunked {
        BodyFraming::Chunked
    } else if let Some(n) = length {
        BodyFraming::Length(n)
    } else {
        close = true;
        BodyFraming::Close
    };
    Ok(Head {
        status,
        headers,
        keep_alive: !close,
        framing,
    })
}

/// What a [`RangeClient`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The next body bytes of the range asked for, in order.
    Data(Bytes),
    /// The range is complete; `keep_alive`: the connection can carry the next request.
    Done {
        /// Whether the connection stays usable.
        keep_alive: bool,
    },
    /// The server answered with something other than the data (redirect, missing file, back-off).
    /// The connection must be closed (its body is not read).
    Answer(Verdict),
    /// The exchange failed; close the connection.
    Failed(HttpError),
}

/// One web-seed connection's exchanges, one ranged `GET` at a time. Sans-IO: bytes in
/// ([`RangeClient::handle_data`]), events out, a deadline ([`RangeClient::poll_timeout`]).
#[derive(Debug)]
pub struct RangeClient {
    parser: ResponseParser,
    idle_timeout: Duration,
    deadline: Option<Instant>,
    /// The range in progress, with the body bytes still expected (`None` until its head is in).
    current: Option<(FileRange, u64, Option<u64>)>,
    keep_alive: bool,
    failed: bool,
}

impl RangeClient {
    /// A client on a new connection; every stall longer than `idle_timeout` fails the exchange.
    pub fn new(idle_timeout: Duration) -> RangeClient {
        RangeClient {
            parser: ResponseParser::new(),
            idle_timeout,
            deadline: None,
            current: None,
            keep_alive: true,
            failed: false,
        }
    }

    /// Arms the deadline without a request (e.g. while connecting).
    pub fn arm(&mut self, now: Instant) {
        self.deadline = Some(now + self.idle_timeout);
    }

    /// Whether a request is in progress.
    pub fn is_busy(&self) -> bool {
        self.current.is_some()
    }

    /// Whether the connection can take another request.
    pub fn is_reusable(&self) -> bool {
        self.keep_alive && !self.failed && self.current.is_none() && self.parser.is_idle()
    }

    /// Starts the ranged `GET` of `asked` (a range of a file of `file_length` bytes) at `url`;
    /// returns the request bytes to send.
    pub fn start(
        &mut self,
        now: Instant,
        url: &TrackerUrl,
        asked: FileRange,
        file_length: u64,
    ) -> Bytes {
        let bytes = request(url, &asked.range);
        self.current = Some((asked, file_length, None));
        self.deadline = Some(now + self.idle_timeout);
        bytes
    }

    /// When [`RangeClient::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.failed {
            None
        } else {
            self.deadline
        }
    }

    /// Fails the exchange if the server has been silent past the idle timeout.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<ClientEvent>) {
        if self.failed || self.deadline.is_none_or(|d| now < d) {
            return;
        }
        self.fail(HttpError::Timeout(self.idle_timeout), out);
    }

    fn fail(&mut self, e: HttpError, out: &mut Vec<ClientEvent>) {
        self.failed = true;
        self.current = None;
        self.deadline = None;
        out.push(ClientEvent::Failed(e));
    }

    /// Bytes from the server (a buffer the client may slice without copying).
    pub fn handle_data(&mut self, now: Instant, mut data: Bytes, out: &mut Vec<ClientEvent>) {
        if self.failed {
            return;
        }
        if self.deadline.is_some() {
            self.deadline = Some(now + self.idle_timeout);
        }
        while !self.failed {
            if self.current.is_none() {
                if data.is_empty() {
                    return;
                }
                return self.fail(HttpError::Unsolicited(data.len()), out);
            }
            match self.parser.parse(&mut data) {
                Err(e) => return self.fail(e, out),
                Ok(None) => return,
                Ok(Some(p)) => self.step(p, out),
            }
        }
    }

    fn step(&mut self, parsed: Parsed, out: &mut Vec<ClientEvent>) {
        let Some((asked, file_length, expected)) = self.current.as_mut() else {
            return self.fail(HttpError::Unsolicited(0), out);
        };
        match parsed {
            Parsed::Head(head) => {
                let headers: Vec<(&str, &[u8])> = head
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_slice()))
                    .collect();
                match classify(head.status, &headers, asked, *file_length) {
                    Err(e) => self.fail(e.into(), out),
                    Ok(Verdict::Data { length }) => {
                        if let BodyFraming::Length(n) = head.framing {
                            if n != length {
                                return self.fail(
                                    HttpError::LengthMismatch {
                                        got: n,
                                        expected: length,
                                    },
                                    out,
                                );
                            }
                        }
                        self.keep_alive = head.keep_alive;
                        *expected = Some(length);
                    }
                    Ok(verdict) => {
                        self.failed = true;
                        self.current = None;
                        self.deadline = None;
                        out.push(ClientEvent::Answer(verdict));
                    }
                }
            }
            Parsed::Body(bytes) => {
                let Some(left) = expected.as_mut() else {
                    return self.fail(HttpError::Unsolicited(bytes.len()), out);
                };
                let expect = asked.len();
                if bytes.len() as u64 > *left {
                    return self.fail(HttpError::TooLong { expected: expect }, out);
                }
                *left -= bytes.len() as u64;
                let done = *left == 0 && !self.keep_alive && self.parser_is_close();
                out.push(ClientEvent::Data(bytes));
                if done {
                    self.finish(out);
                }
            }
            Parsed::End => {
                if *expected != Some(0) {
                    let (expect, got) = (asked.len(), asked.len() - expected.unwrap_or(0));
                    return self.fail(
                        HttpError::Truncated {
                            expected: expect,
                            received: got,
                        },
                        out,
                    );
                }
                self.finish(out);
            }
        }
    }

    /// A close-delimited body that has all its bytes is complete (the server need not close first).
    fn parser_is_close(&self) -> bool {
        matches!(self.parser.state, PState::Close)
    }

    fn finish(&mut self, out: &mut Vec<ClientEvent>) {
        self.current = None;
        self.deadline = None;
        out.push(ClientEvent::Done {
            keep_alive: self.keep_alive,
        });
    }

    /// The server closed the connection.
    pub fn handle_eof(&mut self, out: &mut Vec<ClientEvent>) {
        if self.failed {
            return;
        }
        self.keep_alive = false;
        match self.current.as_ref() {
            None => {}
            Some((asked, _, expected)) => {
                let (expect, left) = (asked.len(), expected.unwrap_or(asked.len()));
                if left == 0 && self.parser.eof().is_ok() {
                    self.finish(out);
                } else if expected.is_none() && self.parser.is_idle() {
                    self.fail(HttpError::ClosedBeforeAnswer, out);
                } else {
                    let e = match self.parser.eof() {
                        Err(HttpError::ClosedDuringHead) => HttpError::ClosedDuringHead,
                        _ => HttpError::Truncated {
                            expected: expect,
                            received: expect - left,
                        },
                    };
                    self.fail(e, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
