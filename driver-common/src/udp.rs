//! The UDP socket's tasks (uTP, the DHT and UDP trackers share it), written once for every runtime.
//!
//! Where the OS allows (Linux), datagrams move in batches through `quinn-udp`'s safe API: receives
//! with `recvmmsg` (and UDP GRO: one buffer may hold several datagrams of one sender, split here at
//! the kernel's stride), sends with UDP GSO (consecutive datagrams to one address, of one size but
//! the last, leave in one `sendmsg`). A socket or kernel without GSO/GRO gets one datagram per call
//! from the same code (quinn-udp reports one segment); a socket quinn-udp cannot set up at all falls
//! back to the runtime's plain `recv_from`/`send_to`.
//!
//! Nothing is allocated per datagram: received datagrams are copied out of fixed receive slots into
//! a pool cut into `Bytes` (one allocation per [`DATAGRAM_POOL`] bytes), and a GSO batch is copied
//! into one reused send buffer.
//!
//! The send queue is bounded ([`SEND_QUEUE`] datagrams, a channel the event loop fills with
//! `try_send`). When the socket would block, the send task keeps the datagram at the head and waits
//! until the socket is writable again (so the order is kept); meanwhile the queue fills, and once it
//! is full the loop drops new datagrams: uTP retransmits them (and its congestion control sees the
//! loss), DHT queries and tracker requests time out and are retried. Dropping at the tail keeps
//! memory bounded without stalling the event loop.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};

use crate::runtime::Runtime;
use crate::session::Net;

/// Largest UDP datagram (or GRO batch of datagrams) one receive slot takes: the IP length limit.
const DATAGRAM_BUF: usize = 64 * 1024;

/// Receive slots per batched receive (one `recvmmsg` fills up to this many, each possibly holding
/// several GRO-coalesced datagrams).
const RECV_SLOTS: usize = 8;

/// The buffer received datagrams are cut from, refilled when used up.
const DATAGRAM_POOL: usize = 256 * 1024;

/// Most datagrams waiting for the send task (about 1.4 MiB of uTP packets); see the module docs
/// for what happens when it is full.
pub(crate) const SEND_QUEUE: usize = 1024;

/// Most datagrams the send task takes from the queue at once (then groups for GSO).
const SEND_BATCH: usize = 64;

/// Most bytes of one GSO send: under the 65,507 bytes of payload an IPv4 datagram can carry
/// (65,487 for IPv6), which the kernel checks for the whole batch.
const GSO_MAX_BYTES: usize = 64_000;

/// The socket's batching state, shared by the receive and send tasks; `None` when quinn-udp could
/// not set the socket up (the plain one-datagram path is used then).
pub(crate) type Batching = Option<Arc<UdpSocketState>>;

/// Sets the socket up for batched I/O (GRO, packet info; non-blocking), or `None` if the OS refuses.
///
/// quinn-udp also switches path-MTU discovery to "probe" (never fragment), which suits QUIC but
/// would drop our 1,448-byte uTP datagrams on a path with a smaller MTU (a VPN or tunnel) where
/// the kernel used to fragment them. So the kernel's default ("want": fragment when the path
/// needs it) is put back for IPv4 and IPv6 alike; each call fails harmlessly on a socket of the
/// other family. (quinn-udp's IPV6_DONTFRAG stays: no safe setter exists for it, so an IPv6 path
/// under 1,468 bytes still needs uTP path-MTU discovery, which we do not have yet.)
pub(crate) fn batching<S: std::os::fd::AsFd>(socket: &S) -> Batching {
    let state = UdpSocketState::new(UdpSockRef::from(socket)).ok()?;
    use rustix::net::sockopt::{
        set_ip_mtu_discover, set_ipv6_mtu_discover, Ipv4PathMtuDiscovery, Ipv6PathMtuDiscovery,
    };
    let _ = set_ip_mtu_discover(socket, Ipv4PathMtuDiscovery::WANT);
    let _ = set_ipv6_mtu_discover(socket, Ipv6PathMtuDiscovery::WANT);
    Some(Arc::new(state))
}

