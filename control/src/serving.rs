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

/// Accepted TLS connections for tonic; each handshake runs on its own, so a slow or silent client holds up no one.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut backoff = mesh_core::socket::accept_backoff();
        loop {
            let (tcp, peer) = tokio::select! {
                _ = tx.closed() => return,
                a = mesh_core::socket::accept_retrying("control gRPC", &mut backoff, || listener.accept()) => a,
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
