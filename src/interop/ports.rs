//! Free loopback ports for real programs.
//!
//! A port is free when both TCP and UDP can bind it on 127.0.0.1 (trackers use both, peers use
//! TCP and libtorrent also opens uTP on the same number). A candidate is bound with TCP, UDP is
//! tried on the same number, and both are released before the port is handed out. A process-wide
//! set keeps this test binary from handing out the same port twice, since tests run in parallel.
//!
//! Candidates come from outside the kernel's ephemeral range (`ip_local_port_range`, 32768-60999
//! by default), from 10000 up to it and above it: between our check and the child's `bind`, the
//! kernel never gives such a port to a socket bound to port 0 or to an outgoing connection, which
//! is what any other program of a parallel test (a libtorrent session, one of our sessions, a
//! tracker's client) uses. A kernel-picked port could be taken that way a moment after it was
//! released, and the child then either failed to start or, worse, another program answered in
//! its place. Only when that range leaves too little room are kernel-picked ports used.
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use super::process::{HarnessError, Result};

/// How many kernel-picked ports to try before giving up.
const ATTEMPTS: usize = 64;

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static SET: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(HashSet::new()))
}

/// The lowest port [`free_port`] hands out (above the usual BitTorrent ports 6881-6999).
const LOWEST: u16 = 10_000;

/// How many ports outside the ephemeral range there must be for [`free_port`] to use them.
const ENOUGH: usize = 2_000;

/// The kernel's ephemeral port range in this network namespace, when it can be read.
fn ephemeral_range() -> Option<RangeInclusive<u16>> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    parse_range(&text)
}

/// Parses `ip_local_port_range` ("32768\t60999\n").
fn parse_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut it = text.split_whitespace().map(|w| w.parse::<u16>().ok());
    let (lo, hi) = (it.next()??, it.next()??);
    (lo <= hi).then_some(lo..=hi)
}

/// The ports from [`LOWEST`] up that lie outside `ephemeral`, as spans; empty when there are fewer
/// than [`ENOUGH`] of them.
fn outside(ephemeral: &RangeInclusive<u16>) -> Vec<RangeInclusive<u16>> {
    let mut spans = Vec::new();
    if *ephemeral.start() > LOWEST {
        spans.push(LOWEST..=ephemeral.start() - 1);
    }
    if *ephemeral.end() < u16::MAX {
        spans.push((ephemeral.end() + 1).max(LOWEST)..=u16::MAX);
    }
    let total: usize = spans.iter().map(|r| r.len()).sum();
    if total < ENOUGH {
        spans.clear();
    }
    spans
}

/// The `n`-th port of `spans` (modulo their total size).
fn nth_port(spans: &[RangeInclusive<u16>], n: u64) -> Option<u16> {
    let total: u64 = spans.iter().map(|r| r.len() as u64).sum();
    let mut i = n.checked_rem(total)?;
    for r in spans {
        let len = r.len() as u64;
        if i < len {
            return u16::try_from(u64::from(*r.start()) + i).ok();
        }
        i -= len;
    }
    None
}

/// A port that TCP and UDP could both bind on 127.0.0.1 just now, never handed out before by this
/// process, outside the kernel's ephemeral range when that leaves room (see the module's doc).
/// Another program of the machine may still take it before ours binds it; callers that start a
/// server on it should treat "address in use" as a reason to retry with a new port.
pub fn free_port() -> Result<u16> {
    static SPANS: OnceLock<Vec<RangeInclusive<u16>>> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let spans = SPANS.get_or_init(|| ephemeral_range().map_or_else(Vec::new, |r| outside(&r)));
    if spans.is_empty() {
        return pick_port(handed_out(), || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)));
    }
    // A random start per process (test binaries of other checkouts may run at the same time
    // outside a network namespace), then a stride through the spans.
    static START: OnceLock<u64> = OnceLock::new();
    let start = *START.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    });
    pick_port(handed_out(), || {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = nth_port(spans, start.wrapping_add(k.wrapping_mul(7_919)))
            .ok_or_else(|| std::io::Error::other("no candidate port"))?;
        TcpListener::bind((Ipv4Addr::LOCALHOST, port))
    })
}

/// The loop of [`free_port`], with the set of ports already handed out and the source of TCP
/// listeners (whose port is the candidate) as parameters, so that tests can feed it chosen ports.
/// A candidate is taken while its TCP listener is still open and only if UDP binds the same number
/// too and it is not in `handed_out`; both sockets are closed before it is returned.
fn pick_port(
    handed_out: &Mutex<HashSet<u16>>,
    mut listener: impl FnMut() -> std::io::Result<TcpListener>,
) -> Result<u16> {
    let mut last_err = None;
    for _ in 0..ATTEMPTS {
        let tcp = match listener() {
            Ok(l) => l,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        let port = match tcp.local_addr() {
            Ok(a) => a.port(),
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, port));
        if let Err(e) = udp {
            last_err = Some(e);
            continue;
        }
        let mut set = handed_out.lock().unwrap_or_else(|e| e.into_inner());
        if set.insert(port) {
            return Ok(port);
        }
    }
    Err(HarnessError::Tool {
        what: "find a free TCP+UDP port on 127.0.0.1".into(),
        detail: format!("{ATTEMPTS} attempts failed; last error: {last_err:?}"),
    })
}

