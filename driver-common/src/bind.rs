//! Binding the session's TCP listener and UDP socket. The unspecified IPv6 address `::` (the
//! default) means both families: one socket with `IPV6_V6ONLY` off, which takes IPv4 peers as
//! IPv4-mapped addresses (`::ffff:a.b.c.d`) on the same port; [`canonical`] turns those back into
//! IPv4 and [`for_socket`] maps IPv4 destinations for it. A host without IPv6 falls back to
//! `0.0.0.0`. Any other address binds that family (and address) only.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// Whether `ip` asks for both families.
pub(crate) fn is_dual(ip: IpAddr) -> bool {
    ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
}

fn socket(addr: SocketAddr, ty: Type, protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
    if addr.is_ipv6() {
        // Dual-stack for `::`; a specific IPv6 address takes IPv6 only either way.
        socket.set_only_v6(!is_dual(addr.ip()))?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn with_fallback<T>(addr: SocketAddr, bind: impl Fn(SocketAddr) -> io::Result<T>) -> io::Result<T> {
    match bind(addr) {
        Err(e) if is_dual(addr.ip()) && no_ipv6(&e) => bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            addr.port(),
        )),
        r => r,
    }
}

/// Whether binding `::` failed for want of IPv6 (switched off in the kernel: EAFNOSUPPORT or
/// EADDRNOTAVAIL) rather than for a reason IPv4 would share (port in use, permission).
fn no_ipv6(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
    )
}

/// A non-blocking TCP listener on `addr` (dual-stack for `[::]`).
pub(crate) fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    with_fallback(addr, |addr| {
        let s = socket(addr, Type::STREAM, Protocol::TCP)?;
        // As std does on Unix: a restarted client can listen on its port again at once.
        #[cfg(unix)]
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        Ok(s.into())
    })
}

/// A non-blocking UDP socket on `addr` (dual-stack for `[::]`).
pub(crate) fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    with_fallback(addr, |addr| {
        let s = socket(addr, Type::DGRAM, Protocol::UDP)?;
        s.bind(&addr.into())?;
        Ok(s.into())
    })
}

/// How often [`tcp_and_udp`] tries again when the port the kernel picked for TCP is taken for UDP.
const PAIR_ATTEMPTS: usize = 16;

/// Which of the two sockets [`tcp_and_udp`] could not bind.
#[derive(Debug)]
pub(crate) enum PairError {
    /// The TCP listener, at this address.
    Tcp(SocketAddr, io::Error),
    /// The UDP socket, at this address.
    Udp(SocketAddr, io::Error),
}

/// The TCP listener and the UDP socket on the same port number, as other clients do: UDP trackers,
/// the DHT (and later uTP) answer on the port peers know. Port 0 picks a port free for both (a port
/// the kernel gave TCP may be taken for UDP: then another is tried).
pub(crate) fn tcp_and_udp(
    ip: IpAddr,
    port: u16,
) -> Result<(std::net::TcpListener, std::net::UdpSocket), PairError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let tcp_addr = SocketAddr::new(ip, port);
        let tcp = tcp_listener(tcp_addr).map_err(|e| PairError::Tcp(tcp_addr, e))?;
        let bound = tcp
            .local_addr()
            .map_err(|e| PairError::Tcp(tcp_addr, e))?
            .port();
        let udp_addr = SocketAddr::new(ip, bound);
        match udp_socket(udp_addr) {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e)
                if port == 0 && attempt < PAIR_ATTEMPTS && e.kind() == io::ErrorKind::AddrInUse =>
            {
                continue
            }
            Err(e) => return Err(PairError::Udp(udp_addr, e)),
        }
    }
}

/// `addr` with an IPv4-mapped IPv6 address turned back into IPv4 (what a dual-stack socket reports
/// for an IPv4 peer), so that the engine sees one address per peer whichever socket met it.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// The destination to hand a socket bound to `local`: an IPv4 address becomes IPv4-mapped for an
/// IPv6 (dual-stack) socket.
pub(crate) fn for_socket(to: SocketAddr, local: SocketAddr) -> SocketAddr {
    match (to, local) {
        (SocketAddr::V4(a), SocketAddr::V6(_)) => {
            SocketAddr::new(IpAddr::V6(a.ip().to_ipv6_mapped()), a.port())
        }
        _ => to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6_available() -> bool {
        std::net::UdpSocket::bind("[::1]:0").is_ok()
    }

    #[test]
    fn dual_stack_listener_takes_both_families_on_one_port() {
        let l = tcp_listener("[::]:0".parse().unwrap()).unwrap();
        let local = l.local_addr().unwrap();
        if !v6_available() {
            assert!(local.is_ipv4());
            return;
        }
        assert!(local.is_ipv6());
        let port = local.port();
        l.set_nonblocking(false).unwrap();
        for peer in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
            let c = std::net::TcpStream::connect(&peer).unwrap();
            let (_, remote) = l.accept().unwrap();
            assert_eq!(canonical(remote), c.local_addr().unwrap(), "{peer}");
        }
    }

    #[test]
    fn dual_stack_udp_talks_to_both_families() {
        let s = udp_socket("[::]:0".parse().unwrap()).unwrap();
        s.set_nonblocking(false).unwrap();
        let local = s.local_addr().unwrap();
        let mut peers = vec!["127.0.0.1:0"];
        if v6_available() {
            peers.push("[::1]:0");
        } else {
            assert!(local.is_ipv4());
        }
        for p in peers {
            let other = std::net::UdpSocket::bind(p).unwrap();
            let to = other.local_addr().unwrap();
            s.send_to(b"ping", for_socket(to, local)).unwrap();
            let mut buf = [0u8; 8];
            let (n, _) = other.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"ping");
            let dest = SocketAddr::new(to.ip(), local.port());
            other.send_to(b"pong", dest).unwrap();
            let (n, from) = s.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"pong");
            assert_eq!(canonical(from), to);
        }
    }

    #[test]
    fn tcp_and_udp_share_one_port_number() {
        let (tcp, udp) = tcp_and_udp("127.0.0.1".parse().unwrap(), 0).unwrap();
        let port = tcp.local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert_eq!(udp.local_addr().unwrap().port(), port);
        // A port taken for UDP by someone else is an error when asked for explicitly.
        drop(tcp);
        match tcp_and_udp("127.0.0.1".parse().unwrap(), port) {
            Err(PairError::Udp(addr, e)) => {
                assert_eq!(addr.port(), port);
                assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
            }
            other => panic!("expected a UDP error, got {other:?}"),
        }
        drop(udp);
    }

    #[test]
    fn explicit_addresses_bind_one_family() {
        let l = tcp_listener("0.0.0.0:0".parse().unwrap()).unwrap();
        assert!(l.local_addr().unwrap().is_ipv4());
        assert_eq!(
            canonical("[::ffff:10.1.2.3]:7".parse().unwrap()),
            "10.1.2.3:7".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            for_socket("10.1.2.3:7".parse().unwrap(), "[::]:1".parse().unwrap()),
            "[::ffff:10.1.2.3]:7".parse::<SocketAddr>().unwrap()
        );
        let v6: SocketAddr = "[2001:db8::1]:7".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
