//! Workload certificates for the pods this ztunnel serves: fetched ahead of need (at enrollment), renewed at
//! half-life in the background with backoff, and the old certificate kept while renewal fails. Established
//! connections are never touched by rotation: only new handshakes use the new certificate.
//!
//! The issuer is the control plane's CA (impersonating each pod's identity) or, standalone, the built-in
//! development CA.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::ca::{CaError, CertificateAuthority};
use crate::control::{ControlError, ControlPlane};
use crate::tls::{TlsError, WorkloadCert};
use mesh_primitives::identity::Identity;
use rustls::ServerConfig;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("issuing a certificate for {identity}: {source}")]
    Issue { identity: String, source: CaError },
    #[error("fetching a certificate for {identity} from the control plane: {source}")]
    Fetch {
        identity: String,
        source: ControlError,
    },
    #[error("building TLS config for {identity}: {source}")]
    Tls { identity: String, source: TlsError },
}

pub enum Issuer {
    Dev(Box<CertificateAuthority>),
    ControlPlane {
        cp: ControlPlane,
        /// Rebuilt (re-reading the root file) when a request fails: after a root rotation the control plane
        /// serves under the new root, which the file has by then.
        channel: Mutex<tonic::transport::Channel>,
    },
}

impl Issuer {
    pub fn control_plane(cp: ControlPlane) -> Result<Self, ControlError> {
        cp.check_token()?;
        Ok(Self::ControlPlane {
            channel: Mutex::new(cp.channel()?),
            cp,
        })
    }
}

#[derive(Clone)]
struct Entry {
    cert: WorkloadCert,
    server: Arc<ServerConfig>,
    renew_at: SystemTime,
    failures: u32,
}

pub struct CertManager {
    issuer: Issuer,
    ttl: Duration,
    cache: Mutex<HashMap<Identity, Entry>>,
    /// One issuance at a time, so a burst of connections for a new pod costs one CSR.
    issuing: tokio::sync::Mutex<()>,
}

/// What `/config_dump` shows of a certificate.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertInfo {
    pub identity: String,
    pub expires_in_secs: u64,
    pub renew_in_secs: u64,
    pub renewal_failures: u32,
}

