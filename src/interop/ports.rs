//! Free loopback ports for real programs.
//!
//! A port is free when both TCP and UDP can bind it on 127.0.0.1 (trackers use both, peers use
//! TCP and libtorrent also opens uTP on the same number). The kernel picks a TCP port (bind to port
//! 0), UDP is tried on the same number, and both are released before the port is handed out. A
//! process-wide set keeps this test binary from handing out the same port twice, since tests run in
//! parallel and a released port can be picked again by the kernel a moment later.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::{Mutex, OnceLock};

use super::process::{HarnessError, Result};

/// How many kernel-picked ports to try before giving up.
const ATTEMPTS: usize = 64;

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static SET: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A port that TCP and UDP could both bind on 127.0.0.1 just now, never handed out before by this
/// process. Another program may still take it before ours binds it; callers that start a server
/// on it should treat "address in use" as a reason to retry with a new port.
pub fn free_port() -> Result<u16> {
    pick_port(handed_out(), || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
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
