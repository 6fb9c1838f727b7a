//! A certificate authority for SPIFFE workload certificates.
//!
//! ztunnel uses it as the built-in development CA in file mode; the control plane uses it to sign CSRs.
//! Leaf certificates carry one URI SAN and an empty subject, as Istio's do.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::tls::WorkloadCert;
use mesh_primitives::identity::Identity;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("CA file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("no PEM certificate in the CA certificate chain")]
    NoCertificate,
    #[error("the CA key is not a PEM private key: {0}")]
    Key(rcgen::Error),
    #[error("the first certificate of the chain cannot sign (is it a CA certificate?): {0}")]
    Issuer(rcgen::Error),
    #[error("{what} {path}: {source}")]
    Load {
        what: &'static str,
        path: String,
        #[source]
        source: Box<CaError>,
    },
    #[error("CA key {path} is readable by others (mode {mode:o}): run `chmod 600 {path}`, and rotate the root if others may have read it")]
    KeyExposed { path: String, mode: u32 },
    #[error("CSR does not ask for exactly the identity {expected}: {reason}")]
    CsrIdentity { expected: String, reason: String },
}

/// Signs workload certificates for one trust domain.
pub struct CertificateAuthority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate followed by any parents up to the root, in PEM.
    chain_pem: Vec<String>,
    roots: Vec<CertificateDer<'static>>,
    key_pem: String,
}

const CERT_FILE: &str = "ca-cert.pem";
const KEY_FILE: &str = "ca-key.pem";

