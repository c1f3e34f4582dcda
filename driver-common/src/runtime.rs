//! The few things an async runtime must provide so that the shared event loop can run on it.
//!
//! Everything else (the engine loop, connection tasks, the UDP task, disk jobs, the session handle) is
//! written once against this trait. Byte streams are `futures-io` [`AsyncRead`]/[`AsyncWrite`], so a
//! runtime whose sockets already implement those traits (async-std, smol, async-net) needs no adapter,
//! and tokio needs a thin one.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use bytes::BytesMut;
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite};

/// A runtime the session can run on: task spawning, TCP, UDP, a timer and name resolution.
///
/// Implementations are small handles (`Clone`, cheap to copy into tasks). Every future they return must
/// be `Send` because the shared code spawns tasks that hold them.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// The reading half of a TCP connection.
    type Reader: AsyncRead + Unpin + Send + 'static;
    /// The writing half of a TCP connection. `poll_close` must shut down the write side.
    type Writer: AsyncWrite + Unpin + Send + 'static;
    /// A bound TCP listener.
    type Listener: Send + Sync + 'static;
    /// A bound UDP socket (shared between the receiving and the sending task). Its descriptor is
    /// lent to `quinn-udp` for batched system calls (see [`Runtime::udp_io`]).
    type Udp: Send + Sync + std::os::fd::AsFd + 'static;

    /// Runs `task` in the background until it finishes (the result is not awaited).
    fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static;

    /// Opens a TCP connection to `addr` (no timeout here: the caller adds one) and splits it into its
    /// reading and writing halves. Implementations should set `TCP_NODELAY` (the writer batches).
    fn connect(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<(Self::Reader, Self::Writer)>> + Send + 'static;

    /// Adopts a bound, non-blocking std listener (the shared code binds it, so bind errors and the
    /// port picked for port 0 are handled once). Called inside the runtime's context.
    fn tcp_listener(&self, listener: std::net::TcpListener) -> io::Result<Self::Listener>;

    /// Waits for the next incoming connection: its halves and the remote address.
    fn accept(
        listener: &Self::Listener,
    ) -> impl Future<Output = io::Result<(Self::Reader, Self::Writer, SocketAddr)>> + Send + '_;

    /// Adopts a bound, non-blocking std UDP socket. Called inside the runtime's context.
    fn udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Self::Udp>;

    /// Sends one datagram.
    fn send_to<'a>(
        socket: &'a Self::Udp,
        data: &'a [u8],
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;

    /// Receives one datagram into `buf`: its length and sender.
    fn recv_from<'a>(
        socket: &'a Self::Udp,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a;

    /// Runs `op`, a non-blocking system call on `socket` (a batched receive or send), until it
    /// fails with something other than `WouldBlock`, waiting between tries until the socket is
    /// readable (or writable, with `write`). The runtime must clear its readiness on `WouldBlock`
    /// (tokio's `async_io`, async-io's `read_with`/`write_with`).
    fn udp_io<'a, T: Send + 'a>(
        socket: &'a Self::Udp,
        write: bool,
        op: impl FnMut() -> io::Result<T> + Send + 'a,
    ) -> impl Future<Output = io::Result<T>> + Send + 'a;

    /// Completes at (or soon after) `deadline`; at once if it has passed.
    fn sleep_until(
        &self,
        deadline: std::time::Instant,
    ) -> impl Future<Output = ()> + Send + 'static;

    /// Reads at most `max` bytes (`max > 0`) from `reader` into the front of `room` and returns how many
    /// (0 at the end of the stream). On return `room[..n]` holds them, so the caller can `split_to(n)`.
    ///
    /// `room` is free space: its initialised part (`room[..len]`) may be overwritten, and its capacity
    /// is at least `max`. The default zero-fills whatever of `room[..max]` is not initialised yet (each
    /// byte of an allocation at most once, because the part not read stays initialised for the next
    /// call) and reads into that slice. A runtime that can read into uninitialised memory without
    /// `unsafe` in this workspace overrides it to skip the zero-fill (tokio's `read_buf`).
    fn read_buf<'a>(
        reader: &'a mut Self::Reader,
        room: &'a mut BytesMut,
        max: usize,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        async move {
            if room.len() < max {
                room.resize(max, 0);
            }
            let space = room
                .get_mut(..max)
                .ok_or_else(|| io::Error::other("read buffer shorter than requested read"))?;
            let n = reader.read(space).await?;
            Ok(n.min(max))
        }
    }

    /// Looks up `host` without blocking the caller's thread (the runtime's blocking pool or resolver).
    fn resolve(
        &self,
        host: String,
        port: u16,
    ) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'static;
}