/// Receives datagrams (UDP tracker replies, the DHT, uTP) and hands them to the loop.
pub(crate) async fn udp_recv_task<R: Runtime>(
    rt: R,
    socket: Arc<R::Udp>,
    state: Batching,
    mut net: mpsc::Sender<Net<R>>,
) {
    let mut slots = vec![0u8; RECV_SLOTS * DATAGRAM_BUF];
    let mut meta = [RecvMeta::default(); RECV_SLOTS];
    // Datagrams are cut from this pool (uTP brings one per 1,400 bytes of payload): one allocation
    // per ~256 KiB received instead of one per datagram.
    let mut pool = BytesMut::new();
    loop {
        let got = match &state {
            Some(state) => {
                let mut chunks = slots.chunks_mut(DATAGRAM_BUF);
                let mut bufs: [IoSliceMut<'_>; RECV_SLOTS] =
                    std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
                let sock = &*socket;
                R::udp_io(sock, false, || {
                    state.recv(UdpSockRef::from(sock), &mut bufs, &mut meta)
                })
                .await
            }
            None => {
                let buf = slots.get_mut(..DATAGRAM_BUF).unwrap_or_default();
                R::recv_from(&socket, buf).await.map(|(n, from)| {
                    if let Some(m) = meta.first_mut() {
                        *m = RecvMeta::default();
                        m.addr = from;
                        m.len = n;
                        m.stride = n;
                    }
                    1
                })
            }
        };
        let n = match got {
            Ok(n) => n,
            // ICMP errors from earlier sends show up here on some systems; the engine retransmits.
            Err(_) => {
                rt.sleep_until(std::time::Instant::now() + Duration::from_millis(10))
                    .await;
                continue;
            }
        };
        for (slot, m) in slots.chunks(DATAGRAM_BUF).zip(&meta).take(n) {
            let from = crate::bind::canonical(m.addr);
            let data = slot.get(..m.len).unwrap_or_default();
            for datagram in split_gro(data, m.stride) {
                if pool.capacity() - pool.len() < datagram.len() {
                    pool.reserve(DATAGRAM_POOL.max(datagram.len()));
                }
                pool.extend_from_slice(datagram);
                let data = pool.split().freeze();
                if net.send(Net::Datagram(from, data)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The datagrams of one received buffer: GRO packs datagrams of `stride` bytes back to back (the
/// last may be shorter); without GRO, `stride` is the whole length.
fn split_gro(data: &[u8], stride: usize) -> std::slice::Chunks<'_, u8> {
    data.chunks(if stride == 0 {
        data.len().max(1)
    } else {
        stride
    })
}

/// Sends the datagrams the loop queues, in batches (see the module docs); IPv4 destinations are
/// mapped for a dual-stack socket bound to `local`.
pub(crate) async fn udp_send_task<R: Runtime>(
    socket: Arc<R::Udp>,
    state: Batching,
    local: SocketAddr,
    mut rx: mpsc::Receiver<(SocketAddr, Bytes)>,
) {
    let mut batch: Vec<(SocketAddr, Bytes)> = Vec::with_capacity(SEND_BATCH);
    let mut gso = Vec::with_capacity(GSO_MAX_BYTES);
    while let Some((to, data)) = rx.next().await {
        batch.push((crate::bind::for_socket(to, local), data));
        while batch.len() < SEND_BATCH {
            match rx.try_recv() {
                Ok((to, data)) => batch.push((crate::bind::for_socket(to, local), data)),
                Err(_) => break,
            }
        }
        match &state {
            Some(state) => {
                let segments = state.max_gso_segments();
                send_batch::<ViaRuntime<R>>(&socket, state, &batch, segments, &mut gso).await
            }
            None => {
                for (to, data) in &batch {
                    // A lost datagram is retransmitted by the engine.
                    let _ = R::send_to(&socket, data, *to).await;
                }
            }
        }
        batch.clear();
    }
}

/// Sends `batch` in order, one GSO send per run of [`gso_run`], waiting for writability when the
/// socket would block. A GSO send the kernel refuses (quinn-udp then turns GSO off) is resent one
/// datagram at a time; other errors lose the datagrams (the engine retransmits).
async fn send_batch<I: UdpIo>(
    socket: &I::Sock,
    state: &UdpSocketState,
    batch: &[(SocketAddr, Bytes)],
    max_segments: usize,
    gso: &mut Vec<u8>,
) {
    let mut at = 0;
    while let Some(rest) = batch.get(at..).filter(|r| !r.is_empty()) {
        let run = gso_run(rest, max_segments);
        let sent = send_run::<I>(socket, state, rest.get(..run).unwrap_or_default(), gso).await;
        if sent.is_err() && run > 1 {
            for one in rest.iter().take(run) {
                let _ = send_run::<I>(socket, state, std::slice::from_ref(one), gso).await;
            }
        }
        at += run;
    }
}

/// How many datagrams at the front of `rest` (at least one) can leave in one GSO send: the same
/// destination, the same length (only the last may be shorter), at most `max_segments` of them and
/// [`GSO_MAX_BYTES`] in all.
fn gso_run(rest: &[(SocketAddr, Bytes)], max_segments: usize) -> usize {
    let Some((to, first)) = rest.first() else {
        return 0;
    };
    let size = first.len();
    let mut total = size;
    let mut n = 1;
    if size == 0 {
        return 1;
    }
    for (t, d) in rest.iter().skip(1) {
        if n >= max_segments || t != to || d.len() > size || total + d.len() > GSO_MAX_BYTES {
            break;
        }
        total += d.len();
        n += 1;
        if d.len() < size {
            break;
        }
    }
    n
}

/// Sends one run of datagrams to one address (one GSO send, or a plain one for a single datagram).
fn send_run<'a, I: UdpIo>(
    socket: &'a I::Sock,
    state: &'a UdpSocketState,
    run: &'a [(SocketAddr, Bytes)],
    gso: &'a mut Vec<u8>,
) -> impl std::future::Future<Output = io::Result<()>> + Send + 'a {
    let (destination, contents, segment_size): (_, &'a [u8], _) = match run {
        [] => (None, &[], None),
        [(to, one)] => (Some(*to), one, None),
        [(to, first), ..] => {
            gso.clear();
            for (_, d) in run {
                gso.extend_from_slice(d);
            }
            (Some(*to), gso.as_slice(), Some(first.len()))
        }
    };
    I::io(socket, true, move || {
        let Some(destination) = destination else {
            return Ok(());
        };
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        state.try_send(UdpSockRef::from(socket), &transmit)
    })
}

/// Waiting for a socket's readiness around a non-blocking operation: the runtime's in the tasks,
/// a plain retry loop in the tests.
trait UdpIo {
    /// The socket.
    type Sock: std::os::fd::AsFd + Sync;
    /// Runs `op` until it does not fail with `WouldBlock` (see [`Runtime::udp_io`]).
    fn io<'a, T: Send + 'a>(
        socket: &'a Self::Sock,
        write: bool,
        op: impl FnMut() -> io::Result<T> + Send + 'a,
    ) -> impl std::future::Future<Output = io::Result<T>> + Send + 'a;
}

/// [`UdpIo`] through a [`Runtime`].
struct ViaRuntime<R>(std::marker::PhantomData<R>);

impl<R: Runtime> UdpIo for ViaRuntime<R> {
    type Sock = R::Udp;
    fn io<'a, T: Send + 'a>(
        socket: &'a R::Udp,
        write: bool,
        op: impl FnMut() -> io::Result<T> + Send + 'a,
    ) -> impl std::future::Future<Output = io::Result<T>> + Send + 'a {
        R::udp_io(socket, write, op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::block_on;

    /// [`UdpIo`] for a test: retries at once on `WouldBlock`.
    struct Spin;

    impl UdpIo for Spin {
        type Sock = std::net::UdpSocket;
        #[allow(clippy::manual_async_fn)]
        fn io<'a, T: Send + 'a>(
            _: &'a std::net::UdpSocket,
            _: bool,
            mut op: impl FnMut() -> io::Result<T> + Send + 'a,
        ) -> impl std::future::Future<Output = io::Result<T>> + Send + 'a {
            async move {
                loop {
                    match op() {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                        r => return r,
                    }
                }
            }
        }
    }

    /// Receives until `want` datagrams arrived on `sock` (batched, GRO split), in arrival order.
    fn recv_all(sock: &std::net::UdpSocket, want: usize) -> Vec<Vec<u8>> {
        let state = batching(sock).expect("quinn-udp sets up a loopback socket");
        let mut slots = vec![0u8; RECV_SLOTS * DATAGRAM_BUF];
        let mut meta = [RecvMeta::default(); RECV_SLOTS];
        let mut got = Vec::new();
        while got.len() < want {
            let mut chunks = slots.chunks_mut(DATAGRAM_BUF);
            let mut bufs: [IoSliceMut<'_>; RECV_SLOTS] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            let n = block_on(
                &mut Box::pin(Spin::io(sock, false, || {
                    state.recv(UdpSockRef::from(sock), &mut bufs, &mut meta)
                })),
                None,
            )
            .expect("no timeout")
            .expect("receive");
            for (slot, m) in slots.chunks(DATAGRAM_BUF).zip(&meta).take(n) {
                let data = &slot[..m.len];
                got.extend(split_gro(data, m.stride).map(<[u8]>::to_vec));
            }
        }
        got
    }

    /// The batched socket still lets the kernel fragment a datagram bigger than the path's MTU
    /// (quinn-udp's set-up would forbid it; a uTP datagram is 1,448 bytes, more than many VPNs
    /// carry): path-MTU discovery reads back as the kernel's default, "want", on both families.
    #[test]
    fn batching_keeps_the_kernels_fragmentation_default() {
        use rustix::net::sockopt::{
            ip_mtu_discover, ipv6_mtu_discover, Ipv4PathMtuDiscovery, Ipv6PathMtuDiscovery,
        };
        let v4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        batching(&v4).expect("quinn-udp sets up a loopback socket");
        assert_eq!(ip_mtu_discover(&v4).unwrap(), Ipv4PathMtuDiscovery::WANT);
        if let Ok(v6) = std::net::UdpSocket::bind("[::]:0") {
            batching(&v6).expect("quinn-udp sets up a dual-stack socket");
            assert_eq!(ipv6_mtu_discover(&v6).unwrap(), Ipv6PathMtuDiscovery::WANT);
            // IPv4-mapped traffic of the dual-stack socket follows the IPv4 option.
            assert_eq!(ip_mtu_discover(&v6).unwrap(), Ipv4PathMtuDiscovery::WANT);
        }
    }

    /// Several datagrams to several addresses in one batch (runs of equal sizes for GSO, a shorter
    /// last one, interleaved destinations) arrive intact and in order per destination, over IPv4
    /// and IPv6, with GSO and with one datagram per send (`max_segments` 1, the fallback).
    #[test]
    fn a_batch_arrives_intact_and_in_order_per_destination() {
        for (local, max_segments) in [("127.0.0.1:0", 64), ("127.0.0.1:0", 1), ("[::1]:0", 64)] {
            let Ok(sender) = std::net::UdpSocket::bind(local) else {
                continue; // No IPv6 loopback on this machine.
            };
            let state = batching(&sender).expect("quinn-udp sets up a loopback socket");
            let rx: Vec<std::net::UdpSocket> = (0..3)
                .map(|_| std::net::UdpSocket::bind(local).unwrap())
                .collect();
            let mut batch = Vec::new();
            let mut want = vec![Vec::new(); rx.len()];
            // (receiver, length): runs to one address, a shorter one ending a run, interleaving.
            let plan = [
                (0, 1400),
                (0, 1400),
                (0, 1400),
                (0, 1400),
                (0, 300),
                (1, 1400),
                (1, 1400),
                (0, 1400),
                (2, 20),
                (0, 1400),
                (0, 1400),
                (1, 900),
                (1, 1400),
            ];
            for (k, &(to, len)) in plan.iter().enumerate() {
                let data: Vec<u8> = (0..len).map(|i| (k * 31 + i) as u8).collect();
                want[to].push(data.clone());
                batch.push((rx[to].local_addr().unwrap(), Bytes::from(data)));
            }
            let mut gso = Vec::new();
            let send = send_batch::<Spin>(&sender, &state, &batch, max_segments, &mut gso);
            block_on(&mut Box::pin(send), None).unwrap();
            for (r, want) in rx.iter().zip(&want) {
                assert_eq!(&recv_all(r, want.len()), want, "{local} {max_segments}");
            }
        }
    }

    fn d(port: u16, len: usize) -> (SocketAddr, Bytes) {
        (
            SocketAddr::from(([127, 0, 0, 1], port)),
            Bytes::from(vec![0u8; len]),
        )
    }

    #[test]
    fn gso_runs_group_one_destination_and_size() {
        let b = [d(1, 100), d(1, 100), d(1, 40), d(1, 100)];
        assert_eq!(gso_run(&b, 64), 3, "a shorter datagram ends the run");
        let b = [d(1, 100), d(2, 100), d(1, 100)];
        assert_eq!(gso_run(&b, 64), 1, "another destination ends the run");
        let b = [d(1, 100), d(1, 200)];
        assert_eq!(gso_run(&b, 64), 1, "a longer datagram ends the run");
        let b = [d(1, 100), d(1, 100), d(1, 100)];
        assert_eq!(gso_run(&b, 2), 2, "at most max_segments");
        assert_eq!(gso_run(&b, 1), 1, "no GSO: one datagram per send");
        let b = vec![d(1, 1500); 60];
        assert_eq!(gso_run(&b, 64), GSO_MAX_BYTES / 1500);
        assert_eq!(gso_run(&[d(1, 0), d(1, 0)], 64), 1);
        assert_eq!(gso_run(&[], 64), 0);
    }

    #[test]
    fn gro_buffers_split_at_the_stride() {
        let data: Vec<u8> = (0..10).collect();
        let parts: Vec<&[u8]> = split_gro(&data, 4).collect();
        assert_eq!(parts, [&data[..4], &data[4..8], &data[8..]]);
        assert_eq!(split_gro(&data, 10).count(), 1);
        assert_eq!(split_gro(&data, 0).count(), 1);
    }
}
