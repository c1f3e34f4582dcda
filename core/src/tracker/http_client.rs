//! One HTTP/1.1 `GET` exchange with a tracker, as a sans-IO state machine.
//!
//! The driver owns the TCP connection; the [`Exchange`] owns the protocol. The contract:
//!
//! 1. Create the exchange with [`Exchange::new`], connect to [`Exchange::url`]'s host and port.
//! 2. Write whatever [`Exchange::poll_transmit`] returns (the request, once per connection).
//! 3. Feed every received byte to [`Exchange::handle_data`] (in any chunking, even one byte at a time) and
//!    report end of stream with [`Exchange::handle_eof`]. Arm a timer for [`Exchange::poll_timeout`] and call
//!    [`Exchange::handle_timeout`] when it fires.
//! 4. After each call, check [`Exchange::poll_result`]. [`Outcome::Body`] or an error ends the exchange.
//!    [`Outcome::Redirect`] means: close this connection, connect to the new URL and go back to step 2 with the
//!    same exchange (which counts the hops and keeps one overall deadline).
//!
//! The request asks for `Connection: close` and `Accept-Encoding: identity`, so a body is framed by
//! `Content-Length`, by `Transfer-Encoding: chunked`, or by the end of the connection. Every buffer is capped
//! ([`ExchangeConfig`]) and the cap is checked before bytes are stored, so a hostile server cannot make us
//! allocate more than the caps however it frames its reply.

use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;

use super::http::{TrackerUrl, UrlError};
use crate::time::Instant;

/// The `User-Agent` we send.
pub const USER_AGENT: &str = "hyperblow/0.1.0";

/// The longest chunk-size line (size plus extensions) we accept in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

/// How many header lines a response head may have.
const MAX_HEADERS: usize = 64;

/// The longest reason phrase we keep for an error message.
const MAX_REASON_CHARS: usize = 128;

/// Limits for one exchange. The defaults suit tracker replies, which are small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeConfig {
    /// Largest response head (status line and headers), and separately the largest chunked trailer section,
    /// in bytes. Default 64 KiB.
    pub max_head_bytes: usize,
    /// Largest body, in bytes. Default 2 MiB: a compact reply with 50 000 peers is about 300 KB.
    pub max_body_bytes: usize,
    /// How many redirects are followed before giving up. Default 5.
    pub max_redirects: u8,
    /// The time from [`Exchange::new`] to a complete response, across all redirect hops. Default 30 s.
    pub timeout: Duration,
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        ExchangeConfig {
            max_head_bytes: 64 * 1024,
            max_body_bytes: 2 * 1024 * 1024,
            max_redirects: 5,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What an exchange produced (see the module docs for what the driver does with each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The complete body of a 2xx response. Ends the exchange.
    Body(Bytes),
    /// The server redirected us: close the connection and connect to this URL; the exchange goes on.
    Redirect(TrackerUrl),
}

/// Why an exchange failed. Errors are final: the exchange does nothing more afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HttpError {
    /// The status line or headers are not valid HTTP/1.x.
    #[error("malformed HTTP response head: {0}")]
    MalformedHead(String),
    /// The status line and headers did not end within the configured size.
    #[error("HTTP response head larger than {limit} bytes")]
    HeadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The server answered with a status that is neither success nor a redirect we follow.
    #[error("tracker answered HTTP {code} {reason}")]
    Status {
        /// The status code.
        code: u16,
        /// The reason phrase, shortened.
        reason: String,
    },
    /// A redirect status without a `Location` header.
    #[error("HTTP {code} redirect without a Location header")]
    MissingLocation {
        /// The redirect status code.
        code: u16,
    },
    /// A redirect to a URL we cannot use (https to http, another scheme, a malformed URL).
    #[error("redirect to unusable location {location:?}: {source}")]
    BadRedirect {
        /// The `Location` header value.
        location: String,
        /// What is wrong with it.
        source: UrlError,
    },
    /// More redirects than [`ExchangeConfig::max_redirects`] (a loop or a very long chain).
    #[error("more than {limit} HTTP redirects")]
    TooManyRedirects {
        /// The configured limit.
        limit: u8,
    },
    /// The body would be larger than [`ExchangeConfig::max_body_bytes`]; refused before buffering it.
    #[error("HTTP body larger than the {limit}-byte limit (declared {declared:?})")]
    BodyTooLarge {
        /// The configured limit.
        limit: usize,
        /// The size the server announced (`Content-Length` or chunk size), if it announced one.
        declared: Option<u64>,
    },
    /// A `Content-Length` header that is not a decimal number, or several that disagree.
    #[error("invalid Content-Length header {0:?}")]
    InvalidContentLength(String),
    /// A `Transfer-Encoding` other than `chunked`.
    #[error("unsupported Transfer-Encoding {0:?}")]
    UnsupportedTransferEncoding(String),
    /// A `Content-Encoding` other than `identity` (we asked for identity).
    #[error("unsupported Content-Encoding {0:?}")]
    UnsupportedContentEncoding(String),
    /// A malformed chunk-size line or chunk terminator in a chunked body.
    #[error("invalid chunked encoding at byte {at} of the response: {reason}")]
    InvalidChunk {
        /// Offset of the offending byte from the start of this response.
        at: u64,
        /// What was wrong.
        reason: String,
    },
    /// The connection closed before the response head was complete.
    #[error("connection closed after {received} bytes, before the end of the HTTP response head")]
    ClosedDuringHead {
        /// Bytes received on this connection.
        received: u64,
    },
    /// The connection closed before the body was complete.
    #[error("connection closed after {received} body bytes; expected {expected:?}")]
    Truncated {
        /// The length the server announced, if it announced one (`None` for chunked bodies).
        expected: Option<u64>,
        /// Body bytes received.
        received: u64,
    },
    /// No complete response within [`ExchangeConfig::timeout`].
    #[error("no complete HTTP response within {after:?}")]
    Timeout {
        /// The configured timeout.
        after: Duration,
    },
}

