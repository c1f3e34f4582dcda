//! The network tasks, written once for every runtime: per-connection reader and writer, the TCP
//! acceptor, and the UDP receiver and sender. They only move bytes between sockets and the event loop.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::channel::mpsc;
use futures::future::{self, Either};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::{SinkExt, StreamExt};
use hyperblow_core::engine::ConnId;

use crate::runtime::Runtime;
use crate::session::{Ctl, Net};

/// Bytes read from a socket at once (one message to the event loop at most this long).
pub(crate) const READ_BUF: usize = 64 * 1024;

/// Largest UDP datagram we accept (trackers send well under this).
const DATAGRAM_BUF: usize = 64 * 1024;

/// Most buffers handed to one vectored write.
const MAX_IOV: usize = 64;

/// What the event loop tells a connection's writer.
#[derive(Debug)]
pub(crate) enum WriterCmd {
    /// Write these bytes after everything before them.
    Data(Bytes),
    /// Write what is queued, then close the connection.
    Close,
}

/// Dials `addr` with a timeout; once connected, reports it, starts the writer, and becomes the reader.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn connect_task<R: Runtime>(
    rt: R,
    conn: ConnId,
    addr: SocketAddr,
    timeout: Duration,
    writer_rx: mpsc::UnboundedReceiver<WriterCmd>,
    mut net: mpsc::Sender<Net<R>>,
    ctl: mpsc::UnboundedSender<Ctl>,
) {
    let deadline = std::time::Instant::now() + timeout;
    let connect = pin!(rt.connect(addr));
    let sleep = pin!(rt.sleep_until(deadline));
    match future::select(connect, sleep).await {
        Either::Left((Ok((reader, writer)), _)) => {
            if net.send(Net::Connected(conn)).await.is_err() {
                return;
            }
            rt.spawn(writer_task(conn, writer, writer_rx, ctl));
            reader_task::<R>(conn, reader, net).await;
        }
        Either::Left((Err(e), _)) => {
            let _ = net
                .send(Net::ConnectFailed(
                    conn,
                    format!("connecting to {addr}: {e}"),
                ))
                .await;
        }
        Either::Right(((), _)) => {
            let _ = net
                .send(Net::ConnectFailed(
                    conn,
                    format!("connecting to {addr}: timed out after {timeout:?}"),
                ))
                .await;
        }
    }
}

/// Reads from the socket until it ends, handing every chunk to the loop (waiting when the loop is
/// behind: the bounded channel is the backpressure). Reports the end with [`Net::Closed`].
pub(crate) async fn reader_task<R: Runtime>(
    conn: ConnId,
    mut reader: R::Reader,
    mut net: mpsc::Sender<Net<R>>,
) {
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
        if net.send(Net::Read(conn, chunk)).await.is_err() {
            return;
        }
    }
    let _ = net.send(Net::Closed(conn)).await;
}

/// Writes what the loop sends, in order, reporting each batch with [`Ctl::Flushed`]. The queue holds at
/// most what the engine let out without a flush report (its per-connection send window), so it is
/// bounded even though the channel is not. Ends on [`WriterCmd::Close`] or when the loop drops the
/// sender, closing the write side; a write error is reported as [`Ctl::WriteFailed`].
pub(crate) async fn writer_task<W>(
    conn: ConnId,
    mut writer: W,
    mut rx: mpsc::UnboundedReceiver<WriterCmd>,
    ctl: mpsc::UnboundedSender<Ctl>,
) where
    W: futures::io::AsyncWrite + Unpin,
{
    let mut batch: Vec<Bytes> = Vec::new();
    'outer: while let Some(cmd) = rx.next().await {
        let mut close = false;
        match cmd {
            WriterCmd::Data(b) => batch.push(b),
            WriterCmd::Close => close = true,
        }
        // Take whatever else is already queued so that one system call carries it all.
        while !close {
            match rx.try_recv() {
                Ok(WriterCmd::Data(b)) => batch.push(b),
                Ok(WriterCmd::Close) => close = true,
                Err(_) => break,
            }
        }
        let total: usize = batch.iter().map(Bytes::len).sum();
        if let Err(e) = write_all_vectored(&mut writer, &mut batch).await {
            let _ = ctl.unbounded_send(Ctl::WriteFailed(conn, e.to_string()));
            return;
        }
        batch.clear();
        if total > 0 {
            let _ = ctl.unbounded_send(Ctl::Flushed(conn, total));
        }
        if close {
            break 'outer;
        }
    }
    let _ = writer.close().await;
}

