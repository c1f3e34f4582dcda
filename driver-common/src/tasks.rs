//! The network tasks, written once for every runtime: per-connection reader and writer, the TCP
//! acceptor (the UDP receiver and sender are in `udp.rs`). They only move bytes between sockets and the event loop.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::channel::mpsc;
use futures::future::{self, Either};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::{SinkExt, StreamExt};
use hyperblow_core::engine::ConnId;
use hyperblow_core::wire::FrameTracker;

use crate::runtime::Runtime;
use crate::session::{Ctl, Net, Spawner};
use crate::tls::{TlsClient, TlsStream};
use std::sync::Arc;

/// Smallest read buffer allocation (a connection that only ever gets small messages keeps this).
const READ_ALLOC_MIN: usize = 64 * 1024;

/// Largest read buffer allocation, reached by doubling while reads keep coming in large.
const READ_ALLOC_MAX: usize = 1024 * 1024;

/// Most bytes one read may take (one message to the event loop at most this long). Together with the
/// loop's channel capacity this bounds what can wait for the loop.
pub(crate) const READ_MAX: usize = 256 * 1024;

/// Room kept at the end of each allocation: reads stop short of it, then the reader reads frame by
/// frame (exactly the bytes up to the next boundary) until it sits on a boundary and moves to a fresh
/// allocation. It holds any ordinary frame (a 16 KiB block or an extension message, with headers), so a
/// frame never straddles two allocations, which would make the decoder copy it (and the whole chunk
/// after it).
const READ_SWITCH: usize = 32 * 1024;

/// Most buffers handed to one vectored write.
const MAX_IOV: usize = 64;

/// What the event loop tells a connection's writer.
#[derive(Debug)]
pub(crate) enum WriterCmd {
    /// Write these buffers, in order, after everything before them (what the engine sent during one
    /// drain of its outputs: one message and one wake-up instead of one per buffer).
    Batch(Vec<Bytes>),
    /// Write what is queued, then close the connection.
    Close,
}

/// Dials `addr` with a timeout; once connected, reports it, starts the writer (through `spawner`,
/// inside the event loop's task like this one), and becomes the reader.
///
/// With `tls` (the server name and the session's TLS settings) the TLS handshake runs first, within the
/// same timeout, and only a verified connection is reported as connected; a failed handshake is a
/// [`Net::ConnectFailed`] with rustls' reason (never a fallback to plain TCP).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn connect_task<R: Runtime>(
    rt: R,
    spawner: Spawner,
    conn: ConnId,
    addr: SocketAddr,
    tls: Option<(String, Arc<TlsClient>)>,
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
            if let Some((host, client)) = tls {
                let failed = |why: String| {
                    Net::ConnectFailed(conn, format!("TLS with {host} ({addr}): {why}"))
                };
                let config = match client.config() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = net.send(failed(e)).await;
                        return;
                    }
                };
                let handshake = pin!(TlsStream::connect(config, &host, reader, writer));
                let sleep = pin!(rt.sleep_until(deadline));
                let stream = match future::select(handshake, sleep).await {
                    Either::Left((Ok(stream), _)) => stream,
                    Either::Left((Err(e), _)) => {
                        let _ = net.send(failed(e.to_string())).await;
                        return;
                    }
                    Either::Right(((), _)) => {
                        let why = format!("handshake timed out after {timeout:?}");
                        let _ = net.send(failed(why)).await;
                        return;
                    }
                };
                if net.send(Net::Connected(conn)).await.is_err() {
                    return;
                }
                let (reader, writer) = stream.split();
                let _ = spawner.unbounded_send(Box::pin(writer_task(conn, writer, writer_rx, ctl)));
                stream_reader_task::<R, _>(conn, reader, net).await;
                return;
            }
            if net.send(Net::Connected(conn)).await.is_err() {
                return;
            }
            let _ = spawner.unbounded_send(Box::pin(writer_task(conn, writer, writer_rx, ctl)));
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
///
/// Reads go straight into a large allocation that is handed over piece by piece (`split_to`), so a
/// block's payload is never copied in user space: the decoder takes each chunk over and piece payloads
/// stay slices of it. Reads go through [`Runtime::read_buf`], which fills the allocation's free room
/// (zero-filling it first only on runtimes that cannot read into uninitialised memory safely); its
/// size adapts to the connection (see [`next_alloc`]). A [`FrameTracker`] shortens the last read of an
/// allocation to end on a frame boundary, so the decoder never copies a partial frame across
/// allocations. Nothing is ever held back: every byte read is sent at once.
pub(crate) async fn reader_task<R: Runtime>(
    conn: ConnId,
    mut reader: R::Reader,
    mut net: mpsc::Sender<Net<R>>,
) {
    let mut tracker = FrameTracker::new();
    // What is left of the current allocation (its capacity is at least `free`).
    let mut room = BytesMut::new();
    let mut free: usize = 0;
    let mut recycler = Recycler::default();
    let mut alloc = READ_ALLOC_MIN;
    let mut biggest = 0;
    loop {
        let mut want = free.saturating_sub(READ_SWITCH).min(READ_MAX);
        if want == 0 {
            let stop = usize::try_from(tracker.next_stop()).unwrap_or(usize::MAX);
            if stop > 0 && stop <= free {
                want = stop;
            } else {
                // On a boundary, or a frame too big for what is left: a fresh allocation.
                alloc = next_alloc(alloc, biggest);
                biggest = 0;
                room = recycler.swap(std::mem::take(&mut room), alloc);
                free = alloc;
                want = (alloc - READ_SWITCH).min(READ_MAX);
            }
        }
        let n = match R::read_buf(&mut reader, &mut room, want).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n.min(want),
        };
        if n > room.len() {
            // A `read_buf` that broke its contract: stop rather than hand over bytes never read.
            break;
        }
        biggest = biggest.max(n);
        free -= n;
        let chunk = room.split_to(n);
        tracker.advance(&chunk);
        if net.send(Net::Read(conn, chunk)).await.is_err() {
            return;
        }
    }
    let _ = net.send(Net::Closed(conn)).await;
}

