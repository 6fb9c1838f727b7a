//! The certificate authority as a gRPC service: `istio.v1.auth.IstioCertificateService/CreateCertificate`.
//!
//! Authentication of callers is the security boundary. A node proxy (ztunnel) may impersonate only identities of
//! pods scheduled on its own node, as Istio's ztunnel does; a waypoint only its own identity. File mode
//! authenticates callers by per-node bootstrap tokens from the control plane's config; Kubernetes mode checks
//! projected service-account tokens with a TokenReview (`token_review.rs`) behind the same [`Authenticator`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_core::ca::CertificateAuthority;
use mesh_core::metrics::BareCounter;
use mesh_primitives::identity::Identity;
use mesh_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use mesh_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

/// Who is calling, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub identity: Identity,
    /// Set for node proxies: the node whose pods they may impersonate.
    pub node: Option<String>,
}

#[tonic::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status>;
}

/// File mode: bearer tokens from the control plane's config, each bound to a caller.
pub struct TokenAuthenticator {
    tokens: HashMap<String, Caller>,
}

impl TokenAuthenticator {
    pub fn new(tokens: HashMap<String, Caller>) -> Self {
        Self { tokens }
    }
}

/// The bearer token of a gRPC request (`authorization: Bearer <token>`).
pub fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    let value = metadata.get("authorization").ok_or_else(|| {
        Status::unauthenticated("no authorization header: send `authorization: Bearer <token>`")
    })?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("authorization header is not `Bearer <token>`"))
}

#[tonic::async_trait]
impl Authenticator for TokenAuthenticator {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let token = bearer(metadata)?;
        self.tokens
            .get(token)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown bootstrap token"))
    }
}

pub use mesh_translate::NodeIdentities;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    issued,
    unauthenticated,
    denied,
    bad_request,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CsrLabels {
    pub outcome: Outcome,
}

pub struct CaService {
    ca: Arc<CertificateAuthority>,
    auth: Arc<dyn Authenticator>,
    nodes: Arc<ArcSwap<NodeIdentities>>,
    default_ttl: Duration,
    max_ttl: Duration,
    requests: Family<CsrLabels, Counter>,
    /// Istio's names for the same (istiod's `citadel_server_*_count`).
    csrs: BareCounter,
    issued: BareCounter,
    auth_failures: BareCounter,
}

impl CaService {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        auth: Arc<dyn Authenticator>,
        nodes: Arc<ArcSwap<NodeIdentities>>,
        default_ttl: Duration,
        registry: &mut Registry,
    ) -> Self {
        let requests = Family::<CsrLabels, Counter>::default();
        registry.register(
            "mesh_ca_csrs",
            "Certificate signing requests, by outcome",
            requests.clone(),
        );
        let (csrs, issued, auth_failures) = Default::default();
        registry.register(
            "citadel_server_csr_count",
            "The number of CSRs received by the CA",
            BareCounter::clone(&csrs),
        );
        registry.register(
            "citadel_server_success_cert_issuance_count",
            "The number of certificates issued",
            BareCounter::clone(&issued),
        );
        registry.register(
            "citadel_server_authentication_failure_count",
            "The number of CSRs refused for lack of valid credentials",
            BareCounter::clone(&auth_failures),
        );
        Self {
            ca,
            auth,
            nodes,
            default_ttl,
            max_ttl: default_ttl.max(Duration::from_secs(24 * 3600)),
            requests,
            csrs,
            issued,
            auth_failures,
        }
    }

    fn count(&self, outcome: Outcome) {
        self.csrs.inc();
        match outcome {
            Outcome::issued => {
                self.issued.inc();
            }
            Outcome::unauthenticated => {
                self.auth_failures.inc();
            }
            Outcome::denied | Outcome::bad_request => {}
        }
        self.requests.get_or_create(&CsrLabels { outcome }).inc();
    }

    /// The identity the certificate is for: the caller's own, or one it may impersonate.
    fn authorize(
        &self,
        caller: &Caller,
        req: &IstioCertificateRequest,
    ) -> Result<Identity, Status> {
        let impersonated = req
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("ImpersonatedIdentity"))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            });
        let Some(wanted) = impersonated else {
            return Ok(caller.identity.clone());
        };
        let wanted: Identity = wanted
            .parse()
            .map_err(|e| Status::invalid_argument(format!("ImpersonatedIdentity: {e}")))?;
        if wanted == caller.identity {
            return Ok(wanted);
        }
        let Some(node) = &caller.node else {
            return Err(Status::permission_denied(format!(
                "{} may not impersonate {wanted}: only node proxies may impersonate",
                caller.identity
            )));
        };
        let nodes = self.nodes.load();
        if nodes.0.get(node).is_some_and(|ids| ids.contains(&wanted)) {
            return Ok(wanted);
        }
        Err(Status::permission_denied(format!(
            "the node proxy of {node} may not obtain a certificate for {wanted}: no pod with that identity is scheduled on {node}"
        )))
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let caller = match self.auth.authenticate(request.metadata()).await {
            Ok(c) => c,
            Err(e) => {
                self.count(Outcome::unauthenticated);
                tracing::warn!(peer = ?request.remote_addr(), reason = e.message(), "CSR refused: unauthenticated");
                return Err(e);
            }
        };
        let req = request.into_inner();
        let identity = match self.authorize(&caller, &req) {
            Ok(id) => id,
            Err(e) => {
                self.count(Outcome::denied);
                tracing::warn!(caller = %caller.identity, node = ?caller.node, reason = e.message(), "CSR refused");
                return Err(e);
            }
        };
        let ttl = match req.validity_duration {
            s if s > 0 => Duration::from_secs(s as u64).min(self.max_ttl),
            _ => self.default_ttl,
        };
        match self.ca.sign_csr(&req.csr, &identity, ttl) {
            Ok(chain) => {
                self.count(Outcome::issued);
                tracing::info!(%identity, caller = %caller.identity, node = caller.node.as_deref().unwrap_or("-"), ttl_secs = ttl.as_secs(), "certificate issued");
                Ok(Response::new(IstioCertificateResponse {
                    cert_chain: chain,
                    root_cert: None,
                }))
            }
            Err(e) => {
                self.count(Outcome::bad_request);
                tracing::warn!(%identity, error = %e, "CSR rejected");
                Err(Status::invalid_argument(e.to_string()))
            }
        }
    }
}
