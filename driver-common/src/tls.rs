//! TLS for `https://` trackers, written once for every runtime.
//!
//! rustls is itself sans-IO: a [`ClientConnection`] takes ciphertext in (`read_tls`) and gives ciphertext
//! out (`write_tls`). [`TlsStream`] drives one over any `futures-io` reader and writer (the halves a
//! [`crate::Runtime`] connects), and is itself an [`AsyncRead`] + [`AsyncWrite`] of plaintext, so the
//! shared connection tasks run on it unchanged.
//!
//! Trust: the crypto provider is `ring` (no OpenSSL, no aws-lc build). Certificates are verified
//! against the operating system's root store, read by `rustls-native-certs` (on Debian the
//! `ca-certificates` bundle), unless a PEM bundle is named: [`TlsRoots::File`] (the session's
//! `tls_roots` setting) or, as OpenSSL-based tools do, the `SSL_CERT_FILE` environment variable. A named
//! bundle *replaces* the system roots. A certificate that does not verify fails the connection with
//! rustls' reason; there is never a fallback to plain HTTP.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures::io::{AsyncRead, AsyncWrite};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// The environment variable naming a PEM bundle that replaces the system's roots.
pub const SSL_CERT_FILE: &str = "SSL_CERT_FILE";

/// Size of the ciphertext read buffer: one full TLS record (16 KiB plus overhead).
const CIPHERTEXT_BUF: usize = 16 * 1024 + 256;

/// Where trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsRoots {
    /// The PEM bundle named by `SSL_CERT_FILE` when it is set and not empty, else the system's store.
    System,
    /// Only the certificates of this PEM bundle.
    File(PathBuf),
}

impl TlsRoots {
    /// The roots a session uses: `explicit` if given, else [`TlsRoots::System`] (which still honours
    /// `SSL_CERT_FILE`).
    pub fn from_setting(explicit: Option<&Path>) -> TlsRoots {
        match explicit {
            Some(p) => TlsRoots::File(p.to_owned()),
            None => TlsRoots::System,
        }
    }

    /// Loads the certificates into a root store. Errors name the file or the system store, so a
    /// misconfigured bundle is a clear message rather than an empty store that trusts nothing.
    pub fn load(&self) -> Result<RootCertStore, String> {
        let file = match self {
            TlsRoots::File(p) => Some(p.clone()),
            TlsRoots::System => std::env::var_os(SSL_CERT_FILE)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        };
        let mut store = RootCertStore::empty();
        match file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(&path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("reading CA bundle {}: {e}", path.display()))?;
                let (added, _ignored) = store.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!(
                        "CA bundle {} holds no usable certificate",
                        path.display()
                    ));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _ignored) = store.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why = found
                        .errors
                        .first()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default();
                    return Err(format!(
                        "no trusted root certificates found in the system store{why} \
                         (set {SSL_CERT_FILE} to a PEM bundle)"
                    ));
                }
            }
        }
        Ok(store)
    }

    /// A client configuration (ring provider, TLS 1.2 and 1.3, no client certificate) trusting these
    /// roots.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let roots = self.load()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// The client configuration a session's TLS connections share, built from its [`TlsRoots`] on first use
/// (reading the system store costs a few milliseconds, so sessions without `https://` trackers never
/// pay it) and kept, error included, for the session's life.
#[derive(Debug)]
pub struct TlsClient {
    roots: TlsRoots,
    config: std::sync::OnceLock<Result<Arc<ClientConfig>, String>>,
}

impl TlsClient {
    /// A client that will trust `roots`.
    pub fn new(roots: TlsRoots) -> TlsClient {
        TlsClient {
            roots,
            config: std::sync::OnceLock::new(),
        }
    }

    /// The shared configuration, loading the roots the first time.
    pub fn config(&self) -> Result<Arc<ClientConfig>, String> {
        self.config
            .get_or_init(|| self.roots.client_config())
            .clone()
    }
}

/// A client TLS session over a reader and a writer of ciphertext, readable and writable as plaintext.
///
/// Open it with [`TlsStream::connect`] (which completes the handshake, so certificate errors surface
/// there). Buffers are bounded: one ciphertext record read ahead, and a write accepts plaintext only
/// once the ciphertext of the previous one is on the wire.
pub struct TlsStream<R, W> {
    reader: R,
    writer: W,
    conn: ClientConnection,
    /// Ciphertext read from the socket; `rbuf[rpos..rlen]` is not yet given to rustls.
    rbuf: Box<[u8]>,
    rpos: usize,
    rlen: usize,
    /// The socket reached its end (and rustls was told).
    eof: bool,
    /// Ciphertext from rustls; `wbuf[wpos..]` is not yet written.
    wbuf: Vec<u8>,
    wpos: usize,
    /// Plaintext bytes a `poll_write` handed to rustls whose ciphertext is still going out: the count
    /// it returns once that is done (see [`AsyncWrite::poll_write`] below).
    accepted: Option<usize>,
    /// `close_notify` was queued.
    closing: bool,
}

