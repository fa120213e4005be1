//! Mutual TLS for every control connection (node ↔ node, node ↔ manager).
//!
//! The cluster has one certificate authority (`handoff keys init`); every
//! node and the manager hold an end-entity certificate it issued (`handoff
//! keys issue`) whose DNS subject alternative name is the party's identity:
//! [`node_name`] (`node-3.handoff.cluster`) or [`MANAGER_NAME`]. Both ends
//! of a connection present their certificate and verify the other's chain
//! to the cluster CA (rustls, TLS 1.3 or 1.2, ring provider). The client
//! also checks the server's name; the server learns who the client claims
//! to be only from its first message, and checks that claim with
//! [`SecureStream::peer_is`] (RFC 6125 name matching by webpki).
//!
//! [`SecureStream`] is a TLS session over a blocking `TcpStream` that one
//! thread may read while another writes ([`SecureStream::try_clone`]):
//! the reader waits on the socket without holding the session's lock.

use rustls::{
    client::{danger::ServerCertVerifier, WebPkiServerVerifier},
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::WebPkiClientVerifier,
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
};
use std::{
    collections::VecDeque,
    fmt,
    io::{self, ErrorKind, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

/// The DNS domain every identity name is under.
pub const CLUSTER_DOMAIN: &str = "handoff.cluster";
/// The manager's identity name.
pub const MANAGER_NAME: &str = "manager.handoff.cluster";
/// How long a TLS handshake may take, however the peer paces its bytes.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Node `id`'s identity name: `node-<id>.handoff.cluster`.
pub fn node_name(id: u16) -> String {
    format!("node-{id}.{CLUSTER_DOMAIN}")
}

/// The TLS files could not be loaded or do not belong together.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A file holds no usable PEM object of the expected kind.
    #[error("{path}: no {what} in PEM form ({detail})")]
    Pem {
        /// File.
        path: PathBuf,
        /// What was expected: "certificate" or "private key".
        what: &'static str,
        /// The parser's message.
        detail: String,
    },
    /// The certificate does not chain to the cluster CA, or is not for `name`.
    #[error("{cert} is not a certificate for {name} issued by the cluster CA in {ca}: {detail}")]
    NotIssued {
        /// The end-entity certificate file.
        cert: PathBuf,
        /// The CA file.
        ca: PathBuf,
        /// The identity the certificate must name.
        name: String,
        /// Why webpki refused it.
        detail: String,
    },
    /// rustls refused the settings (e.g. the key does not match the certificate).
    #[error("TLS settings: {0}")]
    Settings(#[from] rustls::Error),
    /// The client-certificate verifier could not be built (an empty CA file).
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// Where a party's TLS files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This party's certificate chain (PEM), end-entity first.
    pub cert: PathBuf,
    /// This party's private key (PEM, PKCS#8), mode 0600.
    pub key: PathBuf,
}

/// The ring provider: the only one this build links.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.into(),
            what: "certificate",
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.into(),
            what: "certificate",
            detail: "the file is empty".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.into(),
        what: "private key",
        detail: e.to_string(),
    })
}

/// A TLS client configuration from `paths`: servers are verified against
/// the cluster CA (chain and name), and the client presents the certificate
/// and key of `paths`, whichever party they belong to. For the CLI's HTTPS
/// API client; daemons use [`TlsIdentity`].
pub fn client_config(paths: &TlsPaths) -> Result<Arc<ClientConfig>, TlsError> {
    let ca = read_certs(&paths.ca)?;
    let chain = read_certs(&paths.cert)?;
    let key = read_key(&paths.key)?;
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert)
            .map_err(|e| TlsError::Verifier(format!("{}: {e}", paths.ca.display())))?;
    }
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(chain, key)?,
    ))
}