/// Writes every buffer of `batch` (consuming them) with vectored writes.
async fn write_all_vectored<W>(writer: &mut W, batch: &mut [Bytes]) -> io::Result<()>
where
    W: futures::io::AsyncWrite + Unpin,
{
    let mut first = 0;
    while first < batch.len() {
        let rest = batch.get(first..).unwrap_or_default();
        let slices: Vec<IoSlice<'_>> = rest.iter().take(MAX_IOV).map(|b| IoSlice::new(b)).collect();
        let mut n = writer.write_vectored(&slices).await?;
        drop(slices);
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        while n > 0 {
            let Some(b) = batch.get_mut(first) else {
                break;
            };
            if n >= b.len() {
                n -= b.len();
                first += 1;
            } else {
                b.advance(n);
                n = 0;
            }
        }
        // Skip empty buffers so the loop condition sees real progress.
        while batch.get(first).is_some_and(Bytes::is_empty) {
            first += 1;
        }
    }
    Ok(())
}

/// Accepts peers and hands each new connection to the loop.
pub(crate) async fn accept_task<R: Runtime>(
    rt: R,
    listener: R::Listener,
    mut net: mpsc::Sender<Net<R>>,
) {
    loop {
        match R::accept(&listener).await {
            Ok((reader, writer, remote)) => {
                if net
                    .send(Net::Incoming(reader, writer, remote))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // Out of file descriptors or a connection reset before accept: wait a little, go on.
            Err(_) => {
                rt.sleep_until(std::time::Instant::now() + Duration::from_millis(100))
                    .await
            }
        }
    }
}

/// Receives datagrams (UDP tracker replies) and hands them to the loop.
pub(crate) async fn udp_recv_task<R: Runtime>(
    rt: R,
    socket: std::sync::Arc<R::Udp>,
    mut net: mpsc::Sender<Net<R>>,
) {
    let mut buf = vec![0u8; DATAGRAM_BUF];
    loop {
        match R::recv_from(&socket, &mut buf).await {
            Ok((n, from)) => {
                let data = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                if net.send(Net::Datagram(from, data)).await.is_err() {
                    return;
                }
            }
            // ICMP errors from earlier sends show up here on some systems; the engine retransmits.
            Err(_) => {
                rt.sleep_until(std::time::Instant::now() + Duration::from_millis(10))
                    .await
            }
        }
    }
}

/// Sends the datagrams the loop hands it (a lost one is retransmitted by the engine).
pub(crate) async fn udp_send_task<R: Runtime>(
    socket: std::sync::Arc<R::Udp>,
    mut rx: mpsc::UnboundedReceiver<(SocketAddr, Bytes)>,
) {
    while let Some((to, data)) = rx.next().await {
        let _ = R::send_to(&socket, &data, to).await;
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;
    use crate::block::block_on;

    /// Takes at most `step` bytes per call (from the first non-empty buffer only, as a socket might).
    struct Trickle {
        got: Vec<u8>,
        step: usize,
        fail_after: Option<usize>,
    }

    impl futures::io::AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.fail_after.is_some_and(|n| self.got.len() >= n) {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::BrokenPipe)));
            }
            let n = buf.len().min(self.step);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn batch() -> (Vec<Bytes>, Vec<u8>) {
        let parts: Vec<Bytes> = [&b"hello"[..], b"", b" wor", b"ld", b"", b"!"]
            .iter()
            .map(|p| Bytes::copy_from_slice(p))
            .collect();
        let all = parts.iter().flat_map(|b| b.to_vec()).collect();
        (parts, all)
    }

    #[test]
    fn vectored_write_survives_short_writes_and_empty_buffers() {
        for step in 1..8 {
            let (mut parts, all) = batch();
            let mut w = Trickle {
                got: Vec::new(),
                step,
                fail_after: None,
            };
            let r = block_on(&mut Box::pin(write_all_vectored(&mut w, &mut parts)), None);
            assert!(matches!(r, Some(Ok(()))), "step {step}");
            assert_eq!(w.got, all, "step {step}");
        }
    }

    #[test]
    fn writer_reports_flushed_bytes_then_failure() {
        let (tx, rx) = mpsc::unbounded();
        let (ctl_tx, mut ctl_rx) = mpsc::unbounded();
        for p in batch().0 {
            tx.unbounded_send(WriterCmd::Data(p)).unwrap();
        }
        tx.unbounded_send(WriterCmd::Close).unwrap();
        let w = Trickle {
            got: Vec::new(),
            step: 3,
            fail_after: None,
        };
        block_on(&mut Box::pin(writer_task(ConnId(4), w, rx, ctl_tx)), None);
        match ctl_rx.try_recv() {
            Ok(Ctl::Flushed(ConnId(4), 12)) => {}
            _ => panic!("expected one flush report of 12 bytes"),
        }

        let (tx, rx) = mpsc::unbounded();
        let (ctl_tx, mut ctl_rx) = mpsc::unbounded();
        tx.unbounded_send(WriterCmd::Data(Bytes::from_static(b"0123456789")))
            .unwrap();
        let w = Trickle {
            got: Vec::new(),
            step: 4,
            fail_after: Some(4),
        };
        block_on(&mut Box::pin(writer_task(ConnId(5), w, rx, ctl_tx)), None);
        assert!(matches!(
            ctl_rx.try_recv(),
            Ok(Ctl::WriteFailed(ConnId(5), _))
        ));
    }
}