impl<R, W> fmt::Debug for TlsStream<R, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("handshaking", &self.conn.is_handshaking())
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

/// Turns a rustls error into an I/O error that keeps its message.
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<R, W> TlsStream<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Runs the handshake with `server_name` (a host name or an IP address literal, which the
    /// certificate must match) over `reader` and `writer`. The error says what failed, e.g.
    /// `invalid peer certificate: UnknownIssuer`. No timeout here: the caller adds one.
    pub async fn connect(
        config: Arc<ClientConfig>,
        server_name: &str,
        reader: R,
        writer: W,
    ) -> io::Result<Self> {
        let name = ServerName::try_from(server_name.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{server_name:?} is not a valid TLS server name: {e}"),
            )
        })?;
        let conn = ClientConnection::new(config, name).map_err(tls_error)?;
        let mut stream = TlsStream {
            reader,
            writer,
            conn,
            rbuf: vec![0; CIPHERTEXT_BUF].into_boxed_slice(),
            rpos: 0,
            rlen: 0,
            eof: false,
            wbuf: Vec::new(),
            wpos: 0,
            accepted: None,
            closing: false,
        };
        futures::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_send_tls(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection during the TLS handshake",
                )));
            }
            if let Err(e) = ready!(self.poll_take_tls(cx)) {
                // Tell the server why (a certificate alert), as far as the socket takes it at once.
                let _ = self.poll_send_tls(cx);
                return Poll::Ready(Err(e));
            }
        }
    }

    /// Writes every byte of ciphertext rustls has queued.
    fn poll_send_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Some(rest) = self.wbuf.get(self.wpos..).filter(|r| !r.is_empty()) {
                let n = ready!(Pin::new(&mut self.writer).poll_write(cx, rest))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.wpos += n;
                continue;
            }
            self.wbuf.clear();
            self.wpos = 0;
            if !self.conn.wants_write() {
                return Poll::Ready(Ok(()));
            }
            self.conn.write_tls(&mut self.wbuf)?;
        }
    }

    /// Gives rustls one more piece of ciphertext (reading the socket when none is buffered) and lets
    /// it process what it has. Ready means progress: new plaintext, handshake state, or the end.
    fn poll_take_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.rpos >= self.rlen && !self.eof {
            let n = ready!(Pin::new(&mut self.reader).poll_read(cx, &mut self.rbuf))?;
            if n == 0 {
                self.eof = true;
                // An empty read tells rustls the transport ended.
                self.conn.read_tls(&mut io::empty())?;
            } else {
                self.rpos = 0;
                self.rlen = n.min(self.rbuf.len());
            }
        }
        if let Some(mut pending) = self
            .rbuf
            .get(self.rpos..self.rlen)
            .filter(|p| !p.is_empty())
        {
            let n = self.conn.read_tls(&mut pending)?;
            self.rpos += n;
        }
        self.conn.process_new_packets().map_err(tls_error)?;
        Poll::Ready(Ok(()))
    }
}

impl<R, W> AsyncRead for TlsStream<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Plaintext from the server. `Ok(0)` after the server's `close_notify`; a connection that ends
    /// without one is an `UnexpectedEof` error (a truncated body must not look complete).
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            match this.conn.reader().read(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if this.eof && this.rpos >= this.rlen {
                // rustls knows of the end and still has nothing: treat as truncation.
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            // Answers rustls owes the server (alerts, key updates) go out first.
            ready!(this.poll_send_tls(cx))?;
            ready!(this.poll_take_tls(cx))?;
        }
    }
}