impl CertManager {
    pub fn new(issuer: Issuer, ttl: Duration) -> Self {
        Self {
            issuer,
            ttl,
            cache: Mutex::new(HashMap::new()),
            issuing: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self, id: &Identity, fresh_only: bool) -> Option<Entry> {
        let now = SystemTime::now();
        let cache = self.cache.lock().expect("cert cache lock");
        cache
            .get(id)
            .filter(|e| {
                if fresh_only {
                    now < e.renew_at
                } else {
                    now < e.cert.not_after()
                }
            })
            .cloned()
    }

    /// The certificate for `id` and a server config presenting it.
    pub async fn fetch(
        &self,
        id: &Identity,
    ) -> Result<(WorkloadCert, Arc<ServerConfig>), CertError> {
        if let Some(e) = self.cached(id, true) {
            return Ok((e.cert, e.server));
        }
        let _one = self.issuing.lock().await;
        if let Some(e) = self.cached(id, true) {
            return Ok((e.cert, e.server));
        }
        match self.issue(id).await {
            Ok(entry) => {
                self.cache
                    .lock()
                    .expect("cert cache lock")
                    .insert(id.clone(), entry.clone());
                Ok((entry.cert, entry.server))
            }
            Err(e) => {
                // Renewal failed: keep serving with the old certificate while it is valid, retry with backoff.
                let mut cache = self.cache.lock().expect("cert cache lock");
                if let Some(old) = cache
                    .get_mut(id)
                    .filter(|o| SystemTime::now() < o.cert.not_after())
                {
                    old.failures += 1;
                    old.renew_at = SystemTime::now() + backoff(old.failures);
                    tracing::warn!(identity = %id, error = %e, failures = old.failures, "certificate renewal failed; keeping the current one");
                    return Ok((old.cert.clone(), old.server.clone()));
                }
                Err(e)
            }
        }
    }

    async fn issue(&self, id: &Identity) -> Result<Entry, CertError> {
        let cert = match &self.issuer {
            Issuer::Dev(ca) => ca.issue(id, self.ttl).map_err(|source| CertError::Issue {
                identity: id.to_string(),
                source,
            })?,
            Issuer::ControlPlane { cp, channel } => {
                let current = channel.lock().expect("channel lock").clone();
                match cp.fetch_certificate(current, id, self.ttl).await {
                    Ok(cert) => cert,
                    Err(first) => {
                        tracing::debug!(error = %first, "CSR failed; retrying on a fresh channel");
                        let fetch = |source| CertError::Fetch {
                            identity: id.to_string(),
                            source,
                        };
                        let fresh = cp.channel().map_err(fetch)?;
                        *channel.lock().expect("channel lock") = fresh.clone();
                        cp.fetch_certificate(fresh, id, self.ttl)
                            .await
                            .map_err(fetch)?
                    }
                }
            }
        };
        let server = cert.server_config().map_err(|source| CertError::Tls {
            identity: id.to_string(),
            source,
        })?;
        let now = SystemTime::now();
        let lifetime = cert.not_after().duration_since(now).unwrap_or_default();
        tracing::info!(identity = %id, valid_secs = lifetime.as_secs(), "workload certificate issued");
        Ok(Entry {
            renew_at: now + lifetime / 2,
            cert,
            server,
            failures: 0,
        })
    }

    /// Renews every certificate past its half-life (run periodically).
    pub async fn renew_due(&self) {
        let now = SystemTime::now();
        let due: Vec<Identity> = {
            let cache = self.cache.lock().expect("cert cache lock");
            cache
                .iter()
                .filter(|(_, e)| now >= e.renew_at)
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in due {
            if let Err(e) = self.fetch(&id).await {
                tracing::error!(identity = %id, error = %e, "certificate expired and could not be renewed");
            }
        }
    }

    /// Whether a certificate for `id` is held and not expired.
    pub fn has_valid(&self, id: &Identity) -> bool {
        let now = SystemTime::now();
        let cache = self.cache.lock().expect("cert cache lock");
        cache.get(id).is_some_and(|e| e.cert.not_after() > now)
    }

    pub fn dump(&self) -> Vec<CertInfo> {
        let now = SystemTime::now();
        let secs = |t: SystemTime| t.duration_since(now).map(|d| d.as_secs()).unwrap_or(0);
        let cache = self.cache.lock().expect("cert cache lock");
        let mut out: Vec<CertInfo> = cache
            .iter()
            .map(|(id, e)| CertInfo {
                identity: id.to_string(),
                expires_in_secs: secs(e.cert.not_after()),
                renew_in_secs: secs(e.renew_at),
                renewal_failures: e.failures,
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }
}

/// Retry delay after `failures` consecutive renewal failures: 0.5 s × 2^failures, at most 30 s, jittered down to
/// half.
fn backoff(failures: u32) -> Duration {
    mesh_primitives::backoff::delay(
        Duration::from_millis(500),
        Duration::from_secs(30),
        failures,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(ttl: Duration) -> CertManager {
        let ca = CertificateAuthority::generate("cluster.local").unwrap();
        CertManager::new(Issuer::Dev(Box::new(ca)), ttl)
    }

    fn serial(c: &WorkloadCert) -> Vec<u8> {
        c.chain()[0].as_ref().to_vec()
    }

    #[tokio::test]
    async fn cached_until_half_life_then_renewed() {
        let m = dev(Duration::from_secs(2));
        let id = Identity::new("cluster.local", "ns", "sa");
        let (a, _) = m.fetch(&id).await.unwrap();
        let (b, _) = m.fetch(&id).await.unwrap();
        assert_eq!(serial(&a), serial(&b), "served from cache before half-life");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        m.renew_due().await;
        let (c, _) = m.fetch(&id).await.unwrap();
        assert_ne!(serial(&a), serial(&c), "renewed after half-life");
        assert_eq!(m.dump()[0].renewal_failures, 0);
    }

    #[tokio::test]
    async fn failed_renewal_keeps_the_old_certificate() {
        let id = Identity::new("cluster.local", "ns", "sa");
        // A control plane that is not there: every fetch fails.
        let cp = ControlPlane {
            address: "https://127.0.0.1:9".into(),
            root_cert: "/nonexistent/root.pem".into(),
            tls_name: "istiod.istio-system.svc".into(),
            token_file: "/nonexistent/token".into(),
        };
        let channel = tonic::transport::Endpoint::from_static("https://127.0.0.1:9").connect_lazy();
        let m = CertManager::new(
            Issuer::ControlPlane {
                cp,
                channel: Mutex::new(channel),
            },
            Duration::from_secs(3600),
        );
        assert!(
            m.fetch(&id).await.is_err(),
            "nothing cached and no CA: an error"
        );
        // Seed a certificate that is past its renewal time but still valid.
        let old = CertificateAuthority::generate("cluster.local")
            .unwrap()
            .issue(&id, Duration::from_secs(3600))
            .unwrap();
        let server = old.server_config().unwrap();
        m.cache.lock().unwrap().insert(
            id.clone(),
            Entry {
                cert: old.clone(),
                server,
                renew_at: SystemTime::now(),
                failures: 0,
            },
        );
        let (kept, _) = m
            .fetch(&id)
            .await
            .expect("the old certificate keeps serving");
        assert_eq!(serial(&kept), serial(&old));
        let info = &m.dump()[0];
        assert_eq!(info.renewal_failures, 1);
        assert!(info.renew_in_secs <= 1, "retried soon with backoff");
    }
}
