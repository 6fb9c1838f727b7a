//! Kubernetes mode authentication: the caller's projected service-account token, checked with a TokenReview.
//! A node proxy is recognised by its service account, and its node is the one the token is bound to (the
//! `authentication.kubernetes.io/node-name` extra of bound tokens), so it may impersonate only that node's pods.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use mesh_primitives::identity::Identity;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::ca::{bearer, Authenticator, Caller};

/// The audience proxies request their tokens for (Istio's).
pub const AUDIENCE: &str = "istio-ca";
const NODE_EXTRA: &str = "authentication.kubernetes.io/node-name";

pub struct TokenReviewAuthenticator {
    client: kube::Client,
    trust_domain: String,
    /// `namespace/serviceaccount` of node proxies (ztunnel).
    node_proxies: Vec<String>,
}

impl TokenReviewAuthenticator {
    pub fn new(client: kube::Client, trust_domain: &str, node_proxies: Vec<String>) -> Self {
        Self {
            client,
            trust_domain: trust_domain.to_string(),
            node_proxies,
        }
    }
}

#[tonic::async_trait]
impl Authenticator for TokenReviewAuthenticator {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let token = bearer(metadata)?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let out = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Status::unavailable(format!("TokenReview failed: {e}")))?;
        let status = out.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status
                .error
                .unwrap_or_else(|| "token not authenticated".into());
            return Err(Status::unauthenticated(format!("TokenReview: {why}")));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some(rest) = username.strip_prefix("system:serviceaccount:") else {
            return Err(Status::unauthenticated(format!(
                "{username} is not a service account"
            )));
        };
        let Some((ns, sa)) = rest.split_once(':') else {
            return Err(Status::unauthenticated(format!(
                "malformed service account user {username}"
            )));
        };
        let node = if self.node_proxies.iter().any(|p| *p == format!("{ns}/{sa}")) {
            let node = user
                .extra
                .as_ref()
                .and_then(|e| e.get(NODE_EXTRA))
                .and_then(|v| v.first().cloned())
                .ok_or_else(|| {
                    Status::unauthenticated("node proxy token is not bound to a node")
                })?;
            Some(node)
        } else {
            None
        };
        Ok(Caller {
            identity: Identity::new(&self.trust_domain, ns, sa),
            node,
        })
    }
}