impl<R, W> AsyncWrite for TlsStream<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Encrypts `buf` and returns once its ciphertext is written. If this returns `Pending` after rustls
    /// took the bytes, the next call (with the same buffer, as the writer contract asks) only finishes
    /// sending them and reports their count.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.accepted.is_none() {
            ready!(this.poll_send_tls(cx))?;
            let n = this.conn.writer().write(buf)?;
            this.accepted = Some(n);
        }
        ready!(this.poll_send_tls(cx))?;
        Poll::Ready(Ok(this.accepted.take().unwrap_or(0)))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_tls(cx))?;
        Pin::new(&mut this.writer).poll_flush(cx)
    }

    /// Sends `close_notify`, then closes the writer.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.closing = true;
            this.conn.send_close_notify();
        }
        ready!(this.poll_send_tls(cx))?;
        Pin::new(&mut this.writer).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::{AllowStdIo, AsyncReadExt, AsyncWriteExt};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use std::net::{TcpListener, TcpStream};

    /// Runs a future over blocking sockets (`AllowStdIo` never returns `Pending`; the loop is a guard).
    fn run<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::yield_now();
        }
    }

    /// A test CA and a server certificate it signed for `names`.
    struct Pki {
        ca_pem: String,
        chain: Vec<CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    }

    fn pki(names: &[&str]) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own, so another test CA is a different issuer (not a bad signature).
        ca.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!(
                "Hyperblow test CA {:x}",
                ca_key.public_key_raw()[..8]
                    .iter()
                    .fold(0u64, |a, b| a << 8 | u64::from(*b))
            ),
        );
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let leaf = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca_cert, &ca_key)
            .unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            chain: vec![leaf.der().clone()],
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    /// A one-connection TLS echo server on loopback that upper-cases what it gets, then closes.
    fn tls_server(
        pki: &Pki,
    ) -> (
        std::net::SocketAddr,
        std::thread::JoinHandle<io::Result<()>>,
    ) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(pki.chain.clone(), pki.key.clone_key())
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::new(config);
        let handle = std::thread::spawn(move || {
            let (tcp, _) = listener.accept()?;
            let conn = rustls::ServerConnection::new(config).map_err(tls_error)?;
            let mut s = rustls::StreamOwned::new(conn, tcp);
            let mut got = [0u8; 5];
            s.read_exact(&mut got)?;
            s.write_all(&got.to_ascii_uppercase())?;
            s.conn.send_close_notify();
            s.flush()?;
            Ok(())
        });
        (addr, handle)
    }

    fn roots_from(pem: &str) -> (tempfile::TempDir, TlsRoots) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, pem).unwrap();
        (dir, TlsRoots::File(path))
    }

    fn dial(
        roots: &TlsRoots,
        name: &str,
        addr: std::net::SocketAddr,
    ) -> io::Result<TlsStream<AllowStdIo<TcpStream>, AllowStdIo<TcpStream>>> {
        let tcp = TcpStream::connect(addr)?;
        let config = roots.client_config().map_err(io::Error::other)?;
        run(TlsStream::connect(
            config,
            name,
            AllowStdIo::new(tcp.try_clone()?),
            AllowStdIo::new(tcp),
        ))
    }

    #[test]
    fn talks_to_a_server_whose_certificate_chains_to_the_named_bundle() {
        let pki = pki(&["tracker.test", "127.0.0.1"]);
        let (_dir, roots) = roots_from(&pki.ca_pem);
        for name in ["tracker.test", "127.0.0.1"] {
            let (addr, server) = tls_server(&pki);
            let mut s = dial(&roots, name, addr).unwrap();
            run(async {
                s.write_all(b"hello").await.unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                assert_eq!(got, b"HELLO");
                s.close().await.unwrap();
            });
            server.join().unwrap().unwrap();
        }
    }

    #[test]
    fn refuses_an_untrusted_certificate_and_a_wrong_name() {
        let pki = pki(&["tracker.test"]);
        let other = self::pki(&["tracker.test"]);
        let (_dir, wrong_ca) = roots_from(&other.ca_pem);
        let (addr, server) = tls_server(&pki);
        let err = dial(&wrong_ca, "tracker.test", addr).unwrap_err();
        assert!(
            err.to_string().contains("invalid peer certificate")
                && err.to_string().contains("UnknownIssuer"),
            "{err}"
        );
        assert!(server.join().unwrap().is_err());
        let (_dir2, right_ca) = roots_from(&pki.ca_pem);
        let (addr, server) = tls_server(&pki);
        let err = dial(&right_ca, "elsewhere.test", addr).unwrap_err();
        assert!(
            err.to_string().contains("invalid peer certificate"),
            "{err}"
        );
        assert!(err.to_string().contains("not valid for name"), "{err}");
        assert!(server.join().unwrap().is_err());
    }

    #[test]
    fn a_missing_or_empty_bundle_is_a_clear_error() {
        let missing = TlsRoots::File(PathBuf::from("/nonexistent/ca.pem"));
        let err = missing.client_config().unwrap_err();
        assert!(
            err.contains("reading CA bundle /nonexistent/ca.pem"),
            "{err}"
        );
        let (_dir, empty) = roots_from("not a certificate\n");
        let err = empty.client_config().unwrap_err();
        assert!(err.contains("holds no usable certificate"), "{err}");
    }

    #[test]
    fn a_plain_http_server_fails_the_handshake() {
        let pki = pki(&["tracker.test"]);
        let (_dir, roots) = roots_from(&pki.ca_pem);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut tcp, _) = listener.accept().unwrap();
            let mut first = [0u8; 1];
            let _ = tcp.read(&mut first);
            let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        });
        let err = dial(&roots, "tracker.test", addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        server.join().unwrap();
    }
}
