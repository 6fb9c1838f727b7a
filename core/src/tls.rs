//! Mutual TLS where the only identity is a SPIFFE URI SAN.
//!
//! The client checks the server's chain against the mesh roots and that its identity is one of those expected for
//! the destination (never a hostname). The server requires a client certificate from its own trust domain.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error as RustlsError,
    RootCertStore, ServerConfig, SignatureScheme,
};

use mesh_primitives::identity::Identity;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] RustlsError),
    #[error("cannot build client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("certificate has no SPIFFE URI SAN: {0}")]
    NoIdentity(String),
}

/// ALPN for HBONE: HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// A workload's certificate chain (leaf first), its key, and the roots it trusts.
#[derive(Clone)]
pub struct WorkloadCert {
    identity: Identity,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    not_after: SystemTime,
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity.to_string())
            .field("chain_len", &self.chain.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WorkloadCert {
    pub fn new(
        identity: Identity,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
        not_after: SystemTime,
    ) -> Self {
        Self {
            identity,
            chain,
            key: Arc::new(key),
            roots,
            not_after,
        }
    }
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Server side of HBONE: presents this certificate, demands a client certificate from the same trust domain.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = provider();
        let inner = WebPkiClientVerifier::builder_with_provider(
            Arc::new(root_store(&self.roots)),
            provider.clone(),
        )
        .build()?;
        let verifier = Arc::new(TrustDomainClientVerifier {
            inner,
            trust_domain: self.identity.trust_domain.clone(),
        });
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Client side of HBONE: presents this certificate, accepts a server only if its identity is in `expected`.
    pub fn client_config(&self, expected: Vec<Identity>) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = provider();
        let verifier = Arc::new(IdentityServerVerifier {
            roots: root_store(&self.roots),
            expected,
            algs: provider.signature_verification_algorithms,
        });
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(cfg))
    }
}

/// Makes [`provider`] the process default, for libraries that build TLS configs without naming one (kube's
/// client): with two providers compiled in, rustls cannot pick one itself. Call once, first thing in `main`.
pub fn install_default_provider() {
    // An error means one is installed already, which is all this wants.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The crypto provider of every mesh TLS session (aws-lc-rs: the fastest AES-GCM rustls offers; it builds with cc).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn root_store(roots: &[CertificateDer<'static>]) -> RootCertStore {
    let mut store = RootCertStore::empty();
    // Roots are our own CA's; one that fails to parse is skipped and the handshake then fails with a clear error.
    let _ = store.add_parsable_certificates(roots.iter().cloned());
    store
}

/// PEM certificates in `pem` (others blocks are ignored).
pub fn parse_pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

/// The SPIFFE identity in a certificate's URI SAN.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::NoIdentity(format!("unparsable certificate: {e}")))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| TlsError::NoIdentity(format!("bad SAN extension: {e}")))?
        .ok_or_else(|| TlsError::NoIdentity("no SAN extension".into()))?;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            if let Ok(id) = uri.parse::<Identity>() {
                return Ok(id);
            }
        }
    }
    Err(TlsError::NoIdentity("no spiffe:// URI SAN".into()))
}

/// The verified identity of the peer of an established TLS connection.
pub fn peer_identity(conn: &rustls::CommonState) -> Option<Identity> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| identity_of(c).ok())
}

/// Why a certificate that chains to a mesh root was still refused (kept typed so metrics need not parse text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityRejection {
    /// No SPIFFE URI SAN.
    NoIdentity,
    /// A client from another trust domain.
    ForeignTrustDomain,
    /// A server that is not the identity expected for the destination.
    Unexpected,
}

#[derive(Debug)]
pub struct IdentityRejected {
    pub kind: IdentityRejection,
    message: String,
}

impl fmt::Display for IdentityRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
impl std::error::Error for IdentityRejected {}

fn bad_cert(kind: IdentityRejection, message: impl Into<String>) -> RustlsError {
    RustlsError::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        IdentityRejected {
            kind,
            message: message.into(),
        },
    ))))
}