/// One party's TLS identity: its certificate and key, and the cluster CA it
/// verifies peers by. Cheap to clone.
#[derive(Clone)]
pub struct TlsIdentity {
    name: String,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Loads `paths` and checks that the certificate chains to the CA and
    /// names `name` (e.g. [`node_name`]`(3)`) and that the key is its key.
    pub fn load(paths: &TlsPaths, name: &str) -> Result<Self, TlsError> {
        let ca = read_certs(&paths.ca)?;
        let chain = read_certs(&paths.cert)?;
        let key = read_key(&paths.key)?;
        let mut roots = RootCertStore::empty();
        for cert in &ca {
            roots.add(cert.clone()).map_err(|e| TlsError::NotIssued {
                cert: paths.cert.clone(),
                ca: paths.ca.clone(),
                name: name.into(),
                detail: format!("the CA certificate is unusable: {e}"),
            })?;
        }
        let roots = Arc::new(roots);
        let provider = provider();
        let server_verifier = WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let not_issued = |detail: String| TlsError::NotIssued {
            cert: paths.cert.clone(),
            ca: paths.ca.clone(),
            name: name.into(),
            detail,
        };
        let server_name = ServerName::try_from(name.to_string()).map_err(|e| not_issued(e.to_string()))?;
        server_verifier
            .verify_server_cert(&chain[0], &chain[1..], &server_name, &[], UnixTime::now())
            .map_err(|e| not_issued(e.to_string()))?;
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider))
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let client = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_webpki_verifier(server_verifier)
            .with_client_auth_cert(chain.clone(), key.clone_key())?;
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain, key)?;
        // No session resumption: control sessions are few and long.
        server.send_tls13_tickets = 0;
        Ok(Self {
            name: name.into(),
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }

    /// The identity name this party's certificate carries.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens a TLS session to the server `peer` (an identity name) over
    /// `socket`, within [`HANDSHAKE_TIMEOUT`]. Fails when the server's
    /// certificate is not the cluster CA's certificate for `peer`.
    pub fn connect(&self, socket: TcpStream, peer: &str) -> io::Result<SecureStream> {
        let name = ServerName::try_from(peer.to_string()).map_err(|e| io::Error::new(ErrorKind::InvalidInput, e))?;
        let conn = ClientConnection::new(Arc::clone(&self.client), name).map_err(io::Error::other)?;
        SecureStream::handshake(socket, conn.into(), HANDSHAKE_TIMEOUT)
    }

    /// Accepts a TLS session on `socket`, within [`HANDSHAKE_TIMEOUT`]. Fails
    /// when the client presents no certificate of the cluster CA.
    pub fn accept(&self, socket: TcpStream) -> io::Result<SecureStream> {
        let conn = ServerConnection::new(Arc::clone(&self.server)).map_err(io::Error::other)?;
        SecureStream::handshake(socket, conn.into(), HANDSHAKE_TIMEOUT)
    }
}

