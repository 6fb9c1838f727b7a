//! The client side of the control plane, shared by ztunnel and the waypoint: a TLS gRPC channel, the CA client
//! (`IstioCertificateService/CreateCertificate`) and a delta xDS client that reconnects with backoff and keeps the
//! last config while disconnected.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use mesh_primitives::backoff::Backoff;
use mesh_proto::envoy::config::core::v3::Node;
use mesh_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use mesh_proto::google::rpc::Status as RpcStatus;
use mesh_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use mesh_proto::istio::v1::auth::IstioCertificateRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::tls::{parse_pem_certs, WorkloadCert};
use mesh_primitives::identity::Identity;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control plane address {addr:?}: {reason}")]
    Address { addr: String, reason: String },
    #[error("controlPlane.{field} {path}: {source}")]
    Read {
        field: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("controlPlane.{field} {path}: {reason}")]
    File {
        field: &'static str,
        path: String,
        reason: &'static str,
    },
    #[error("connecting to the control plane at {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("control plane refused: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("CSR for {identity}: {source}")]
    Csr {
        identity: String,
        source: crate::ca::CaError,
    },
    #[error("CA answered with an unusable chain for {identity}: {reason}")]
    Chain { identity: String, reason: String },
}

/// How to reach the control plane.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlane {
    /// `https://host:15012`.
    pub address: String,
    /// The mesh root certificate (PEM) the control plane's serving certificate chains to.
    pub root_cert: PathBuf,
    /// The DNS name in the control plane's certificate.
    #[serde(default = "default_tls_name")]
    pub tls_name: String,
    /// File holding this proxy's bootstrap token (sent as `authorization: Bearer <token>`).
    pub token_file: PathBuf,
}

fn default_tls_name() -> String {
    "istiod.istio-system.svc".into()
}

impl ControlPlane {
    pub fn channel(&self) -> Result<Channel, ControlError> {
        let root = std::fs::read(&self.root_cert).map_err(|source| ControlError::Read {
            field: "rootCert",
            path: self.root_cert.display().to_string(),
            source,
        })?;
        if parse_pem_certs(&String::from_utf8_lossy(&root)).is_empty() {
            return Err(ControlError::File {
                field: "rootCert",
                path: self.root_cert.display().to_string(),
                reason: "holds no PEM certificate",
            });
        }
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(root))
            .domain_name(self.tls_name.clone());
        let endpoint = Endpoint::from_shared(self.address.clone())
            .map_err(|e| ControlError::Address {
                addr: self.address.clone(),
                reason: e.to_string(),
            })?
            .tls_config(tls)
            .map_err(|source| ControlError::Connect {
                addr: self.address.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        Ok(endpoint.connect_lazy())
    }

    pub fn token(&self) -> Result<String, ControlError> {
        std::fs::read_to_string(&self.token_file)
            .map(|t| t.trim().to_string())
            .map_err(|source| ControlError::Read {
                field: "tokenFile",
                path: self.token_file.display().to_string(),
                source,
            })
    }

    /// The token file checked once at start, so a wrong path fails at once with the field that names it rather
    /// than in a retry loop (it is still re-read for every request: projected tokens rotate). The root file is
    /// checked by [`Self::channel`].
    pub fn check_token(&self) -> Result<(), ControlError> {
        if self.token()?.is_empty() {
            return Err(ControlError::File {
                field: "tokenFile",
                path: self.token_file.display().to_string(),
                reason: "is empty",
            });
        }
        Ok(())
    }

    fn authorize<T>(&self, msg: T) -> Result<tonic::Request<T>, ControlError> {
        let mut req = tonic::Request::new(msg);
        let value =
            format!("Bearer {}", self.token()?)
                .parse()
                .map_err(|_| ControlError::Address {
                    addr: self.token_file.display().to_string(),
                    reason: "token is not a valid header value".into(),
                })?;
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }

    /// Asks the CA for a certificate for `identity` (impersonating it when it is not the caller's own).
    pub async fn fetch_certificate(
        &self,
        channel: Channel,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<WorkloadCert, ControlError> {
        let (csr, key) = crate::ca::new_csr(identity).map_err(|source| ControlError::Csr {
            identity: identity.to_string(),
            source,
        })?;
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(
            "ImpersonatedIdentity".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(identity.to_string())),
            },
        );
        let req = self.authorize(IstioCertificateRequest {
            csr,
            validity_duration: ttl.as_secs() as i64,
            metadata: Some(prost_types::Struct { fields }),
        })?;
        let resp = IstioCertificateServiceClient::new(channel)
            .create_certificate(req)
            .await?
            .into_inner();
        let bad = |reason: &str| ControlError::Chain {
            identity: identity.to_string(),
            reason: reason.into(),
        };
        // Leaf and intermediates first; the last element is the trust bundle (one or more roots).
        let Some((bundle, presented)) = resp.cert_chain.split_last() else {
            return Err(bad("empty chain"));
        };
        let chain: Vec<_> = presented.iter().flat_map(|p| parse_pem_certs(p)).collect();
        let roots = parse_pem_certs(bundle);
        if chain.is_empty() || roots.is_empty() {
            return Err(bad("expected leaf, intermediates, then the root bundle"));
        }
        let got = crate::tls::identity_of(&chain[0]).map_err(|e| bad(&e.to_string()))?;
        if &got != identity {
            return Err(bad(&format!("leaf is for {got}")));
        }
        let (_, leaf) = x509_parser::parse_x509_certificate(chain[0].as_ref())
            .map_err(|e| bad(&e.to_string()))?;
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(leaf.validity().not_after.timestamp().max(0) as u64);
        Ok(WorkloadCert::new(
            identity.clone(),
            chain,
            key,
            roots,
            not_after,
        ))
    }
}