impl CertificateAuthority {
    /// A new self-signed root for `trust_domain`.
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        let pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            roots: vec![cert.der().clone()],
            chain_pem: vec![pem],
            issuer: Issuer::new(params, key),
            key_pem,
        })
    }

    /// A CA from a certificate (optionally followed by its parents, root last) and its key, in PEM.
    pub fn from_pem(
        trust_domain: &str,
        cert_chain_pem: &str,
        key_pem: &str,
    ) -> Result<Self, CaError> {
        let ders = crate::tls::parse_pem_certs(cert_chain_pem);
        let first = ders.first().ok_or(CaError::NoCertificate)?;
        let key = KeyPair::from_pem(key_pem).map_err(CaError::Key)?;
        let issuer = Issuer::from_ca_cert_der(first, key).map_err(CaError::Issuer)?;
        let chain_pem = ders.iter().map(der_to_pem).collect();
        let roots = vec![ders.last().expect("non-empty chain checked above").clone()];
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            issuer,
            chain_pem,
            roots,
            key_pem: key_pem.to_string(),
        })
    }

    /// Loads the CA kept in `dir`, creating and persisting one first if there is none.
    /// Safe when several processes start at once: the first to link its files wins, the others load them.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| CaError::Io { path, source }
        };
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        if !cert_path.exists() {
            // The key is the mesh's root of trust: only its owner may read it, from its creation on.
            let private_dir = |d: &Path| {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(d)
            };
            private_dir(dir).map_err(io(dir))?;
            let fresh = Self::generate(trust_domain)?;
            let tmp = dir.join(format!(".tmp-{}", std::process::id()));
            private_dir(&tmp).map_err(io(&tmp))?;
            std::io::Write::write_all(
                &mut std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(tmp.join(KEY_FILE))
                    .map_err(io(&tmp))?,
                fresh.key_pem.as_bytes(),
            )
            .map_err(io(&tmp))?;
            std::fs::write(tmp.join(CERT_FILE), &fresh.chain_pem[0]).map_err(io(&tmp))?;
            // Key first, certificate last: a reader that sees the certificate finds the key too.
            let _ = std::fs::hard_link(tmp.join(KEY_FILE), &key_path);
            let _ = std::fs::hard_link(tmp.join(CERT_FILE), &cert_path);
            let _ = std::fs::remove_dir_all(&tmp);
        }
        let mode = std::fs::metadata(&key_path)
            .map_err(io(&key_path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(CaError::KeyExposed {
                path: key_path.display().to_string(),
                mode: mode & 0o777,
            });
        }
        let cert = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        Self::from_pem(trust_domain, &cert, &key).map_err(|source| CaError::Load {
            what: "CA directory",
            path: dir.display().to_string(),
            source: Box::new(source),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA's certificate and its parents, PEM: what [`CertificateAuthority::from_pem`] reads back.
    pub fn cert_chain_pem(&self) -> String {
        self.chain_pem.concat()
    }

    /// The CA's private key, PEM (for storing it where replicas share it).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The trust anchors a peer of this CA's workloads needs: this CA's root, then any extra trusted roots.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Also trusts the roots in `pem`: during a root rotation, workloads must accept peers certified under the
    /// old root and under the new one, so both CAs hand out both roots until the old one is retired.
    pub fn add_trusted_roots(&mut self, pem: &str) -> usize {
        let before = self.roots.len();
        for root in crate::tls::parse_pem_certs(pem) {
            if !self.roots.contains(&root) {
                self.roots.push(root);
            }
        }
        self.roots.len() - before
    }

    /// Every trusted root in PEM (the bundle clients bootstrap from and receive as the chain's last element).
    pub fn root_pem(&self) -> String {
        self.roots.iter().map(der_to_pem).collect()
    }

    /// Issues a certificate and a fresh key for `identity` (development CA: the key never leaves this process).
    pub fn issue(&self, identity: &Identity, ttl: Duration) -> Result<WorkloadCert, CaError> {
        let now = SystemTime::now();
        self.issue_valid(identity, now - backdate(ttl), now + ttl)
    }

    /// Issues a certificate valid from `not_before` to `not_after` (a past window gives an expired one, as
    /// tests of expiry need).
    pub fn issue_valid(
        &self,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<WorkloadCert, CaError> {
        let key = KeyPair::generate()?;
        let mut params = leaf_params(identity, Duration::from_secs(3600))?;
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.intermediates());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(WorkloadCert::new(
            identity.clone(),
            chain,
            key,
            self.roots.clone(),
            not_after,
        ))
    }

    /// A serving certificate for a control-plane endpoint: the SPIFFE identity plus DNS names, so clients that
    /// verify a hostname (gRPC over TLS) accept it as well as mesh peers.
    pub fn issue_serving(
        &self,
        identity: &Identity,
        dns_names: &[&str],
        ttl: Duration,
    ) -> Result<(String, String), CaError> {
        let key = KeyPair::generate()?;
        let mut params = leaf_params(identity, ttl)?;
        for dns in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName((*dns).try_into()?));
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain = cert.pem();
        for pem in &self.chain_pem[..self.chain_pem.len().saturating_sub(1)] {
            chain.push_str(pem);
        }
        Ok((chain, key.serialize_pem()))
    }

    /// Signs a PEM CSR for `identity`, returning the chain leaf first, root last (Istio's CA response order).
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<Vec<String>, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let wanted = SanType::URI(identity.to_string().try_into()?);
        let sans = &csr.params.subject_alt_names;
        if sans.len() != 1 || sans[0] != wanted {
            return Err(CaError::CsrIdentity {
                expected: identity.to_string(),
                reason: format!("CSR asks for {sans:?}"),
            });
        }
        let mut params = leaf_params(identity, ttl)?;
        params.subject_alt_names = vec![wanted];
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        // Leaf, intermediates, and last the whole trust bundle (as Istio's CA does with several roots).
        let mut out = vec![cert.pem()];
        out.extend(self.chain_pem[..self.chain_pem.len() - 1].iter().cloned());
        out.push(self.root_pem());
        Ok(out)
    }

    fn intermediates(&self) -> impl Iterator<Item = CertificateDer<'static>> + '_ {
        // Everything in the chain but the root (the root is a trust anchor, not sent).
        let n = self.chain_pem.len().saturating_sub(1);
        self.chain_pem[..n]
            .iter()
            .flat_map(|p| crate::tls::parse_pem_certs(p))
    }
}

/// A fresh key and a PEM CSR asking for `identity` (URI SAN only), as a CA client sends it.
pub fn new_csr(identity: &Identity) -> Result<(String, PrivateKeyDer<'static>), CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    let csr = params.serialize_request(&key)?.pem()?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((csr, der))
}

fn leaf_params(identity: &Identity, ttl: Duration) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before =
        now - time::Duration::try_from(backdate(ttl)).unwrap_or(time::Duration::ZERO);
    params.not_after = now + time::Duration::try_from(ttl).unwrap_or(time::Duration::days(1));
    Ok(params)
}