/// How the body of the current response is delimited.
#[derive(Debug)]
enum Framing {
    /// `Content-Length`: this many bytes still to come.
    Length { remaining: u64 },
    /// No length: the body ends when the connection does.
    Close,
    /// `Transfer-Encoding: chunked`, at this point of the chunk grammar.
    Chunked(Chunk),
}

/// Where we are inside a chunked body.
#[derive(Debug)]
enum Chunk {
    /// Reading a chunk-size line (hex size, optional `;extensions`, CRLF).
    Size { line: Vec<u8> },
    /// Reading chunk data; this many bytes still to come.
    Data { remaining: u64 },
    /// Expecting the CRLF after chunk data; `seen_cr` once the CR is in.
    DataEnd { seen_cr: bool },
    /// Reading trailer lines until an empty one; `line_len` non-CR bytes of the current line so far,
    /// `total` bytes of trailers so far. Trailer contents are counted, not stored.
    Trailer { line_len: usize, total: usize },
}

/// The state of the current hop.
#[derive(Debug)]
enum State {
    /// Reading the status line and headers into `buf`.
    Head { buf: Vec<u8> },
    /// Reading the body.
    Body { framing: Framing, body: Vec<u8> },
    /// A redirect was found; waiting for the driver to take it and reconnect. Input is ignored.
    AwaitReconnect,
    /// Finished (body or error). Input is ignored.
    Done,
}

/// The input being consumed, with its offset in the whole response for error messages.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    base: u64,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a [u8] {
        self.data.get(self.pos..).unwrap_or(&[])
    }
    fn advance(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n).min(self.data.len());
    }
    fn offset(&self) -> u64 {
        self.base.saturating_add(self.pos as u64)
    }
}

/// One HTTP/1.1 `GET` (plus the redirects it leads to), sans-IO. See the module docs for the driver's part.
#[derive(Debug)]
pub struct Exchange {
    config: ExchangeConfig,
    url: TrackerUrl,
    deadline: Instant,
    redirects: u8,
    request: Option<Bytes>,
    received: u64,
    state: State,
    result: Option<Result<Outcome, HttpError>>,
}

impl Exchange {
    /// Starts an exchange for `url` at time `now`; the driver should connect to `url`'s host and port.
    pub fn new(url: TrackerUrl, now: Instant, config: ExchangeConfig) -> Exchange {
        let deadline = now + config.timeout;
        let mut exchange = Exchange {
            config,
            url,
            deadline,
            redirects: 0,
            request: None,
            received: 0,
            state: State::Done,
            result: None,
        };
        exchange.start_hop();
        exchange
    }

