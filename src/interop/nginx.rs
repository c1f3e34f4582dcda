//! A real web server for tests: Debian's `nginx` on a free loopback port, run from its own prefix and
//! configuration in a temp dir, as a TLS front (a reverse proxy) for a plain HTTP server such as
//! opentracker, or as a web seed serving a directory ([`Nginx::files`]); plus [`TestPki`], a throwaway CA and server certificate made with `rcgen`.
//!
//! How it runs (all facts of `nginx -h` / the nginx docs):
//! - `-p DIR/ -c DIR/nginx.conf -e DIR/error.log`: every path it uses is in the temp dir (the pid
//!   file, logs and the temp paths, which otherwise default to `/var/lib/nginx`).
//! - `daemon off;` and `master_process off;`: one foreground process that serves connections itself,
//!   so stopping its PID stops all of it (a master would leave workers behind if it were killed).
//!   With no worker processes there is no switch to `nobody`, so the test's files need no extra
//!   permissions; `user root;` is not needed either.
//! - It binds 127.0.0.1 only; a port taken meanwhile makes it exit (after about two seconds of
//!   retrying the bind), and [`Nginx::start`] retries on another one. It counts as ready only
//!   once its pid file exists, which nginx writes after binding. [`crate::interop::ChildGuard`] bounds its run time.

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::ports::free_port;
use super::process::{wait_for, ChildGuard, HarnessError, Result};

/// Where Debian installs nginx.
pub const NGINX: &str = "/usr/sbin/nginx";

/// How long nginx gets to start accepting connections.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A test certificate authority and one server certificate it signed, all in PEM.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA's certificate: the bundle a client must trust.
    pub ca_pem: String,
    /// The server's certificate.
    pub cert_pem: String,
    /// The server's private key (PKCS#8).
    pub key_pem: String,
}

