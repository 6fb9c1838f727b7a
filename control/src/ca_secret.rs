//! Kubernetes mode without a plug-in CA: the self-signed root lives in the Secret `istio-ca-secret` of the root
//! namespace (Istio's name and keys), so every replica signs with one root, never a root per pod. It is created
//! once, create-if-absent: replicas starting together race to create it, and the losers (409 Conflict) read
//! the winner's.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use mesh_core::ca::{CaError, CertificateAuthority};

/// Istio's name for the self-signed CA's Secret.
pub const SECRET: &str = "istio-ca-secret";
const CERT_KEY: &str = "ca-cert.pem";
const KEY_KEY: &str = "ca-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    #[error("reading Secret {namespace}/{SECRET}: {source} (the control plane needs get and create on secrets in its namespace)")]
    Get {
        namespace: String,
        source: kube::Error,
    },
    #[error("creating Secret {namespace}/{SECRET}: {source} (the control plane needs get and create on secrets in its namespace)")]
    Create {
        namespace: String,
        source: kube::Error,
    },
    #[error("Secret {namespace}/{SECRET} has no {key}: delete it to have a new root made, or restore the key")]
    Missing {
        namespace: String,
        key: &'static str,
    },
    #[error("Secret {namespace}/{SECRET}: {source}")]
    Ca { namespace: String, source: CaError },
}

/// The CA kept in the Secret, made and stored first if there is none.
pub async fn load_or_create(
    client: Client,
    namespace: &str,
    trust_domain: &str,
) -> Result<CertificateAuthority, CaSecretError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let ca_err = |source| CaSecretError::Ca {
        namespace: namespace.to_string(),
        source,
    };
    // Two rounds at most: a lost race (409) means the Secret now exists, and the second read finds it.
    for _ in 0..2 {
        let existing = api
            .get_opt(SECRET)
            .await
            .map_err(|source| CaSecretError::Get {
                namespace: namespace.to_string(),
                source,
            })?;
        if let Some(s) = existing {
            return from_secret(&s, namespace, trust_domain);
        }
        let fresh = CertificateAuthority::generate(trust_domain).map_err(ca_err)?;
        match api
            .create(&PostParams::default(), &secret_of(&fresh, namespace))
            .await
        {
            Ok(_) => {
                tracing::info!(secret = SECRET, namespace, "created the mesh root CA");
                return Ok(fresh);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::info!(
                    secret = SECRET,
                    namespace,
                    "another replica created the root first; using it"
                );
            }
            Err(source) => {
                return Err(CaSecretError::Create {
                    namespace: namespace.to_string(),
                    source,
                })
            }
        }
    }
    Err(CaSecretError::Missing {
        namespace: namespace.to_string(),
        key: CERT_KEY,
    })
}

fn secret_of(ca: &CertificateAuthority, namespace: &str) -> Secret {
    let data = [
        (CERT_KEY, ca.cert_chain_pem()),
        (KEY_KEY, ca.key_pem().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(SECRET.into()),
            namespace: Some(namespace.into()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "mesh-control".to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some("istio.io/ca-root".into()),
        data: Some(data),
        ..Secret::default()
    }
}

fn from_secret(
    s: &Secret,
    namespace: &str,
    trust_domain: &str,
) -> Result<CertificateAuthority, CaSecretError> {
    let field = |key: &'static str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .ok_or(CaSecretError::Missing {
                namespace: namespace.to_string(),
                key,
            })
    };
    CertificateAuthority::from_pem(trust_domain, &field(CERT_KEY)?, &field(KEY_KEY)?).map_err(
        |source| CaSecretError::Ca {
            namespace: namespace.to_string(),
            source,
        },
    )
}
