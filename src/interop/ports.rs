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
    let mut last_err = None;
    for _ in 0..ATTEMPTS {
        let tcp = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) {
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
        let mut set = handed_out().lock().unwrap_or_else(|e| e.into_inner());
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

    #[test]
    fn ports_are_distinct_and_bindable() {
        let ports: Vec<u16> = (0..20).map(|_| free_port().unwrap()).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        for p in ports {
            let _tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, p)).unwrap();
            let _udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, p)).unwrap();
        }
    }
}
