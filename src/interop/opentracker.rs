//! A real tracker: Debian's `opentracker` on a free loopback port (TCP for HTTP, UDP for BEP 15),
//! plus small probes (an HTTP GET, a BEP 15 exchange) that tests and the readiness check use.
//!
//! Facts about Debian's build (opentracker -h, /etc/opentracker/opentracker.conf, README.Debian):
//! - It is compiled with `WANT_ACCESSLIST_WHITE`: only info-hashes listed (40 hex digits per line) in
//!   the file named by `access.whitelist` are served; any other gets "Requested download is not
//!   authorized for use with this tracker." There is no switch to turn that off.
//! - As root it chroots into `-d DIR` (default ".") and setuid()s to `-u USER` (default `nobody`),
//!   and the whitelist is (re)loaded by a thread *after* that, so its path must be relative to DIR
//!   and the file readable by `nobody`: the temp dir is made 0755 and the whitelist 0644 (a 0700 temp
//!   dir, tempfile's default, leaves the tracker with an empty whitelist).
//! - SIGHUP reloads the whitelist; the process stays in the foreground (no daemonizing).
//! - `-i 127.0.0.1 -p PORT -P PORT` binds TCP and UDP on loopback; a port already in use makes it
//!   exit at once, so [`Opentracker::start`] retries on a new port.
//! - It answers an announce with the announcing peer itself among the peers (a client must cope
//!   with its own address in the list), with interval 1700 s and min interval 850 s, so a leecher that
//!   announces before its seeder must re-announce by itself to find it.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hyperblow_core::tracker::http::TrackerUrl;
use hyperblow_core::tracker::udp::{AddressFamily, ConnectRequest, Request, Response};
use hyperblow_core::types::InfoHash;

use super::ports::free_port;
use super::process::{wait_for, ChildGuard, HarnessError, Result, Signal};

/// How long the tracker gets to start answering.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running opentracker, stopped by PID when dropped.
#[derive(Debug)]
pub struct Opentracker {
    // Field order matters: the process is stopped before its directory is removed.
    proc: ChildGuard,
    port: u16,
    dir: tempfile::TempDir,
}

impl Opentracker {
    /// Starts opentracker on a free loopback port serving exactly `whitelist`, and waits until it
    /// answers HTTP and UDP (at most [`READY_TIMEOUT`]). `bound` is its hard run-time bound.
    pub fn start(whitelist: &[InfoHash], bound: Duration) -> Result<Opentracker> {
        let program = "/usr/bin/opentracker";
        let mut last_err = None;
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("hb-opentracker-")
                .tempdir()
                .map_err(HarnessError::io("create the opentracker dir"))?;
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
                .map_err(HarnessError::io("chmod the opentracker dir"))?;
            write_whitelist(dir.path(), whitelist)?;
            let conf = dir.path().join("opentracker.conf");
            // Relative to the chroot (-d) directory: the whitelist is read after the chroot.
            fs::write(&conf, "access.whitelist whitelist\n")
                .map_err(HarnessError::io("write opentracker.conf"))?;
            let port = free_port()?;
            let mut cmd = Command::new(program);
            cmd.current_dir(dir.path())
                .arg("-f")
                .arg(&conf)
                .arg("-d")
                .arg(dir.path())
                .args(["-i", "127.0.0.1"])
                .args(["-p", &port.to_string(), "-P", &port.to_string()]);
            let proc = ChildGuard::spawn("opentracker", &cmd, dir.path(), bound)?;
            let tracker = Opentracker { proc, port, dir };
            match tracker.wait_ready(whitelist.first()) {
                Ok(()) => return Ok(tracker),
                // Exited at once: most likely the port was taken meanwhile; try another one.
                Err(e @ HarnessError::Exited { .. }) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| HarnessError::Tool {
            what: "start opentracker".into(),
            detail: "no attempt was made".into(),
        }))
    }

    /// Waits until TCP accepts, a BEP 15 connect is answered and (when there is one) an HTTP
    /// `started` announce of a whitelisted hash succeeds, which shows the whitelist is loaded; a
    /// `stopped` announce then takes the probe peer (`127.0.0.1:1`) out of the swarm again.
    ///
    /// The probe must be `started`: opentracker answers a `stopped` announce with success even for
    /// a hash that is not on its whitelist, so a `stopped` probe passes before a (re)load is done.
    fn wait_ready(&self, probe: Option<&InfoHash>) -> Result<()> {
        let addr = self.addr();
        wait_for(
            &format!("opentracker on {addr} to answer"),
            READY_TIMEOUT,
            &[&self.proc],
            || {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                    return Ok(None);
                }
                if udp_connect(addr, Duration::from_millis(200)).is_err() {
                    return Ok(None);
                }
                if let Some(ih) = probe {
                    let url = |event: &str| {
                        format!(
                            "{}?info_hash={}&peer_id=-HBPROBE-00000000000&port=1&uploaded=0&\
                             downloaded=0&left=0&compact=1&numwant=0&event={event}",
                            self.http_announce_url(),
                            hyperblow_core::tracker::http::percent_encode(ih.as_bytes())
                        )
                    };
                    let accepted = |event: &str| {
                        matches!(http_get(&url(event), Duration::from_millis(500)),
                            Ok(r) if r.status == 200 && !r.body_contains("failure reason"))
                    };
                    if !accepted("started") || !accepted("stopped") {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            },
        )
    }

    /// The port, on 127.0.0.1, for both TCP and UDP.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `http://127.0.0.1:PORT/announce`.
    pub fn http_announce_url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    /// `udp://127.0.0.1:PORT/announce`.
    pub fn udp_announce_url(&self) -> String {
        format!("udp://127.0.0.1:{}/announce", self.port)
    }

    /// The tracker's process (PID, logs, `stop`/`kill_now` to take it away mid-test).
    pub fn process(&self) -> &ChildGuard {
        &self.proc
    }

    /// The tracker's PID.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Stops the tracker now (by PID); the value can still be inspected afterwards.
    pub fn kill(&self) {
        self.proc.stop();
    }

    /// Replaces the whitelist and tells the tracker to reload it (SIGHUP); waits until an announce
    /// of the first hash is accepted.
    pub fn set_whitelist(&self, whitelist: &[InfoHash]) -> Result<()> {
        write_whitelist(self.dir.path(), whitelist)?;
        self.proc.signal(Signal::HUP)?;
        self.wait_ready(whitelist.first())
    }
}