    /// Resets the per-connection state and queues the request for the current URL.
    fn start_hop(&mut self) {
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {USER_AGENT}\r\nAccept-Encoding: identity\r\n\
             Connection: close\r\n\r\n",
            self.url.target(),
            self.url.host_header()
        );
        self.request = Some(Bytes::from(request));
        self.received = 0;
        self.state = State::Head { buf: Vec::new() };
    }

    /// The URL of the current hop: where the driver must be connected.
    pub fn url(&self) -> &TrackerUrl {
        &self.url
    }

    /// How many redirects have been followed so far.
    pub fn redirects(&self) -> u8 {
        self.redirects
    }

    /// Whether the exchange has ended (body or error), whether or not the result was taken.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The request bytes to write on the current connection; `Some` once per connection.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.is_finished() {
            return None;
        }
        self.request.take()
    }

    /// When [`Exchange::handle_timeout`] must be called; `None` once the exchange has finished.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_finished() {
            None
        } else {
            Some(self.deadline)
        }
    }

    /// Ends the exchange with [`HttpError::Timeout`] if `now` has reached the deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.is_finished() && now >= self.deadline {
            self.fail(HttpError::Timeout {
                after: self.config.timeout,
            });
        }
    }

    /// Takes the next result, if any (each is returned once). After [`Outcome::Redirect`] the exchange
    /// expects a new connection to [`Exchange::url`] and has a new request ready in `poll_transmit`.
    pub fn poll_result(&mut self) -> Option<Result<Outcome, HttpError>> {
        let result = self.result.take();
        if matches!(result, Some(Ok(Outcome::Redirect(_)))) {
            self.start_hop();
        }
        result
    }

    /// Records the final result and stops reading.
    fn fail(&mut self, error: HttpError) {
        self.result = Some(Err(error));
        self.state = State::Done;
    }

    /// Feeds bytes received on the current connection.
    pub fn handle_data(&mut self, data: &[u8]) {
        let mut cursor = Cursor {
            data,
            pos: 0,
            base: self.received,
        };
        self.received = self.received.saturating_add(data.len() as u64);
        while !cursor.rest().is_empty() {
            let step = match self.state {
                State::AwaitReconnect | State::Done => return,
                State::Head { .. } => self.read_head(&mut cursor),
                State::Body { .. } => self.read_body(&mut cursor),
            };
            if let Err(e) = step {
                self.fail(e);
                return;
            }
        }
    }

    /// Reports that the server closed the connection (end of stream).
    pub fn handle_eof(&mut self) {
        let error = match &mut self.state {
            State::AwaitReconnect | State::Done => return,
            State::Head { .. } => HttpError::ClosedDuringHead {
                received: self.received,
            },
            State::Body { framing, body } => match framing {
                Framing::Close => {
                    let body = std::mem::take(body);
                    self.finish(body);
                    return;
                }
                Framing::Length { remaining } => HttpError::Truncated {
                    expected: Some((body.len() as u64).saturating_add(*remaining)),
                    received: body.len() as u64,
                },
                Framing::Chunked(_) => HttpError::Truncated {
                    expected: None,
                    received: body.len() as u64,
                },
            },
        };
        self.fail(error);
    }

    /// Ends the exchange with a body.
    fn finish(&mut self, body: Vec<u8>) {
        self.result = Some(Ok(Outcome::Body(Bytes::from(body))));
        self.state = State::Done;
    }

    /// Buffers head bytes (never beyond the cap) and, once the blank line is in, parses the head.
    fn read_head(&mut self, cursor: &mut Cursor<'_>) -> Result<(), HttpError> {
        let State::Head { buf } = &mut self.state else {
            return Ok(());
        };
        let input = cursor.rest();
        let room = self.config.max_head_bytes.saturating_sub(buf.len());
        let take = room.min(input.len());
        let old_len = buf.len();
        buf.extend_from_slice(input.get(..take).unwrap_or(&[]));
        // Only parse when a blank line may have arrived: keeps byte-at-a-time input linear.
        let scan = buf.get(old_len.saturating_sub(2)..).unwrap_or(&[]);
        let blank_line =
            scan.windows(2).any(|w| w == b"\n\n") || scan.windows(3).any(|w| w == b"\n\r\n");
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let parsed = if blank_line {
            response
                .parse(buf)
                .map_err(|e| HttpError::MalformedHead(e.to_string()))?
        } else {
            httparse::Status::Partial
        };
        let head_len = match parsed {
            httparse::Status::Partial => {
                cursor.advance(take);
                if buf.len() >= self.config.max_head_bytes {
                    return Err(HttpError::HeadTooLarge {
                        limit: self.config.max_head_bytes,
                    });
                }
                return Ok(());
            }
            httparse::Status::Complete(n) => n,
        };
        cursor.advance(head_len.saturating_sub(old_len).min(take));
        let head = Head::from_response(&response)?;
        self.process_head(head)
    }

    /// Decides what a complete head means: skip an interim 1xx, redirect, fail, or start the body.
    fn process_head(&mut self, head: Head) -> Result<(), HttpError> {
        let code = head.code;
        if (100..200).contains(&code) && code != 101 {
            // An interim response (e.g. 100 Continue): the real one follows.
            self.state = State::Head { buf: Vec::new() };
            return Ok(());
        }
        if matches!(code, 301 | 302 | 303 | 307 | 308) {
            let location = head.location.ok_or(HttpError::MissingLocation { code })?;
            let next = self
                .url
                .join(&location)
                .map_err(|source| HttpError::BadRedirect {
                    location: location.clone(),
                    source,
                })?;
            if self.redirects >= self.config.max_redirects {
                return Err(HttpError::TooManyRedirects {
                    limit: self.config.max_redirects,
                });
            }
            self.redirects += 1;
            self.url = next.clone();
            self.result = Some(Ok(Outcome::Redirect(next)));
            self.state = State::AwaitReconnect;
            return Ok(());
        }
        if !(200..300).contains(&code) {
            return Err(HttpError::Status {
                code,
                reason: head.reason,
            });
        }
        if let Some(encoding) = head.content_encoding {
            if !encoding.trim().eq_ignore_ascii_case("identity") {
                return Err(HttpError::UnsupportedContentEncoding(encoding));
            }
        }
        let limit = self.config.max_body_bytes;
        let framing = if let Some(te) = head.transfer_encoding {
            let codings: Vec<String> = te
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty() && c != "identity")
                .collect();
            if codings != ["chunked"] {
                return Err(HttpError::UnsupportedTransferEncoding(te));
            }
            Framing::Chunked(Chunk::Size { line: Vec::new() })
        } else if let Some(length) = head.content_length {
            if length > limit as u64 {
                return Err(HttpError::BodyTooLarge {
                    limit,
                    declared: Some(length),
                });
            }
            Framing::Length { remaining: length }
        } else if code == 204 {
            Framing::Length { remaining: 0 }
        } else {
            Framing::Close
        };
        if let Framing::Length { remaining: 0 } = framing {
            self.finish(Vec::new());
            return Ok(());
        }
        let capacity = match framing {
            Framing::Length { remaining } => usize::try_from(remaining).unwrap_or(limit).min(limit),
            _ => 0,
        };
        self.state = State::Body {
            framing,
            body: Vec::with_capacity(capacity),
        };
        Ok(())
    }

    /// Consumes body bytes according to the framing; finishes the exchange at the end of the body.
    fn read_body(&mut self, cursor: &mut Cursor<'_>) -> Result<(), HttpError> {
        let limit = self.config.max_body_bytes;
        let max_trailer = self.config.max_head_bytes;
        let State::Body { framing, body } = &mut self.state else {
            return Ok(());
        };
        let input = cursor.rest();
        let complete = match framing {
            Framing::Length { remaining } => {
                let take = take_len(*remaining, input.len());
                body.extend_from_slice(input.get(..take).unwrap_or(&[]));
                cursor.advance(take);
                *remaining -= take as u64;
                *remaining == 0
            }
            Framing::Close => {
                if body.len().saturating_add(input.len()) > limit {
                    return Err(HttpError::BodyTooLarge {
                        limit,
                        declared: None,
                    });
                }
                body.extend_from_slice(input);
                cursor.advance(input.len());
                false
            }
            Framing::Chunked(chunk) => read_chunked(chunk, body, cursor, limit, max_trailer)?,
        };
        if complete {
            let body = std::mem::take(body);
            self.finish(body);
        }
        Ok(())
    }

    /// Bytes currently buffered by the exchange (head, body and chunk-size line); for the cap tests.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        match &self.state {
            State::Head { buf } => buf.len(),
            State::Body { framing, body } => {
                let line = match framing {
                    Framing::Chunked(Chunk::Size { line }) => line.len(),
                    _ => 0,
                };
                body.len() + line
            }
            State::AwaitReconnect | State::Done => 0,
        }
    }
}