/// `127.0.0.1:port` for a fresh [`free_port`].
pub fn free_addr() -> Result<SocketAddr> {
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use std::time::{Duration, Instant};

    /// Binds TCP and UDP on `port`, retrying for a while on "address in use": other tests of this
    /// binary run in parallel and may hold a kernel-picked port (bound to port 0) for a moment, so
    /// a port that was free when it was picked can be busy now through no fault of `free_port`.
    fn bind_both(port: u16) -> std::io::Result<(TcpListener, UdpSocket)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let both = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
                .and_then(|t| Ok((t, UdpSocket::bind((Ipv4Addr::LOCALHOST, port))?)));
            match both {
                Err(e) if e.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    #[test]
    fn ports_are_distinct_and_bindable() {
        let mut seen = HashSet::new();
        for _ in 0..20 {
            let p = free_port().unwrap();
            assert!(seen.insert(p), "port {p} handed out twice");
            // Right after picking (not after picking all twenty, which left a long window for
            // parallel tests to take one).
            let both = bind_both(p);
            assert!(both.is_ok(), "port {p}: {both:?}");
        }
    }

    /// A TCP listener and a UDP socket that we hold on the same port number.
    fn hold_both() -> (TcpListener, UdpSocket) {
        for _ in 0..ATTEMPTS {
            let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let port = tcp.local_addr().unwrap().port();
            if let Ok(udp) = UdpSocket::bind((Ipv4Addr::LOCALHOST, port)) {
                return (tcp, udp);
            }
        }
        panic!("no port with both TCP and UDP free in {ATTEMPTS} attempts");
    }

    #[test]
    fn a_port_whose_udp_side_is_taken_is_skipped() {
        let set = Mutex::new(HashSet::new());
        // We hold UDP on `taken`, and offer its TCP listener first.
        let (tcp, udp) = hold_both();
        let taken = tcp.local_addr().unwrap().port();
        let mut offered = Vec::new();
        let got = pick_port(&set, || {
            let l = if offered.is_empty() {
                tcp.try_clone()?
            } else {
                TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            };
            offered.push(l.local_addr()?.port());
            Ok(l)
        })
        .unwrap();
        assert_eq!(offered.first(), Some(&taken));
        assert_ne!(got, taken);
        assert_eq!(offered.last(), Some(&got));
        assert!(!set.lock().unwrap().contains(&taken));
        drop(udp);
    }

    #[test]
    fn a_port_handed_out_before_is_never_handed_out_again() {
        let set = Mutex::new(HashSet::new());
        // Offer the same port every time: the first pick gets it, the second refuses it ATTEMPTS
        // times. (We hold its TCP side; pick_port binds UDP itself, so release ours first.)
        let (tcp, udp) = hold_both();
        drop(udp);
        let port = tcp.local_addr().unwrap().port();
        let first = pick_port(&set, || tcp.try_clone()).unwrap();
        assert_eq!(first, port);
        let mut tries = 0;
        let second = pick_port(&set, || {
            tries += 1;
            tcp.try_clone()
        });
        assert!(second.is_err(), "{second:?}");
        assert_eq!(tries, ATTEMPTS);
    }

    #[test]
    fn ports_come_from_outside_the_ephemeral_range() {
        let Some(ephemeral) = ephemeral_range() else {
            return; // not Linux: nothing to check
        };
        let spans = outside(&ephemeral);
        for _ in 0..20 {
            let p = free_port().unwrap();
            if !spans.is_empty() {
                assert!(!ephemeral.contains(&p), "{p} is in {ephemeral:?}");
                assert!(p >= LOWEST, "{p}");
            }
        }
    }

    #[test]
    fn ranges_outside_the_ephemeral_one() {
        assert_eq!(parse_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_range("60999 32768"), None);
        assert_eq!(parse_range("x"), None);
        let spans = outside(&(32768..=60999));
        assert_eq!(spans, vec![10_000..=32767, 61000..=65535]);
        // 22768 ports below, 4536 above: the n-th wraps around both.
        assert_eq!(nth_port(&spans, 0), Some(10_000));
        assert_eq!(nth_port(&spans, 22_767), Some(32_767));
        assert_eq!(nth_port(&spans, 22_768), Some(61_000));
        assert_eq!(nth_port(&spans, 22_768 + 4_535), Some(65_535));
        assert_eq!(nth_port(&spans, 22_768 + 4_536), Some(10_000));
        // An ephemeral range covering nearly everything leaves too little room.
        assert!(outside(&(1024..=65000)).is_empty());
        assert_eq!(outside(&(1024..=60000)), vec![60001..=65535]);
        assert_eq!(nth_port(&[], 3), None);
    }

    #[test]
    fn failing_listeners_give_an_error_naming_the_last_cause() {
        let set = Mutex::new(HashSet::new());
        let err = pick_port(&set, || {
            Err(std::io::Error::new(ErrorKind::AddrInUse, "no ports left"))
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("no ports left"), "{err}");
        assert!(err.contains(&format!("{ATTEMPTS} attempts")), "{err}");
    }
}