#[derive(Debug)]
struct IdentityServerVerifier {
    roots: RootCertStore,
    expected: Vec<Identity>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for IdentityServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, RustlsError> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let id = identity_of(end_entity)
            .map_err(|e| bad_cert(IdentityRejection::NoIdentity, e.to_string()))?;
        if !self.expected.contains(&id) {
            let want: Vec<String> = self.expected.iter().map(Identity::to_string).collect();
            return Err(bad_cert(
                IdentityRejection::Unexpected,
                format!("server identity {id} is not one of {want:?}"),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[derive(Debug)]
struct TrustDomainClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for TrustDomainClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, RustlsError> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = identity_of(end_entity)
            .map_err(|e| bad_cert(IdentityRejection::NoIdentity, e.to_string()))?;
        if id.trust_domain != self.trust_domain {
            return Err(bad_cert(
                IdentityRejection::ForeignTrustDomain,
                format!(
                    "client identity {id} is not in trust domain {}",
                    self.trust_domain
                ),
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::CertificateAuthority;
    use std::time::Duration;

    /// A full mTLS handshake over an in-memory pipe; Err if either side refuses.
    async fn handshake(client: &WorkloadCert, server: &WorkloadCert) -> Result<(), String> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor =
            tokio_rustls::TlsAcceptor::from(server.server_config().map_err(|e| e.to_string())?);
        let connector = tokio_rustls::TlsConnector::from(
            client
                .client_config(vec![server.identity().clone()])
                .map_err(|e| e.to_string())?,
        );
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        // Both ends stay alive until both finish: the server reads the client's Finished after connect returns.
        let (srv, cli) = tokio::join!(acceptor.accept(b), connector.connect(name, a));
        let srv = srv.map(drop).map_err(|e| format!("server: {e}"));
        let cli = cli.map(drop).map_err(|e| format!("client: {e}"));
        cli.and(srv)
    }

    #[tokio::test]
    async fn root_rotation_overlap_lets_old_and_new_workloads_talk() {
        let ttl = Duration::from_secs(600);
        let id = |sa: &str| Identity::new("cluster.local", "ns", sa);
        let mut old = CertificateAuthority::generate("cluster.local").unwrap();
        let mut new = CertificateAuthority::generate("cluster.local").unwrap();
        // Before the overlap: certificates under different roots do not trust each other.
        let x = old.issue(&id("x"), ttl).unwrap();
        let y = new.issue(&id("y"), ttl).unwrap();
        assert!(handshake(&x, &y).await.is_err());
        // During the overlap both CAs hand out both roots: traffic flows both ways.
        old.add_trusted_roots(&new.root_pem());
        new.add_trusted_roots(&old.root_pem());
        let x = old.issue(&id("x"), ttl).unwrap();
        let y = new.issue(&id("y"), ttl).unwrap();
        handshake(&x, &y)
            .await
            .expect("old-root client, new-root server");
        handshake(&y, &x)
            .await
            .expect("new-root client, old-root server");
    }

    #[tokio::test]
    async fn server_identity_must_be_the_expected_one() {
        let ca = CertificateAuthority::generate("cluster.local").unwrap();
        let ttl = Duration::from_secs(600);
        let a = ca
            .issue(&Identity::new("cluster.local", "ns", "a"), ttl)
            .unwrap();
        let b = ca
            .issue(&Identity::new("cluster.local", "ns", "b"), ttl)
            .unwrap();
        handshake(&a, &b).await.expect("same CA, expected identity");
        let (x, y) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(b.server_config().unwrap());
        tokio::spawn(async move { acceptor.accept(y).await.map(drop) });
        let wrong = tokio_rustls::TlsConnector::from(
            a.client_config(vec![Identity::new("cluster.local", "ns", "c")])
                .unwrap(),
        );
        let err = wrong
            .connect(
                ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
                x,
            )
            .await
            .map(drop)
            .expect_err("an unexpected server identity is refused");
        assert!(err.to_string().contains("is not one of"), "{err}");
    }

    #[tokio::test]
    async fn expired_certificates_are_refused_in_both_directions() {
        use std::time::SystemTime;
        let ca = CertificateAuthority::generate("cluster.local").unwrap();
        let hour = Duration::from_secs(3600);
        let now = SystemTime::now();
        let fresh = |sa: &str| {
            ca.issue(&Identity::new("cluster.local", "ns", sa), hour)
                .unwrap()
        };
        let expired = |sa: &str| {
            ca.issue_valid(
                &Identity::new("cluster.local", "ns", sa),
                now - 2 * hour,
                now - hour,
            )
            .unwrap()
        };
        handshake(&fresh("a"), &fresh("b"))
            .await
            .expect("both valid");
        let err = handshake(&expired("a"), &fresh("b")).await.unwrap_err();
        assert!(
            err.contains("server") && err.to_lowercase().contains("expired"),
            "{err}"
        );
        let err = handshake(&fresh("a"), &expired("b")).await.unwrap_err();
        assert!(
            err.contains("client") && err.to_lowercase().contains("expired"),
            "{err}"
        );
    }

    /// The server side's handshake error, classified for the metric.
    async fn server_failure(
        client: &WorkloadCert,
        server: &WorkloadCert,
    ) -> crate::metrics::HandshakeFailure {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config().unwrap());
        let connector = tokio_rustls::TlsConnector::from(
            client
                .client_config(vec![server.identity().clone()])
                .unwrap(),
        );
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let (srv, _cli) = tokio::join!(acceptor.accept(b), connector.connect(name, a));
        let err = srv.map(drop).expect_err("the server refuses");
        crate::metrics::HandshakeFailure::classify(&err)
    }

    #[tokio::test]
    async fn handshake_failures_are_classified_from_typed_errors() {
        use crate::metrics::HandshakeFailure;
        let ttl = Duration::from_secs(600);
        let ca = CertificateAuthority::generate("cluster.local").unwrap();
        let server = ca
            .issue(&Identity::new("cluster.local", "ns", "s"), ttl)
            .unwrap();
        let foreign = ca
            .issue(&Identity::new("evil.local", "ns", "c"), ttl)
            .unwrap();
        assert_eq!(
            server_failure(&foreign, &server).await,
            HandshakeFailure::foreign_trust_domain
        );
        let rogue = CertificateAuthority::generate("cluster.local")
            .unwrap()
            .issue(&Identity::new("cluster.local", "ns", "c"), ttl)
            .unwrap();
        // The rogue client trusts the real root, so it is the server that refuses its leaf.
        let rogue = WorkloadCert::new(
            rogue.identity().clone(),
            rogue.chain().to_vec(),
            rogue.key().clone_key(),
            ca.roots().to_vec(),
            rogue.not_after(),
        );
        assert_eq!(
            server_failure(&rogue, &server).await,
            HandshakeFailure::untrusted_issuer
        );
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed");
        assert_eq!(HandshakeFailure::classify(&eof), HandshakeFailure::eof);
        let slow = std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out");
        assert_eq!(HandshakeFailure::classify(&slow), HandshakeFailure::timeout);
    }
}