/// How many of `available` bytes to take when `remaining` are wanted.
fn take_len(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |r| r.min(available))
}

/// Advances a chunked body by one step; returns whether the body (including trailers) is complete.
fn read_chunked(
    chunk: &mut Chunk,
    body: &mut Vec<u8>,
    cursor: &mut Cursor<'_>,
    limit: usize,
    max_trailer: usize,
) -> Result<bool, HttpError> {
    let input = cursor.rest();
    match chunk {
        Chunk::Size { line } => {
            let newline = input.iter().position(|&b| b == b'\n');
            let part = input.get(..newline.unwrap_or(input.len())).unwrap_or(&[]);
            if line.len().saturating_add(part.len()) > MAX_CHUNK_LINE {
                return Err(HttpError::InvalidChunk {
                    at: cursor.offset(),
                    reason: format!("chunk-size line longer than {MAX_CHUNK_LINE} bytes"),
                });
            }
            line.extend_from_slice(part);
            cursor.advance(part.len());
            if newline.is_none() {
                return Ok(false);
            }
            let at = cursor.offset();
            cursor.advance(1);
            let size = parse_chunk_size(line).ok_or_else(|| HttpError::InvalidChunk {
                at,
                reason: format!(
                    "bad chunk-size line {:?} (the offset is its line feed)",
                    String::from_utf8_lossy(line.get(..64.min(line.len())).unwrap_or(&[]))
                ),
            })?;
            if size == 0 {
                *chunk = Chunk::Trailer {
                    line_len: 0,
                    total: 0,
                };
            } else {
                if (body.len() as u64).saturating_add(size) > limit as u64 {
                    return Err(HttpError::BodyTooLarge {
                        limit,
                        declared: Some(size),
                    });
                }
                *chunk = Chunk::Data { remaining: size };
            }
            Ok(false)
        }
        Chunk::Data { remaining } => {
            let take = take_len(*remaining, input.len());
            body.extend_from_slice(input.get(..take).unwrap_or(&[]));
            cursor.advance(take);
            *remaining -= take as u64;
            if *remaining == 0 {
                *chunk = Chunk::DataEnd { seen_cr: false };
            }
            Ok(false)
        }
        Chunk::DataEnd { seen_cr } => {
            let at = cursor.offset();
            match input.first() {
                Some(b'\r') if !*seen_cr => *seen_cr = true,
                Some(b'\n') => *chunk = Chunk::Size { line: Vec::new() },
                Some(&other) => {
                    return Err(HttpError::InvalidChunk {
                        at,
                        reason: format!("expected CRLF after chunk data, found byte {other:#04x}"),
                    })
                }
                None => return Ok(false),
            }
            cursor.advance(1);
            Ok(false)
        }
        Chunk::Trailer { line_len, total } => {
            let newline = input.iter().position(|&b| b == b'\n');
            let part_len = newline.unwrap_or(input.len());
            let part = input.get(..part_len).unwrap_or(&[]);
            // CRs are not counted, so a line holding at most CRs is the blank line that ends the trailers.
            *line_len = line_len.saturating_add(part.iter().filter(|&&b| b != b'\r').count());
            *total = total.saturating_add(part_len.saturating_add(1));
            if *total > max_trailer {
                return Err(HttpError::InvalidChunk {
                    at: cursor.offset(),
                    reason: format!("trailer section longer than {max_trailer} bytes"),
                });
            }
            cursor.advance(part_len);
            if newline.is_none() {
                return Ok(false);
            }
            cursor.advance(1);
            if *line_len == 0 {
                return Ok(true);
            }
            *line_len = 0;
            Ok(false)
        }
    }
}

