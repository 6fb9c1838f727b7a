//! The control plane's own serving certificate on 15012. It has a lifetime of its own (`servingCertificateTtl`)
//! and is renewed at half-life: rustls asks [`ServingCert`] for the current certificate at every handshake, so new
//! connections get the new one while established streams keep the session they negotiated (nothing is dropped).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_core::ca::{CaError, CertificateAuthority};
use mesh_primitives::identity::Identity;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed renewal (the current certificate keeps serving).
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("issuing the serving certificate: {0}")]
    Ca(#[from] CaError),
    #[error("serving certificate: {0}")]
    Pem(String),
    #[error("serving certificate: {0}")]
    Tls(#[from] rustls::Error),
}

pub struct ServingCert {
    ca: Arc<CertificateAuthority>,
    identity: Identity,
    dns: &'static [&'static str],
    ttl: Duration,
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("identity", &self.identity)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        identity: Identity,
        dns: &'static [&'static str],
        ttl: Duration,
    ) -> Result<Arc<Self>, ServingError> {
        let first = issue(&ca, &identity, dns, ttl)?;
        Ok(Arc::new(Self {
            ca,
            identity,
            dns,
            ttl,
            current: ArcSwap::from_pointee(first),
        }))
    }

    /// Renews at half-life until `stop`.
    pub async fn rotate(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut wait = self.ttl / 2;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            match issue(&self.ca, &self.identity, self.dns, self.ttl) {
                Ok(next) => {
                    self.current.store(Arc::new(next));
                    tracing::info!(ttl = ?self.ttl, "serving certificate renewed");
                    wait = self.ttl / 2;
                }
                Err(e) => {
                    tracing::error!(error = %e, "renewing the serving certificate failed; the current one keeps serving");
                    wait = RETRY.min(self.ttl / 4);
                }
            }
        }
    }

    /// TLS 1.2/1.3 with ALPN h2 (gRPC), presenting whatever certificate is current.
    pub fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        let mut cfg = rustls::ServerConfig::builder_with_provider(mesh_core::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        TlsAcceptor::from(Arc::new(cfg))
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn issue(
    ca: &CertificateAuthority,
    identity: &Identity,
    dns: &[&str],
    ttl: Duration,
) -> Result<CertifiedKey, ServingError> {
    let (chain_pem, key_pem) = ca.issue_serving(identity, dns, ttl)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| ServingError::Pem(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| ServingError::Pem(e.to_string()))?;
    Ok(CertifiedKey::from_der(
        chain,
        key,
        &mesh_core::tls::provider(),
    )?)
}

/// A TLS connection holding one of the connection slots until it closes.
pub struct Conn {
    tls: TlsStream<TcpStream>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = <TlsStream<TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tls.connect_info()
    }
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

/// Accepted TLS connections for tonic. Each handshake runs on its own and must finish within
/// [`HANDSHAKE_TIMEOUT`], so idle or slow clients hold up no one and are closed; at most `max_connections`
/// (handshaking or established) are open, beyond which a new connection is closed at once (counted in `refused`).
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    max_connections: usize,
    refused: prometheus_client::metrics::counter::Counter,
) -> tokio_stream::wrappers::ReceiverStream<Result<Conn, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    tokio::spawn(async move {
        let mut backoff = mesh_core::socket::accept_backoff();
        let mut last_refusal_log = std::time::Instant::now() - Duration::from_secs(60);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = tx.closed() => return,
                a = mesh_core::socket::accept_retrying("control gRPC", &mut backoff, || listener.accept()) => a,
            };
            // tonic sets this itself only when it binds the port.
            let _ = tcp.set_nodelay(true);
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                refused.inc();
                // One line a minute at most: a flood must not become a flood of logs.
                if last_refusal_log.elapsed() > Duration::from_secs(60) {
                    tracing::warn!(max_connections, "connection limit reached; refusing new connections (counted in mesh_control_connections_refused_total)");
                    last_refusal_log = std::time::Instant::now();
                }
                drop(tcp);
                continue;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(Conn { tls, _slot: slot })).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