/// A reader with a settable read timeout, for frame reads with a deadline
/// ([`super::io::read_frame_within`]).
pub trait TimedRead: Read {
    /// The current read timeout.
    fn read_timeout(&self) -> io::Result<Option<Duration>>;
    /// Sets the read timeout (`None`: block).
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl TimedRead for TcpStream {
    fn read_timeout(&self) -> io::Result<Option<Duration>> {
        TcpStream::read_timeout(self)
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

/// What the reading and writing handles of a session share.
struct Session {
    conn: Connection,
    /// Plaintext taken out of `conn` and not read yet (rustls refuses more
    /// records while its own plaintext buffer is full).
    plaintext: VecDeque<u8>,
    /// The peer sent close_notify or closed the socket.
    closed: bool,
}

impl Session {
    /// Moves the plaintext rustls holds into `plaintext`.
    fn take_plaintext(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let mut reader = self.conn.reader();
        loop {
            match reader.read(&mut chunk) {
                Ok(0) => {
                    self.closed = true;
                    return Ok(());
                }
                Ok(n) => self.plaintext.extend(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Largest TLS record on the wire: 2^14 bytes of data plus header, padding
/// and tag (RFC 8446 §5.2).
const RECORD_MAX: usize = (1 << 14) + 256 + 5;

/// A TLS session over a blocking socket. Clones share the session: one
/// thread reads while others write. Read and write timeouts are the
/// socket's.
pub struct SecureStream {
    socket: TcpStream,
    session: Arc<Mutex<Session>>,
    /// Held while TLS bytes are taken from the session and written to the
    /// socket, so records go out in the order they were sealed, while the
    /// session itself stays free for the reader. Locked before `session`.
    sending: Arc<Mutex<()>>,
    /// This handle's buffer for TLS bytes from the socket.
    inbound: Vec<u8>,
}

impl fmt::Debug for SecureStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureStream")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// The socket with every read and write bounded by what is left until a deadline.
struct Deadline<'a> {
    socket: &'a TcpStream,
    deadline: Instant,
}

impl Deadline<'_> {
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        Ok(left)
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.set_read_timeout(Some(self.left()?))?;
        let mut socket = self.socket;
        socket.read(buf)
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.set_write_timeout(Some(self.left()?))?;
        let mut socket = self.socket;
        socket.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether an I/O error is a timeout (a socket timeout is WouldBlock on Unix).
pub fn is_timeout(error: &io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

impl SecureStream {
    fn handshake(socket: TcpStream, mut conn: Connection, limit: Duration) -> io::Result<Self> {
        let saved = (socket.read_timeout()?, socket.write_timeout()?);
        let mut io = Deadline {
            socket: &socket,
            deadline: Instant::now() + limit,
        };
        while conn.is_handshaking() {
            conn.complete_io(&mut io)?;
        }
        // The server's session tickets and the like go out now.
        while conn.wants_write() {
            conn.write_tls(&mut io)?;
        }
        socket.set_read_timeout(saved.0)?;
        socket.set_write_timeout(saved.1)?;
        let mut session = Session {
            conn,
            plaintext: VecDeque::new(),
            closed: false,
        };
        // Data that came with the peer's last handshake flight.
        session.take_plaintext()?;
        Ok(Self {
            socket,
            session: Arc::new(Mutex::new(session)),
            sending: Arc::new(Mutex::new(())),
            inbound: Vec::new(),
        })
    }

    /// A second handle on the same session (e.g. for a writer thread).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            socket: self.socket.try_clone()?,
            session: Arc::clone(&self.session),
            sending: Arc::clone(&self.sending),
            inbound: Vec::new(),
        })
    }

    /// The socket underneath, for addresses, timeouts and shutdown.
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// Whether the peer's certificate (verified at the handshake) is valid
    /// for the identity `name` (e.g. [`node_name`]`(3)`).
    pub fn peer_is(&self, name: &str) -> bool {
        let session = lock(&self.session);
        let Some(cert) = session.conn.peer_certificates().and_then(|c| c.first()) else {
            return false;
        };
        let Ok(name) = ServerName::try_from(name) else {
            return false;
        };
        webpki::EndEntityCert::try_from(cert).is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
    }

    /// Tells the peer that nothing more follows (a TLS `close_notify`
    /// alert, RFC 8446 §6.1), so it can tell the end from a cut.
    pub fn close_notify(&mut self) -> io::Result<()> {
        lock(&self.session).conn.send_close_notify();
        self.send_pending()
    }

    /// Writes whatever TLS bytes the session holds to the socket.
    fn send_pending(&self) -> io::Result<()> {
        let _sending = lock(&self.sending);
        let mut sealed = Vec::new();
        {
            let mut session = lock(&self.session);
            while session.conn.wants_write() {
                session.conn.write_tls(&mut sealed)?;
            }
        }
        let mut socket = &self.socket;
        socket.write_all(&sealed)
    }

    /// Feeds `bytes` from the socket to the session and takes out the
    /// plaintext. Returns whether the session has TLS bytes to send.
    fn absorb(&self, mut bytes: &[u8]) -> io::Result<bool> {
        let mut session = lock(&self.session);
        while !bytes.is_empty() {
            session.conn.read_tls(&mut bytes)?;
            let state = session
                .conn
                .process_new_packets()
                .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
            session.take_plaintext()?;
            if state.peer_has_closed() {
                session.closed = true;
            }
        }
        Ok(session.conn.wants_write())
    }
}

impl Read for SecureStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut raw = std::mem::take(&mut self.inbound);
        raw.resize(RECORD_MAX, 0);
        let result = self.read_with(buf, &mut raw);
        self.inbound = raw;
        result
    }
}

impl SecureStream {
    fn read_with(&self, buf: &mut [u8], raw: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut session = lock(&self.session);
                if !session.plaintext.is_empty() {
                    return session.plaintext.read(buf);
                }
                if session.closed {
                    return Ok(0);
                }
            }
            // The socket is read without the session's lock, so writers go on.
            let mut socket = &self.socket;
            let n = socket.read(raw)?;
            if n == 0 {
                lock(&self.session).closed = true;
                return Ok(0);
            }
            if self.absorb(&raw[..n])? {
                self.send_pending()?;
            }
        }
    }
}

impl Write for SecureStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _sending = lock(&self.sending);
        let mut sealed = Vec::new();
        let n = {
            let mut session = lock(&self.session);
            let n = session.conn.writer().write(buf)?;
            while session.conn.wants_write() {
                session.conn.write_tls(&mut sealed)?;
            }
            n
        };
        let mut socket = &self.socket;
        socket.write_all(&sealed)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_pending()
    }
}