/// Parses `HEX[;ext...]` (surrounding whitespace and a trailing CR allowed) into the chunk size.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let size = line.split(|&b| b == b';').next().unwrap_or(&[]);
    let size = std::str::from_utf8(size).ok()?.trim_matches([' ', '\t']);
    if size.is_empty() || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(size, 16).ok()
}

/// What the exchange needs from a response head, copied out of the parse buffer.
#[derive(Debug)]
struct Head {
    code: u16,
    reason: String,
    location: Option<String>,
    content_length: Option<u64>,
    transfer_encoding: Option<String>,
    content_encoding: Option<String>,
}

impl Head {
    fn from_response(response: &httparse::Response<'_, '_>) -> Result<Head, HttpError> {
        let code = response
            .code
            .ok_or_else(|| HttpError::MalformedHead("no status code".to_owned()))?;
        let reason: String = response
            .reason
            .unwrap_or("")
            .chars()
            .take(MAX_REASON_CHARS)
            .collect();
        let mut head = Head {
            code,
            reason,
            location: None,
            content_length: None,
            transfer_encoding: None,
            content_encoding: None,
        };
        for header in response.headers.iter() {
            let value = String::from_utf8_lossy(header.value).trim().to_owned();
            let name = header.name;
            if name.eq_ignore_ascii_case("location") {
                head.location = Some(value);
            } else if name.eq_ignore_ascii_case("content-length") {
                for part in value.split(',') {
                    let part = part.trim();
                    let n = part
                        .parse::<u64>()
                        .ok()
                        .filter(|_| part.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| HttpError::InvalidContentLength(value.clone()))?;
                    if head.content_length.is_some_and(|m| m != n) {
                        return Err(HttpError::InvalidContentLength(value.clone()));
                    }
                    head.content_length = Some(n);
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                head.transfer_encoding = Some(match head.transfer_encoding.take() {
                    Some(prev) => format!("{prev}, {value}"),
                    None => value,
                });
            } else if name.eq_ignore_ascii_case("content-encoding") {
                head.content_encoding = Some(value);
            }
        }
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: Instant = Instant::from_secs(100);

    fn url(s: &str) -> TrackerUrl {
        TrackerUrl::parse(s).unwrap()
    }

    fn exchange() -> Exchange {
        Exchange::new(
            url("http://tracker.test:6969/announce?a=1"),
            T0,
            ExchangeConfig::default(),
        )
    }

    /// Feeds `response` in pieces cut at `cuts`, then EOF if `eof`; returns the result.
    fn run(
        ex: &mut Exchange,
        response: &[u8],
        cuts: &[usize],
        eof: bool,
    ) -> Option<Result<Outcome, HttpError>> {
        let mut start = 0;
        let mut points: Vec<usize> = cuts.iter().map(|&c| c.min(response.len())).collect();
        points.sort_unstable();
        points.push(response.len());
        for end in points {
            ex.handle_data(&response[start..end]);
            start = end;
        }
        if eof {
            ex.handle_eof();
        }
        ex.poll_result()
    }

    fn body(b: &[u8]) -> Option<Result<Outcome, HttpError>> {
        Some(Ok(Outcome::Body(Bytes::copy_from_slice(b))))
    }

    #[test]
    fn request_bytes() {
        let mut ex = exchange();
        let req = ex.poll_transmit().unwrap();
        assert_eq!(
            &req[..],
            b"GET /announce?a=1 HTTP/1.1\r\nHost: tracker.test:6969\r\nUser-Agent: hyperblow/0.1.0\r\n\
              Accept-Encoding: identity\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(ex.poll_transmit(), None);
        let mut ex = Exchange::new(url("http://[::1]/a"), T0, ExchangeConfig::default());
        let req = ex.poll_transmit().unwrap();
        assert!(req.starts_with(b"GET /a HTTP/1.1\r\nHost: [::1]\r\n"));
    }

    #[test]
    fn content_length_one_byte_at_a_time() {
        let response =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nd1:ai1ee";
        let response = [&response[..], b"xyz"].concat();
        let mut ex = exchange();
        for (i, b) in response.iter().enumerate() {
            ex.handle_data(std::slice::from_ref(b));
            if i + 1 < response.len() {
                assert_eq!(ex.poll_result(), None, "done early at byte {i}");
            }
        }
        assert_eq!(ex.poll_result(), body(b"d1:ai1eexyz"));
        assert!(ex.is_finished());
        assert_eq!(ex.poll_timeout(), None);
        // Bytes after the end and a late EOF change nothing.
        ex.handle_data(b"garbage");
        ex.handle_eof();
        assert_eq!(ex.poll_result(), None);
    }

    #[test]
    fn bare_lf_heads_and_interim_responses() {
        let response = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\nContent-Length: 2\n\nok";
        assert_eq!(run(&mut exchange(), response, &[], false), body(b"ok"));
        let response = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(run(&mut exchange(), response, &[], false), body(b""));
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;name=value\r\nd8:in\r\n\
            A ; other=\"x\"\r\ntervali60e\r\n\
            1\r\ne\r\n\
            0;last\r\nX-Trailer: 1\r\nX-Other: two\r\n\r\nignored";
        let expected = body(b"d8:intervali60ee");
        assert_eq!(run(&mut exchange(), response, &[], false), expected);
        let every_byte: Vec<usize> = (0..response.len()).collect();
        assert_eq!(run(&mut exchange(), response, &every_byte, false), expected);
        // Without trailers, and with bare LF line ends.
        let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\n0\n\n";
        assert_eq!(run(&mut exchange(), response, &[], false), body(b"ab"));
    }

    #[test]
    fn chunked_errors() {
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        for (bad, at) in [("zz\r\n", 50), ("2\r\nabX", 52), ("\r\n", 48)] {
            let response = format!("{head}{bad}");
            let result = run(&mut exchange(), response.as_bytes(), &[], false);
            match result {
                Some(Err(HttpError::InvalidChunk { at: got, .. })) => {
                    assert_eq!(got, at, "{bad:?}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let response = format!("{head}2\r\nab\r\n");
        assert_eq!(
            run(&mut exchange(), response.as_bytes(), &[], true),
            Some(Err(HttpError::Truncated {
                expected: None,
                received: 2
            }))
        );
        let long_line = format!("{head}1;{}", "x".repeat(MAX_CHUNK_LINE));
        assert!(matches!(
            run(&mut exchange(), long_line.as_bytes(), &[], false),
            Some(Err(HttpError::InvalidChunk { .. }))
        ));
        let gzip = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert!(matches!(
            run(&mut exchange(), gzip.as_bytes(), &[], false),
            Some(Err(HttpError::UnsupportedTransferEncoding(_)))
        ));
        let gzip = "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 1\r\n\r\nx";
        assert!(matches!(
            run(&mut exchange(), gzip.as_bytes(), &[], false),
            Some(Err(HttpError::UnsupportedContentEncoding(_)))
        ));
    }

    #[test]
    fn close_delimited() {
        let response = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nd5:peers0:e";
        let mut ex = exchange();
        assert_eq!(run(&mut ex, response, &[3, 30, 33], false), None);
        ex.handle_eof();
        assert_eq!(ex.poll_result(), body(b"d5:peers0:e"));
    }

    #[test]
    fn content_length_mismatch_on_eof_is_an_error() {
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345";
        assert_eq!(
            run(&mut exchange(), response, &[], true),
            Some(Err(HttpError::Truncated {
                expected: Some(10),
                received: 5
            }))
        );
        let response = b"HTTP/1.1 200 OK\r\nContent-Len";
        assert_eq!(
            run(&mut exchange(), response, &[], true),
            Some(Err(HttpError::ClosedDuringHead { received: 28 }))
        );
        for bad in ["-1", "1x", "5, 6", "+3", ""] {
            let response = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert!(
                matches!(
                    run(&mut exchange(), response.as_bytes(), &[], false),
                    Some(Err(HttpError::InvalidContentLength(_)))
                ),
                "{bad:?}"
            );
        }
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok";
        assert_eq!(run(&mut exchange(), response, &[], false), body(b"ok"));
    }

    fn small_caps() -> ExchangeConfig {
        ExchangeConfig {
            max_head_bytes: 256,
            max_body_bytes: 1000,
            ..ExchangeConfig::default()
        }
    }

    #[test]
    fn body_over_the_cap_is_refused_before_buffering() {
        let t = url("http://t/announce");
        // Declared by Content-Length: refused as soon as the head is in.
        let mut ex = Exchange::new(t.clone(), T0, small_caps());
        ex.handle_data(b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n");
        assert_eq!(
            ex.poll_result(),
            Some(Err(HttpError::BodyTooLarge {
                limit: 1000,
                declared: Some(1001)
            }))
        );
        // Declared by a chunk size.
        let mut ex = Exchange::new(t.clone(), T0, small_caps());
        ex.handle_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n");
        ex.handle_data(&[b'x'; 0x200]);
        assert_eq!(ex.poll_result(), None);
        ex.handle_data(b"\r\n1ff\r\n");
        assert_eq!(
            ex.poll_result(),
            Some(Err(HttpError::BodyTooLarge {
                limit: 1000,
                declared: Some(0x1ff)
            }))
        );
        let mut ex = Exchange::new(t.clone(), T0, small_caps());
        ex.handle_data(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
        );
        assert!(matches!(
            ex.poll_result(),
            Some(Err(HttpError::BodyTooLarge { .. }))
        ));
        // Close-delimited: the read that would cross the cap is refused, nothing more is buffered.
        let mut ex = Exchange::new(t.clone(), T0, small_caps());
        ex.handle_data(b"HTTP/1.1 200 OK\r\n\r\n");
        ex.handle_data(&[b'x'; 1000]);
        assert_eq!(ex.buffered(), 1000);
        assert_eq!(ex.poll_result(), None);
        ex.handle_data(b"y");
        assert_eq!(
            ex.poll_result(),
            Some(Err(HttpError::BodyTooLarge {
                limit: 1000,
                declared: None
            }))
        );
        assert_eq!(ex.buffered(), 0);
        // Exactly at the cap is fine.
        let mut ex = Exchange::new(t.clone(), T0, small_caps());
        ex.handle_data(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
        ex.handle_data(&[b'x'; 1000]);
        assert!(matches!(ex.poll_result(), Some(Ok(Outcome::Body(b))) if b.len() == 1000));
        // A head that never ends.
        let mut ex = Exchange::new(t, T0, small_caps());
        ex.handle_data(b"HTTP/1.1 200 OK\r\n");
        ex.handle_data(&[b'X'; 300]);
        assert_eq!(
            ex.poll_result(),
            Some(Err(HttpError::HeadTooLarge { limit: 256 }))
        );
    }

    #[test]
    fn non_success_status_is_an_error() {
        let response = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let result = run(&mut exchange(), response, &[], false);
        assert_eq!(
            result,
            Some(Err(HttpError::Status {
                code: 404,
                reason: "Not Found".to_owned()
            }))
        );
        let message = result.unwrap().unwrap_err().to_string();
        assert!(message.contains("404"), "{message}");
        assert!(matches!(
            run(&mut exchange(), b"HTTP/1.1 500 Oops\r\n\r\n", &[], false),
            Some(Err(HttpError::Status { code: 500, .. }))
        ));
        assert!(matches!(
            run(&mut exchange(), b"SSH-2.0-OpenSSH\r\n\r\n", &[], false),
            Some(Err(HttpError::MalformedHead(_)))
        ));
    }

    /// Plays the driver: serves `responses` in order, one per connection, following redirects.
    fn drive(
        ex: &mut Exchange,
        responses: &[Vec<u8>],
    ) -> (Vec<String>, Option<Result<Outcome, HttpError>>) {
        let mut visited = vec![ex.url().to_string()];
        for response in responses {
            let request = ex.poll_transmit().expect("a request per connection");
            let target = ex.url().target().to_owned();
            assert!(request.starts_with(format!("GET {target} HTTP/1.1\r\n").as_bytes()));
            ex.handle_data(response);
            ex.handle_eof();
            match ex.poll_result() {
                Some(Ok(Outcome::Redirect(next))) => {
                    assert_eq!(&next, ex.url());
                    visited.push(next.to_string());
                }
                other => return (visited, other),
            }
        }
        (visited, None)
    }

    fn redirect(code: u16, location: &str) -> Vec<u8> {
        format!("HTTP/1.1 {code} Moved\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n")
            .into_bytes()
    }

    #[test]
    fn follows_a_redirect_chain() {
        let mut ex = exchange();
        let responses = [
            redirect(301, "http://b.test/announce?a=1"),
            redirect(302, "/c/announce?a=1"),
            redirect(307, "//d.test:8080/x"),
            redirect(308, "y?z=1"),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        ];
        let (visited, result) = drive(&mut ex, &responses);
        assert_eq!(
            visited,
            [
                "http://tracker.test:6969/announce?a=1",
                "http://b.test/announce?a=1",
                "http://b.test/c/announce?a=1",
                "http://d.test:8080/x",
                "http://d.test:8080/y?z=1",
            ]
        );
        assert_eq!(result, body(b"ok"));
        assert_eq!(ex.redirects(), 4);
    }

    #[test]
    fn a_redirect_loop_stops_at_the_limit() {
        let mut ex = exchange();
        let looping: Vec<Vec<u8>> = (0..10)
            .map(|i| redirect(302, if i % 2 == 0 { "/b" } else { "/announce?a=1" }))
            .collect();
        let (visited, result) = drive(&mut ex, &looping);
        assert_eq!(visited.len(), 6, "{visited:?}");
        assert_eq!(result, Some(Err(HttpError::TooManyRedirects { limit: 5 })));
        assert!(ex.is_finished());
        // Redirect errors.
        let no_location = b"HTTP/1.1 301 Moved\r\n\r\n";
        assert_eq!(
            run(&mut exchange(), no_location, &[], false),
            Some(Err(HttpError::MissingLocation { code: 301 }))
        );
        assert!(matches!(
            run(
                &mut exchange(),
                &redirect(302, "ftp://files/announce"),
                &[],
                false
            ),
            Some(Err(HttpError::BadRedirect {
                source: UrlError::UnsupportedScheme { .. },
                ..
            }))
        ));
    }

    #[test]
    fn redirects_may_go_from_http_to_https_but_never_back() {
        let up = run(
            &mut exchange(),
            &redirect(302, "https://secure.test/announce"),
            &[],
            false,
        );
        match up {
            Some(Ok(Outcome::Redirect(next))) => {
                assert!(next.tls());
                assert_eq!((next.host(), next.port()), ("secure.test", 443));
            }
            other => panic!("expected a redirect to https, got {other:?}"),
        }
        let secure = || {
            Exchange::new(
                url("https://secure.test/announce"),
                T0,
                ExchangeConfig::default(),
            )
        };
        // A scheme-relative location keeps TLS.
        match run(&mut secure(), &redirect(301, "//other.test/a"), &[], false) {
            Some(Ok(Outcome::Redirect(next))) => {
                assert_eq!(next.to_string(), "https://other.test/a")
            }
            other => panic!("expected a redirect, got {other:?}"),
        }
        let down = run(
            &mut secure(),
            &redirect(302, "http://plain.test/announce"),
            &[],
            false,
        );
        assert!(matches!(
            down,
            Some(Err(HttpError::BadRedirect {
                source: UrlError::TlsDowngrade { .. },
                ..
            }))
        ));
    }

    #[test]
    fn bytes_of_the_old_connection_are_ignored_after_a_redirect() {
        let mut ex = exchange();
        let mut response = redirect(303, "/other");
        response.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad");
        ex.handle_data(&response);
        ex.handle_data(b"more");
        ex.handle_eof();
        assert_eq!(
            ex.poll_result(),
            Some(Ok(Outcome::Redirect(url("http://tracker.test:6969/other"))))
        );
        assert!(ex
            .poll_transmit()
            .unwrap()
            .starts_with(b"GET /other HTTP/1.1"));
        ex.handle_data(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood");
        assert_eq!(ex.poll_result(), body(b"good"));
    }

    #[test]
    fn timeout() {
        let mut ex = exchange();
        let deadline = T0 + Duration::from_secs(30);
        assert_eq!(ex.poll_timeout(), Some(deadline));
        ex.handle_data(b"HTTP/1.1 200 OK\r\n");
        ex.handle_timeout(T0 + Duration::from_millis(29_999));
        assert_eq!(ex.poll_result(), None);
        assert_eq!(ex.poll_timeout(), Some(deadline));
        ex.handle_timeout(deadline);
        assert_eq!(
            ex.poll_result(),
            Some(Err(HttpError::Timeout {
                after: Duration::from_secs(30)
            }))
        );
        assert_eq!(ex.poll_timeout(), None);
        assert_eq!(ex.poll_transmit(), None);
        // The deadline covers the whole exchange, redirects included.
        let mut ex = exchange();
        ex.handle_data(&redirect(302, "/b"));
        assert!(matches!(ex.poll_result(), Some(Ok(Outcome::Redirect(_)))));
        assert_eq!(ex.poll_timeout(), Some(deadline));
        ex.handle_timeout(deadline + Duration::from_secs(1));
        assert!(matches!(
            ex.poll_result(),
            Some(Err(HttpError::Timeout { .. }))
        ));
    }

    /// A well-formed response carrying `payload`, framed one of three ways.
    fn frame(payload: &[u8], framing: u8, chunk_sizes: &[usize]) -> (Vec<u8>, bool) {
        let mut out = b"HTTP/1.1 200 OK\r\nServer: test\r\n".to_vec();
        match framing % 3 {
            0 => {
                out.extend_from_slice(
                    format!("Content-Length: {}\r\n\r\n", payload.len()).as_bytes(),
                );
                out.extend_from_slice(payload);
                (out, false)
            }
            1 => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                let mut rest = payload;
                let mut sizes = chunk_sizes.iter().cycle();
                while !rest.is_empty() {
                    let n = sizes.next().copied().unwrap_or(7).clamp(1, rest.len());
                    out.extend_from_slice(format!("{n:x};e=1\r\n").as_bytes());
                    out.extend_from_slice(&rest[..n]);
                    out.extend_from_slice(b"\r\n");
                    rest = &rest[n..];
                }
                out.extend_from_slice(b"0\r\nT: x\r\n\r\n");
                (out, false)
            }
            _ => {
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(payload);
                (out, true)
            }
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics_and_respects_the_caps(
            prefix in prop::sample::select(vec![
                &b""[..],
                &b"HTTP/1.1 200 OK\r\n\r\n"[..],
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                &b"HTTP/1.1 200 OK\r\nContent-Length: 900\r\n\r\n"[..],
                &b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n"[..],
            ]),
            data in prop::collection::vec(any::<u8>(), 0..3000),
            cuts in prop::collection::vec(0usize..3000, 0..20),
            eof in any::<bool>(),
        ) {
            let config = small_caps();
            let mut ex = Exchange::new(url("http://t/announce"), T0, config.clone());
            let response = [prefix, &data[..]].concat();
            let mut points: Vec<usize> = cuts.iter().map(|&c| c.min(response.len())).collect();
            points.sort_unstable();
            points.push(response.len());
            let mut start = 0;
            let cap = config.max_head_bytes.max(config.max_body_bytes + MAX_CHUNK_LINE);
            for end in points {
                ex.handle_data(&response[start..end]);
                start = end;
                prop_assert!(ex.buffered() <= cap);
                if let State::Body { body, .. } = &ex.state {
                    prop_assert!(body.len() <= config.max_body_bytes);
                }
                if let State::Head { buf } = &ex.state {
                    prop_assert!(buf.len() <= config.max_head_bytes);
                }
            }
            if eof {
                ex.handle_eof();
            }
            if let Some(Ok(Outcome::Body(b))) = ex.poll_result() {
                prop_assert!(b.len() <= config.max_body_bytes);
            }
        }

        #[test]
        fn split_anywhere_parses_the_same(
            payload in prop::collection::vec(any::<u8>(), 0..600),
            framing in any::<u8>(),
            chunk_sizes in prop::collection::vec(1usize..100, 1..8),
            cuts in prop::collection::vec(0usize..800, 0..30),
        ) {
            let (response, needs_eof) = frame(&payload, framing, &chunk_sizes);
            let whole = run(&mut exchange(), &response, &[], needs_eof);
            prop_assert_eq!(&whole, &body(&payload));
            let split = run(&mut exchange(), &response, &cuts, needs_eof);
            prop_assert_eq!(split, whole);
        }
    }
}