fn write_whitelist(dir: &Path, whitelist: &[InfoHash]) -> Result<()> {
    let path = dir.join("whitelist");
    let text: String = whitelist.iter().map(|h| h.to_hex() + "\n").collect();
    // Write a new file and rename it over the old one, so a reload never sees half a list.
    let tmp = dir.join("whitelist.new");
    fs::write(&tmp, text).map_err(HarnessError::io("write the whitelist"))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))
        .map_err(HarnessError::io("chmod the whitelist"))?;
    fs::rename(&tmp, &path).map_err(HarnessError::io("rename the whitelist"))
}

/// An HTTP reply as [`http_get`] returns it.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// The body (everything after the header).
    pub body: Vec<u8>,
}

impl HttpReply {
    /// Whether the body contains `needle` (bytes compared as-is).
    pub fn body_contains(&self, needle: &str) -> bool {
        self.body
            .windows(needle.len().max(1))
            .any(|w| w == needle.as_bytes())
    }
}

/// A minimal HTTP/1.0 GET (the connection closes after the reply), bounded by `timeout` per
/// connect/read/write, with the reply capped at 1 MiB. Only for loopback test servers.
pub fn http_get(url: &str, timeout: Duration) -> Result<HttpReply> {
    let parsed = TrackerUrl::parse(url).map_err(|e| HarnessError::Tool {
        what: format!("parse {url}"),
        detail: e.to_string(),
    })?;
    let what = format!("GET {url}");
    let ip: Ipv4Addr = parsed.host().parse().map_err(|_| HarnessError::Tool {
        what: what.clone(),
        detail: "the harness only talks to numeric IPv4 hosts (127.0.0.1)".into(),
    })?;
    let addr = SocketAddr::from((ip, parsed.port()));
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(HarnessError::io(what.clone()))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(HarnessError::io(what.clone()))?;
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
        parsed.target(),
        parsed.host_header()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(HarnessError::io(what.clone()))?;
    let mut raw = Vec::new();
    stream
        .take(1 << 20)
        .read_to_end(&mut raw)
        .map_err(HarnessError::io(what.clone()))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| HarnessError::Tool {
            what: what.clone(),
            detail: format!("no end of header in {} bytes", raw.len()),
        })?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HarnessError::Tool {
            what: what.clone(),
            detail: format!("bad status line in {head:?}"),
        })?;
    Ok(HttpReply {
        status,
        body: raw[split + 4..].to_vec(),
    })
}

/// Sends one BEP 15 request and returns the raw datagram that answers it (the first one from
/// `tracker` whose action/transaction header echoes the request's transaction id), waiting at most
/// `timeout` (no retransmission: loopback does not lose datagrams). Raw, because trackers send
/// replies that a strict decoder rejects (see [`udp_exchange`]).
pub fn udp_exchange_raw(
    tracker: SocketAddr,
    request: &Request,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let what = format!("UDP tracker exchange with {tracker}");
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(HarnessError::io(what.clone()))?;
    sock.send_to(&request.to_bytes(), tracker)
        .map_err(HarnessError::io(what.clone()))?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HarnessError::Timeout {
                what,
                waited: timeout,
                logs: String::new(),
            });
        }
        sock.set_read_timeout(Some(left))
            .map_err(HarnessError::io(what.clone()))?;
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(HarnessError::io(what)(e)),
        };
        let datagram = buf.get(..n).unwrap_or_default();
        if from != tracker {
            continue;
        }
        if let Ok((_, tid)) = Response::peek_header(datagram) {
            if tid == request.transaction_id() {
                return Ok(datagram.to_vec());
            }
        }
    }
}

/// [`udp_exchange_raw`], decoded with hyperblow-core's strict BEP 15 decoder.
///
/// Quirk: Debian's opentracker answers an announce of a hash that is not on its whitelist with a
/// bare 8-byte header (action 1 = announce, the transaction id) instead of an action-3 error, which
/// this decoder rejects as a short announce reply.
pub fn udp_exchange(tracker: SocketAddr, request: &Request, timeout: Duration) -> Result<Response> {
    let raw = udp_exchange_raw(tracker, request, timeout)?;
    let family = AddressFamily::of(&tracker);
    Response::decode(&raw, family).map_err(|e| HarnessError::Tool {
        what: format!(
            "decode the UDP tracker reply from {tracker} ({} bytes)",
            raw.len()
        ),
        detail: e.to_string(),
    })
}

/// A BEP 15 connect: returns the connection id the tracker granted.
pub fn udp_connect(tracker: SocketAddr, timeout: Duration) -> Result<u64> {
    let tid = std::process::id() ^ 0x5a5a_0000;
    let req = Request::Connect(ConnectRequest {
        transaction_id: tid,
    });
    match udp_exchange(tracker, &req, timeout)? {
        Response::Connect(c) => Ok(c.connection_id),
        other => Err(HarnessError::Tool {
            what: format!("UDP connect to {tracker}"),
            detail: format!("unexpected reply {other:?}"),
        }),
    }
}
