//! # hyperblow-async-std
//!
//! Runs a Hyperblow session on async-std. All the logic (event loop, connection tasks, disk jobs, the
//! [`SessionHandle`]) lives in `hyperblow-driver`; this crate only implements its [`Runtime`] trait.
//!
//! async-std is discontinued upstream (RUSTSEC-2025-0052; its users are pointed to smol). Its sockets
//! already speak the `futures-io` `AsyncRead`/`AsyncWrite` traits the shared code is written against,
//! and its timer and reactor are `async-io`'s, so a smol driver would be this file with `smol::spawn`,
//! `async_net` sockets and `async_io::Timer` swapped in: the rest is shared.
//!
//! ```no_run
//! let session = hyperblow_async_std::start(hyperblow_driver::SessionConfig::default())?;
//! println!("listening on {}", session.listen_addr());
//! session.shutdown().wait()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use async_io::Async;
use async_std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::net::UdpSocket;

pub use hyperblow_core as core;
use hyperblow_driver::{prepare_session, spawn_session, Runtime};
pub use hyperblow_driver::{SessionConfig, SessionHandle, StartError};

/// [`Runtime`] on async-std's global executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct AsyncStd;

/// Starts a session for synchronous callers such as the CLI: async-std's executor threads run the
/// connection tasks, and one thread of its own runs the event loop until the session shuts down.
pub fn start(config: SessionConfig) -> Result<SessionHandle, StartError> {
    let (session, task) = prepare_session(AsyncStd, config)?;
    std::thread::Builder::new()
        .name("hyperblow-loop".into())
        .spawn(move || async_std::task::block_on(task))
        .map_err(StartError::Runtime)?;
    Ok(session)
}

/// Starts a session whose event loop is a task on async-std's executor, like every other task.
pub fn start_in_runtime(config: SessionConfig) -> Result<SessionHandle, StartError> {
    spawn_session(AsyncStd, config)
}

/// A connected stream with Nagle off, as its reading and writing sides (clones of one socket).
fn halves(stream: TcpStream) -> io::Result<(TcpStream, TcpStream)> {
    stream.set_nodelay(true)?;
    Ok((stream.clone(), stream))
}

// Written as `impl Future` on purpose: several futures must be `'static` (not borrow `self`).
#[allow(clippy::manual_async_fn)]
impl Runtime for AsyncStd {
    type Reader = TcpStream;
    type Writer = TcpStream;
    type Listener = TcpListener;
    /// async-io's socket (async-std's own reactor), which exposes readiness for batched I/O.
    type Udp = Async<UdpSocket>;

    fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // Dropping the JoinHandle detaches the task.
        drop(async_std::task::spawn(task));
    }

    fn connect(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<(TcpStream, TcpStream)>> + Send + 'static {
        async move { halves(TcpStream::connect(addr).await?) }
    }

    fn tcp_listener(&self, listener: std::net::TcpListener) -> io::Result<TcpListener> {
        Ok(TcpListener::from(listener))
    }

    fn accept(
        listener: &TcpListener,
    ) -> impl Future<Output = io::Result<(TcpStream, TcpStream, SocketAddr)>> + Send + '_ {
        async move {
            let (stream, remote) = listener.accept().await?;
            let (r, w) = halves(stream)?;
            Ok((r, w, remote))
        }
    }

    fn udp_socket(&self, socket: UdpSocket) -> io::Result<Async<UdpSocket>> {
        Async::new(socket)
    }

    fn send_to<'a>(
        socket: &'a Async<UdpSocket>,
        data: &'a [u8],
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        socket.send_to(data, to)
    }

    fn recv_from<'a>(
        socket: &'a Async<UdpSocket>,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a {
        socket.recv_from(buf)
    }

    fn udp_io<'a, T: Send + 'a>(
        socket: &'a Async<UdpSocket>,
        write: bool,
        mut op: impl FnMut() -> io::Result<T> + Send + 'a,
    ) -> impl Future<Output = io::Result<T>> + Send + 'a {
        async move {
            if write {
                socket.write_with(|_| op()).await
            } else {
                socket.read_with(|_| op()).await
            }
        }
    }

    fn sleep_until(
        &self,
        deadline: std::time::Instant,
    ) -> impl Future<Output = ()> + Send + 'static {
        // The delay is measured at the first poll, so a timer created early still ends at `deadline`.
        async move {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            async_std::task::sleep(left).await;
        }
    }

    fn resolve(
        &self,
        host: String,
        port: u16,
    ) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'static {
        async move { Ok((host.as_str(), port).to_socket_addrs().await?.collect()) }
    }
}