/// Resources of one type as a proxy holds them: name → (version, resource).
pub type Held<M> = std::collections::BTreeMap<String, (String, M)>;

/// `held` with a delta response applied (removals, then every resource decoded as `M`); the caller swaps it in
/// only once it accepts the whole result, so a bad response changes nothing.
pub fn apply_delta<M: prost::Message + prost::Name + Default + Clone>(
    held: &Held<M>,
    resp: &DeltaDiscoveryResponse,
) -> Result<Held<M>, String> {
    let mut next = held.clone();
    for name in &resp.removed_resources {
        next.remove(name);
    }
    for r in &resp.resources {
        let any = r
            .resource
            .as_ref()
            .ok_or_else(|| format!("resource {}: empty", r.name))?;
        let msg: M = any
            .to_msg()
            .map_err(|e| format!("resource {}: {e}", r.name))?;
        next.insert(r.name.clone(), (r.version.clone(), msg));
    }
    Ok(next)
}

/// The versions held, as `initial_resource_versions` wants them.
pub fn versions_of<M>(held: &Held<M>) -> HashMap<String, String> {
    held.iter()
        .map(|(n, (v, _))| (n.clone(), v.clone()))
        .collect()
}

/// What a proxy does with the resources of one type it receives.
pub trait XdsHandler: Send {
    /// Types to subscribe to (wildcard).
    fn type_urls(&self) -> Vec<String>;
    /// Versions of the resources held for `type_url`, sent as `initial_resource_versions` on (re)connect.
    fn versions(&self, type_url: &str) -> HashMap<String, String>;
    /// Applies one response atomically; an error NACKs it and keeps the previous config.
    fn apply(&mut self, response: &DeltaDiscoveryResponse) -> Result<(), String>;
}

/// Runs the delta xDS client until the process ends: reconnects with jittered exponential backoff (100 ms to
/// 15 s), and the handler keeps serving its last config meanwhile.
pub async fn run_xds<H: XdsHandler>(cp: ControlPlane, node: Node, mut handler: H) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(15));
    loop {
        let started = std::time::Instant::now();
        match xds_stream(&cp, &node, &mut handler).await {
            Ok(()) => tracing::warn!("xDS stream ended; reconnecting"),
            Err(e) => {
                tracing::warn!(error = %e, "xDS stream failed; keeping last config and reconnecting")
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff.reset();
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn xds_stream<H: XdsHandler>(
    cp: &ControlPlane,
    node: &Node,
    handler: &mut H,
) -> Result<(), ControlError> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for type_url in handler.type_urls() {
        let first = DeltaDiscoveryRequest {
            node: Some(node.clone()),
            initial_resource_versions: handler.versions(&type_url).into_iter().collect(),
            type_url,
            ..Default::default()
        };
        // The receiver is alive: it is handed to tonic below.
        let _ = tx.send(first).await;
    }
    let req = cp.authorize(tokio_stream::wrappers::ReceiverStream::new(rx))?;
    let mut responses = AggregatedDiscoveryServiceClient::new(cp.channel()?)
        .delta_aggregated_resources(req)
        .await?
        .into_inner();
    tracing::info!(address = %cp.address, "xDS stream established");
    while let Some(resp) = responses.message().await? {
        let error_detail = handler.apply(&resp).err().map(|message| {
            tracing::warn!(r#type = %resp.type_url, %message, "xDS response rejected (NACK)");
            RpcStatus {
                code: tonic::Code::InvalidArgument as i32,
                message,
                details: Vec::new(),
            }
        });
        let ack = DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail,
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            break;
        }
    }
    Ok(())
}
