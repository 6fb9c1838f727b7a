//! Workload certificates for the pods this ztunnel serves, issued on first need and renewed at half-life.
//!
//! Today the issuer is the built-in development CA (file mode); the control plane's CA client slots in behind
//! the same `fetch` call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mesh_core::ca::{CaError, CertificateAuthority};
use mesh_core::identity::Identity;
use mesh_core::tls::{TlsError, WorkloadCert};
use rustls::ServerConfig;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("issuing a certificate for {identity}: {source}")]
    Issue { identity: String, source: CaError },
    #[error("building TLS config for {identity}: {source}")]
    Tls { identity: String, source: TlsError },
}

#[derive(Clone)]
struct Entry {
    cert: WorkloadCert,
    server: Arc<ServerConfig>,
    renew_at: SystemTime,
}

pub struct CertManager {
    ca: CertificateAuthority,
    ttl: Duration,
    cache: Mutex<HashMap<Identity, Entry>>,
}

/// What `/config_dump` shows of a certificate.
#[derive(serde::Serialize)]
pub struct CertInfo {
    pub identity: String,
    pub expires_in_secs: u64,
}

impl CertManager {
    pub fn new(ca: CertificateAuthority, ttl: Duration) -> Self {
        Self {
            ca,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The certificate for `id` and a server config presenting it.
    pub async fn fetch(
        &self,
        id: &Identity,
    ) -> Result<(WorkloadCert, Arc<ServerConfig>), CertError> {
        let now = SystemTime::now();
        if let Some(e) = self.cache.lock().expect("cert cache lock").get(id) {
            if now < e.renew_at {
                return Ok((e.cert.clone(), e.server.clone()));
            }
        }
        let cert = self
            .ca
            .issue(id, self.ttl)
            .map_err(|source| CertError::Issue {
                identity: id.to_string(),
                source,
            })?;
        let server = cert.server_config().map_err(|source| CertError::Tls {
            identity: id.to_string(),
            source,
        })?;
        let entry = Entry {
            renew_at: now + self.ttl / 2,
            cert: cert.clone(),
            server: server.clone(),
        };
        self.cache
            .lock()
            .expect("cert cache lock")
            .insert(id.clone(), entry);
        tracing::info!(identity = %id, "workload certificate issued");
        Ok((cert, server))
    }

    pub fn dump(&self) -> Vec<CertInfo> {
        let now = SystemTime::now();
        let cache = self.cache.lock().expect("cert cache lock");
        let mut out: Vec<CertInfo> = cache
            .iter()
            .map(|(id, e)| CertInfo {
                identity: id.to_string(),
                expires_in_secs: e
                    .cert
                    .not_after()
                    .duration_since(now)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }
}