/// Size of each read of [`stream_reader_task`].
const STREAM_READ: usize = 16 * 1024;

/// Reads a wrapped stream (TLS plaintext) until it ends, handing every chunk to the loop like
/// [`reader_task`], without its zero-copy allocation scheme (tracker replies are small).
async fn stream_reader_task<R: Runtime, S>(
    conn: ConnId,
    mut reader: S,
    mut net: mpsc::Sender<Net<R>>,
) where
    S: futures::io::AsyncRead + Unpin,
{
    let mut buf = vec![0u8; STREAM_READ];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n.min(buf.len()),
        };
        let chunk = BytesMut::from(buf.get(..n).unwrap_or_default());
        if net.send(Net::Read(conn, chunk)).await.is_err() {
            return;
        }
    }
    let _ = net.send(Net::Closed(conn)).await;
}

/// Most earlier allocations a reader keeps an eye on for reuse.
const RECYCLE_DEPTH: usize = 32;

/// Most of those that may sit unused (every chunk cut from them dropped) at once.
const RECYCLE_SPARE: usize = 2;

/// A reader's earlier allocations, reused once every chunk cut from them is gone (the blocks were
/// written). Reusing warm memory instead of freeing and allocating 1 MiB at a time avoids the page
/// faults, kernel zeroing and `madvise` calls of fresh memory, which cost more CPU than the copy the
/// zero-copy path saved.
#[derive(Default)]
struct Recycler {
    /// Handles on earlier allocations (empty; each keeps its allocation alive), oldest first.
    retired: std::collections::VecDeque<BytesMut>,
}

impl Recycler {
    /// Retires `old` and returns an empty buffer with room for at least `size` bytes: a reclaimed
    /// earlier allocation if one is free, else a new one (never zero-filled here: see
    /// [`Runtime::read_buf`]).
    fn swap(&mut self, mut old: BytesMut, size: usize) -> BytesMut {
        if old.capacity() > 0 {
            old.clear();
            self.retired.push_back(old);
        }
        let mut found = None;
        let mut spare = 0;
        self.retired.retain_mut(|h| {
            // `try_reclaim` succeeds only when this handle is the allocation's last owner.
            if !h.try_reclaim(size) {
                return true;
            }
            if found.is_none() {
                found = Some(std::mem::take(h));
                return false;
            }
            spare += 1;
            spare <= RECYCLE_SPARE
        });
        // Only allocations still in use are left beyond the spares: forgetting the oldest handle just
        // lets that memory go when its last block does.
        while self.retired.len() > RECYCLE_DEPTH {
            self.retired.pop_front();
        }
        match found {
            Some(mut b) => {
                b.clear();
                b
            }
            None => BytesMut::with_capacity(size),
        }
    }
}

/// The size of the next read allocation: double while reads come in large (a bulk transfer), halve
/// while they stay small (an idle or slow peer keeps little memory), within
/// [`READ_ALLOC_MIN`]..=[`READ_ALLOC_MAX`].
fn next_alloc(current: usize, biggest_read: usize) -> usize {
    if biggest_read * 4 >= current {
        (current * 2).min(READ_ALLOC_MAX)
    } else if biggest_read * 16 < current {
        (current / 2).max(READ_ALLOC_MIN)
    } else {
        current
    }
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
            WriterCmd::Batch(mut b) => batch.append(&mut b),
            WriterCmd::Close => close = true,
        }
        // Take whatever else is already queued so that one system call carries it all.
        while !close {
            match rx.try_recv() {
                Ok(WriterCmd::Batch(mut b)) => batch.append(&mut b),
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
                let remote = crate::bind::canonical(remote);
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
    fn recycler_reuses_an_allocation_once_its_chunks_are_gone() {
        let mut r = Recycler::default();
        let mut a = r.swap(BytesMut::new(), 1024);
        assert!(a.is_empty());
        assert!(a.capacity() >= 1024);
        let base = a.as_ptr();
        a.extend_from_slice(&[7; 600]);
        let chunk = a.split_to(600);
        // Still in use: a new allocation.
        let mut b = r.swap(a, 1024);
        assert_ne!(b.as_ptr(), base);
        b.extend_from_slice(&[8; 1024]);
        let chunk_b = b.split_to(1024);
        drop(chunk);
        // The first one is free now: reused, handed out empty with its whole room.
        let c = r.swap(b, 1024);
        assert_eq!(c.as_ptr(), base);
        assert!(c.is_empty());
        assert!(c.capacity() >= 1024);
        drop(chunk_b);
        // Never more than a few unused ones are kept.
        let mut r = Recycler::default();
        let mut cur = BytesMut::new();
        for _ in 0..10 {
            cur = r.swap(cur, 64);
            cur.clear();
        }
        assert!(r.retired.len() <= RECYCLE_SPARE + 1);
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
        let mut parts = batch().0;
        let rest = parts.split_off(2);
        tx.unbounded_send(WriterCmd::Batch(parts)).unwrap();
        tx.unbounded_send(WriterCmd::Batch(rest)).unwrap();
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
        tx.unbounded_send(WriterCmd::Batch(vec![Bytes::from_static(b"0123456789")]))
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