impl TestPki {
    /// A fresh CA named `ca_name` and a server certificate for `names` (DNS names or IP address
    /// literals such as `127.0.0.1`, which become IP subject alternative names).
    pub fn new(ca_name: &str, names: &[&str]) -> Result<TestPki> {
        let fail = |what: &str| {
            let what = what.to_owned();
            move |e: rcgen::Error| HarnessError::Tool {
                what: format!("make the test PKI: {what}"),
                detail: e.to_string(),
            }
        };
        let ca_key = rcgen::KeyPair::generate().map_err(fail("CA key"))?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail("CA"))?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        let ca_cert = ca.self_signed(&ca_key).map_err(fail("CA certificate"))?;
        let key = rcgen::KeyPair::generate().map_err(fail("server key"))?;
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut leaf = rcgen::CertificateParams::new(names).map_err(fail("server names"))?;
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "hyperblow test server");
        let cert = leaf
            .signed_by(&key, &ca_cert, &ca_key)
            .map_err(fail("server certificate"))?;
        Ok(TestPki {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the CA bundle to `path` (for `SSL_CERT_FILE` or a session's `tls_roots`).
    pub fn write_ca(&self, path: &Path) -> Result<PathBuf> {
        fs::write(path, &self.ca_pem).map_err(HarnessError::io("write the CA bundle"))?;
        Ok(path.to_owned())
    }
}

/// A running nginx, stopped by PID when dropped.
#[derive(Debug)]
pub struct Nginx {
    // Field order matters: the process is stopped before its directory is removed.
    proc: ChildGuard,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx on a free port of 127.0.0.1 serving HTTPS with `pki`'s server certificate and
    /// passing every request on to the plain HTTP server at `upstream` (a TLS front for a tracker).
    /// `bound` is its hard run-time bound.
    pub fn tls_proxy(upstream: SocketAddr, pki: &TestPki, bound: Duration) -> Result<Nginx> {
        let server = format!(
            "        location / {{\n            proxy_pass http://{upstream};\n            \
             proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n        }}\n"
        );
        Nginx::start(Some(pki), &server, bound)
    }

    /// Starts nginx serving the files under `root` (a web seed), over HTTPS when `pki` is given.
    /// `extra` goes inside the `location` before `root` (e.g. an `if` that answers `503`). With
    /// `sendfile` and long keep-alive, as a download mirror would run.
    pub fn files(
        root: &Path,
        pki: Option<&TestPki>,
        extra: &str,
        bound: Duration,
    ) -> Result<Nginx> {
        let server = format!(
            "        sendfile on;\n        tcp_nopush on;\n        keepalive_requests 100000;\n        \
             location / {{\n{extra}            root {};\n        }}\n",
            root.display()
        );
        Nginx::start(pki, &server, bound)
    }

    /// Starts nginx with `locations` (the inside of a `server { }` block, after `listen`) and TLS
    /// when `pki` is given. Waits until it accepts connections.
    pub fn start(pki: Option<&TestPki>, locations: &str, bound: Duration) -> Result<Nginx> {
        let mut last_err = None;
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("hb-nginx-")
                .tempdir()
                .map_err(HarnessError::io("create the nginx dir"))?;
            let port = free_port()?;
            let conf = config(dir.path(), port, pki, locations)?;
            let mut cmd = Command::new(NGINX);
            cmd.current_dir(dir.path())
                .arg("-p")
                .arg(format!("{}/", dir.path().display()))
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(dir.path().join("error.log"));
            let proc = ChildGuard::spawn("nginx", &cmd, dir.path(), bound)?;
            let nginx = Nginx { proc, port, dir };
            match nginx.wait_ready() {
                Ok(()) => return Ok(nginx),
                // Exited at once: most likely the port was taken meanwhile; try another one.
                Err(e @ HarnessError::Exited { .. }) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| HarnessError::Tool {
            what: "start nginx".into(),
            detail: "no attempt was made".into(),
        }))
    }

    /// Waits until this nginx has bound its port and accepts on it.
    ///
    /// A connection alone does not prove it: when another program took the port between
    /// [`free_port`] and nginx's `bind`, nginx retries the bind for about two seconds before it
    /// exits, and meanwhile the other program accepts our probe. nginx writes its pid file only
    /// after every listening socket is bound, so the pid file holding our child's PID is the proof
    /// that the port is nginx's.
    fn wait_ready(&self) -> Result<()> {
        let addr = self.addr();
        let pid_file = self.dir.path().join("nginx.pid");
        let ours = self.proc.pid().to_string();
        wait_for(
            &format!("nginx on {addr} to bind and accept"),
            READY_TIMEOUT,
            &[&self.proc],
            || {
                let bound = fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == ours);
                Ok(
                    (bound
                        && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
                    .then_some(()),
                )
            },
        )
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The server's process (PID, logs).
    pub fn process(&self) -> &ChildGuard {
        &self.proc
    }

    /// The access log so far (one line per request), for assertions on what reached the server.
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Waits (up to `timeout`) until the access log holds every one of `needles`, and returns it.
    /// nginx writes a request's line after its response has gone out, so a client that has its
    /// answer may still find the line missing for a moment; an `Err` carries the log as it was.
    pub fn wait_access_log(&self, needles: &[&str], timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.access_log();
            if needles.iter().all(|n| log.contains(n)) {
                return Ok(log);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "nginx's access log lacks one of {needles:?} after {timeout:?}:\n{log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The error log so far (TLS handshake failures show here at `info` level).
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// Writes `nginx.conf` (and the certificate files) into `dir`; returns the config's path.
fn config(dir: &Path, port: u16, pki: Option<&TestPki>, locations: &str) -> Result<PathBuf> {
    let d = dir.display();
    for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        fs::create_dir_all(dir.join("tmp").join(sub))
            .map_err(HarnessError::io("create the nginx temp dirs"))?;
    }
    let mut listen = format!("        listen 127.0.0.1:{port}");
    let mut tls = String::new();
    if let Some(pki) = pki {
        fs::write(dir.join("server.crt"), &pki.cert_pem)
            .map_err(HarnessError::io("write the server certificate"))?;
        fs::write(dir.join("server.key"), &pki.key_pem)
            .map_err(HarnessError::io("write the server key"))?;
        listen.push_str(" ssl");
        let _ = write!(
            tls,
            "        ssl_certificate {d}/server.crt;\n        ssl_certificate_key {d}/server.key;\n"
        );
    }
    listen.push_str(";\n");
    let text = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{\n    worker_connections 256;\n}}\n\
         http {{\n    access_log {d}/access.log;\n\
         \x20   client_body_temp_path {d}/tmp/body;\n    proxy_temp_path {d}/tmp/proxy;\n\
         \x20   fastcgi_temp_path {d}/tmp/fastcgi;\n    uwsgi_temp_path {d}/tmp/uwsgi;\n\
         \x20   scgi_temp_path {d}/tmp/scgi;\n\
         \x20   server {{\n{listen}{tls}{locations}    }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    fs::write(&path, text).map_err(HarnessError::io("write nginx.conf"))?;
    Ok(path)
}