impl TimedRead for SecureStream {
    fn read_timeout(&self) -> io::Result<Option<Duration>> {
        self.socket.read_timeout()
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket.set_read_timeout(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{
        codec::Envelope,
        flow::tests::node,
        ids::{Incarnation, Sender},
        io::{read_frame, read_frame_within, write_frame, FrameIoError},
        keys::{tests::identities, Party},
        message::{ErrorCode, ErrorReply},
    };
    use std::{net::TcpListener, num::NonZeroU64, thread};

    fn envelope(serial: u64, detail: String) -> Envelope {
        Envelope::new(
            Sender::Node(node(1)),
            Incarnation(7),
            NonZeroU64::new(serial).unwrap(),
            ErrorReply {
                code: ErrorCode::InvalidRequest,
                detail,
            },
        )
    }

    /// Accepts one connection with `server` on a thread; its result.
    fn serve_one(server: TlsIdentity) -> (std::net::SocketAddr, thread::JoinHandle<io::Result<SecureStream>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = thread::spawn(move || server.accept(listener.accept()?.0));
        (address, accepted)
    }

    #[test]
    fn frames_cross_a_mutual_tls_session_both_ways_while_one_thread_reads_and_another_writes() {
        let ids = identities("session", &[Party::Node(1), Party::Node(2)]);
        let (address, accepted) = serve_one(ids[1].clone());
        let mut client = ids[0]
            .connect(TcpStream::connect(address).unwrap(), &node_name(2))
            .unwrap();
        let mut server = accepted.join().unwrap().unwrap();
        assert!(server.peer_is(&node_name(1)));
        assert!(!server.peer_is(&node_name(2)));
        assert!(client.peer_is(&node_name(2)));

        // Frames larger than a record, in both directions at once.
        let big = "x".repeat(100_000);
        let sent: Vec<Envelope> = (1..=20).map(|i| envelope(i, big.repeat(i as usize % 3))).collect();
        let mut server_writer = server.try_clone().unwrap();
        let to_client = sent.clone();
        let writer = thread::spawn(move || {
            for env in &to_client {
                write_frame(&mut server_writer, env).unwrap();
            }
        });
        let to_server = sent.clone();
        let mut client_writer = client.try_clone().unwrap();
        let client_sends = thread::spawn(move || {
            for env in &to_server {
                write_frame(&mut client_writer, env).unwrap();
            }
        });
        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for expected in &sent {
            assert_eq!(&read_frame(&mut server).unwrap(), expected);
            assert_eq!(
                &read_frame_within(&mut client, Duration::from_secs(5)).unwrap(),
                expected
            );
        }
        writer.join().unwrap();
        client_sends.join().unwrap();
        drop(client);
        assert!(matches!(read_frame(&mut server), Err(FrameIoError::Closed)));
    }

    #[test]
    fn a_client_without_the_cluster_ca_or_a_server_of_the_wrong_name_is_refused() {
        let ids = identities("refuse", &[Party::Node(1), Party::Node(2)]);
        let foreign = identities("foreign", &[Party::Node(1)]);
        // Plain TCP: the server's handshake fails on the first bytes.
        let (address, accepted) = serve_one(ids[1].clone());
        let mut plain = TcpStream::connect(address).unwrap();
        write_frame(&mut plain, &envelope(1, String::new())).unwrap();
        assert!(accepted.join().unwrap().is_err());
        // A certificate of another CA: both sides fail.
        let (address, accepted) = serve_one(ids[1].clone());
        let outsider = foreign[0].connect(TcpStream::connect(address).unwrap(), &node_name(2));
        assert!(accepted.join().unwrap().is_err());
        assert!(outsider.is_err());
        // The server is not who the client wants.
        let (address, accepted) = serve_one(ids[1].clone());
        let wrong = ids[0].connect(TcpStream::connect(address).unwrap(), &node_name(3));
        assert!(wrong.is_err());
        let _ = accepted.join().unwrap();
    }

    #[test]
    fn a_silent_client_is_cut_off_at_the_handshake_deadline() {
        let ids = identities("silent", &[Party::Node(1)]);
        let (address, accepted) = serve_one(ids[0].clone());
        let _silent = TcpStream::connect(address).unwrap();
        let err = accepted.join().unwrap().expect_err("no handshake");
        assert!(is_timeout(&err), "{err:?}");
    }
}