/// How far before now a certificate is made valid, for peers whose clocks run a little behind: a minute, but
/// never more than a tenth of the lifetime. A client that renews at the midpoint of the validity window (Istio's
/// ztunnel does) would otherwise renew far too early with short lifetimes (60 s certificates: at once).
pub fn backdate(ttl: Duration) -> Duration {
    (ttl / 10).min(Duration::from_secs(60))
}

fn der_to_pem(der: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_leaf_with_only_uri_san() {
        let ca = CertificateAuthority::generate("cluster.local").unwrap();
        let id = Identity::new("cluster.local", "default", "echo");
        let cert = ca.issue(&id, Duration::from_secs(3600)).unwrap();
        assert_eq!(crate::tls::identity_of(&cert.chain()[0]).unwrap(), id);
    }

    /// The validity window of a PEM chain's first certificate, in seconds since the epoch.
    fn window(chain_pem: &str) -> (i64, i64) {
        let der = crate::tls::parse_pem_certs(chain_pem).remove(0);
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let v = cert.validity();
        (v.not_before.timestamp(), v.not_after.timestamp())
    }

    #[test]
    fn short_lifetimes_are_backdated_by_a_tenth_at_most() {
        let ca = CertificateAuthority::generate("td").unwrap();
        let id = Identity::new("td", "ns", "sa");
        let now = || {
            i64::try_from(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
            )
            .unwrap()
        };
        for (ttl, backdated) in [(60, 6), (3600, 60), (86_400, 60)] {
            let (csr, _key) = new_csr(&id).unwrap();
            let before = now();
            let chain = ca.sign_csr(&csr, &id, Duration::from_secs(ttl)).unwrap();
            let (nb, na) = window(&chain[0]);
            assert!(
                nb >= before - backdated - 1 && nb <= before - backdated + 1,
                "ttl {ttl}: notBefore {nb}, now {before}"
            );
            assert!(
                (na - nb - (ttl as i64 + backdated)).abs() <= 1,
                "ttl {ttl}: window {}",
                na - nb
            );
            // A client renewing at the midpoint renews after about half the lifetime, not at once.
            let midpoint = nb + (na - nb) / 2;
            assert!(
                midpoint - before >= ttl as i64 * 2 / 5,
                "ttl {ttl}: renewal {}s after issue",
                midpoint - before
            );
        }
        assert_eq!(backdate(Duration::from_secs(60)), Duration::from_secs(6));
    }

    #[test]
    fn persisted_ca_round_trips() {
        let dir = std::env::temp_dir().join(format!("mesh-ca-test-{}", std::process::id()));
        let a = CertificateAuthority::load_or_create(&dir, "cluster.local").unwrap();
        let b = CertificateAuthority::load_or_create(&dir, "cluster.local").unwrap();
        assert_eq!(a.roots(), b.roots());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_key_is_private_and_an_exposed_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("mesh-ca-perm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        CertificateAuthority::load_or_create(&dir, "cluster.local").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        std::fs::set_permissions(dir.join(KEY_FILE), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let Err(e) = CertificateAuthority::load_or_create(&dir, "cluster.local") else {
            panic!("a world-readable CA key must not load");
        };
        assert!(matches!(e, CaError::KeyExposed { mode: 0o644, .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn csr_chain_ends_with_the_trust_bundle() {
        let old = CertificateAuthority::generate("td").unwrap();
        let mut new = CertificateAuthority::generate("td").unwrap();
        assert_eq!(new.add_trusted_roots(&old.root_pem()), 1);
        let id = Identity::new("td", "ns", "sa");
        let (csr, _key) = new_csr(&id).unwrap();
        let chain = new.sign_csr(&csr, &id, Duration::from_secs(60)).unwrap();
        assert_eq!(chain.len(), 2);
        let bundle = crate::tls::parse_pem_certs(&chain[1]);
        assert_eq!(bundle, [new.roots()[0].clone(), old.roots()[0].clone()]);
        assert_eq!(
            crate::tls::identity_of(&crate::tls::parse_pem_certs(&chain[0])[0]).unwrap(),
            id
        );
    }

    #[test]
    fn pem_matches_der() {
        let ca = CertificateAuthority::generate("td").unwrap();
        let reparsed = crate::tls::parse_pem_certs(&der_to_pem(&ca.roots()[0]));
        assert_eq!(reparsed, ca.roots());
    }
}
