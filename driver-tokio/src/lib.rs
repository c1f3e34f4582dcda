//! # hyperblow-tokio
//!
//! Runs a Hyperblow session on tokio. All the logic (event loop, connection tasks, disk jobs, the
//! [`SessionHandle`]) lives in `hyperblow-driver`; this crate only implements its
//! [`Runtime`] trait with tokio's sockets, timer and resolver, adapting tokio's byte-stream traits to
//! `futures-io`.
//!
//! ```no_run
//! let session = hyperblow_tokio::start(hyperblow_driver::SessionConfig::default())?;
//! println!("listening on {}", session.listen_addr());
//! session.shutdown().wait()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncRead as TokioRead, AsyncReadExt as _, AsyncWrite as TokioWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

pub use hyperblow_core as core;
use hyperblow_driver::{prepare_session, spawn_session, Runtime};
pub use hyperblow_driver::{SessionConfig, SessionHandle, StartError};

/// [`Runtime`] on a tokio runtime (any flavour with I/O and time enabled).
#[derive(Debug, Clone)]
pub struct Tokio {
    handle: tokio::runtime::Handle,
}

impl Tokio {
    /// Uses the given runtime.
    pub fn new(handle: tokio::runtime::Handle) -> Tokio {
        Tokio { handle }
    }

    /// Uses the runtime the caller is running in. Panics outside a tokio runtime, like
    /// `tokio::runtime::Handle::current`.
    pub fn current() -> Tokio {
        Tokio::new(tokio::runtime::Handle::current())
    }
}

/// Starts a session on a tokio runtime of its own, for synchronous callers such as the CLI. The runtime
/// stops once the session has shut down.
///
/// It is a current-thread runtime on a thread of its own: the event loop, the connection tasks it polls
/// and tokio's reactor share that thread, so a socket becoming readable wakes no other thread (the
/// hashing and disk writes run on the session's worker pool). A multi-threaded runtime measured
/// about three times the context switches and a quarter more CPU per GiB downloaded.
pub fn start(config: SessionConfig) -> Result<SessionHandle, StartError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .thread_name("hyperblow-tokio")
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let (session, task) = {
        let _context = runtime.enter();
        prepare_session(Tokio::new(runtime.handle().clone()), config)?
    };
    std::thread::Builder::new()
        .name("hyperblow-loop".into())
        .spawn(move || {
            runtime.block_on(task);
            runtime.shutdown_timeout(Duration::from_secs(1));
        })
        .map_err(StartError::Runtime)?;
    Ok(session)
}

/// Starts a session inside the tokio runtime the caller runs in (its event loop becomes a task there).
/// Fails outside a tokio runtime.
pub fn start_in_runtime(config: SessionConfig) -> Result<SessionHandle, StartError> {
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|e| StartError::Runtime(io::Error::other(e)))?;
    spawn_session(Tokio::new(handle), config)
}

/// The reading half of a tokio TCP stream, as a `futures-io` reader.
#[derive(Debug)]
pub struct Reader(OwnedReadHalf);

/// The writing half of a tokio TCP stream, as a `futures-io` writer (`close` shuts down the write side).
#[derive(Debug)]
pub struct Writer(OwnedWriteHalf);

impl AsyncRead for Reader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut rb = ReadBuf::new(buf);
        Pin::new(&mut self.0)
            .poll_read(cx, &mut rb)
            .map_ok(|()| rb.filled().len())
    }
}

impl AsyncWrite for Writer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

fn split(stream: TcpStream) -> io::Result<(Reader, Writer)> {
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    Ok((Reader(r), Writer(w)))
}

// Written as `impl Future` on purpose: several futures must be `'static` (not borrow `self`).
#[allow(clippy::manual_async_fn)]
impl Runtime for Tokio {
    type Reader = Reader;
    type Writer = Writer;
    type Listener = TcpListener;
    type Udp = UdpSocket;

    fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(task));
    }

    fn connect(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<(Reader, Writer)>> + Send + 'static {
        async move { split(TcpStream::connect(addr).await?) }
    }

    fn tcp_listener(&self, listener: std::net::TcpListener) -> io::Result<TcpListener> {
        TcpListener::from_std(listener)
    }

    fn accept(
        listener: &TcpListener,
    ) -> impl Future<Output = io::Result<(Reader, Writer, SocketAddr)>> + Send + '_ {
        async move {
            let (stream, remote) = listener.accept().await?;
            let (r, w) = split(stream)?;
            Ok((r, w, remote))
        }
    }

    fn udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<UdpSocket> {
        UdpSocket::from_std(socket)
    }

    fn send_to<'a>(
        socket: &'a UdpSocket,
        data: &'a [u8],
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        socket.send_to(data, to)
    }

    fn recv_from<'a>(
        socket: &'a UdpSocket,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a {
        socket.recv_from(buf)
    }

    fn udp_io<'a, T: Send + 'a>(
        socket: &'a UdpSocket,
        write: bool,
        op: impl FnMut() -> io::Result<T> + Send + 'a,
    ) -> impl Future<Output = io::Result<T>> + Send + 'a {
        let interest = if write {
            tokio::io::Interest::WRITABLE
        } else {
            tokio::io::Interest::READABLE
        };
        socket.async_io(interest, op)
    }

    fn sleep_until(
        &self,
        deadline: std::time::Instant,
    ) -> impl Future<Output = ()> + Send + 'static {
        // Created on first poll, inside the runtime (tokio timers must be made in its context).
        async move { tokio::time::sleep_until(deadline.into()).await }
    }

    /// Reads into `room`'s uninitialised capacity with tokio's `read_buf`: no zero-fill first.
    fn read_buf<'a>(
        reader: &'a mut Reader,
        room: &'a mut BytesMut,
        max: usize,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        async move {
            // All of `room` is free space: start at its front so the bytes read end up in `room[..n]`.
            room.clear();
            room.reserve(max);
            reader.0.read_buf(&mut (&mut *room).limit(max)).await
        }
    }

    fn resolve(
        &self,
        host: String,
        port: u16,
    ) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'static {
        async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        }
    }
}
