//! Who may obtain which certificate: the CA service called in-process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_control::ca::{CaService, Caller, NodeIdentities, TokenAuthenticator};
use mesh_core::ca::{new_csr, CertificateAuthority};
use mesh_primitives::identity::Identity;
use mesh_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use mesh_proto::istio::v1::auth::IstioCertificateRequest;
use prometheus_client::registry::Registry;

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa)
}

fn service() -> CaService {
    let mut tokens = HashMap::new();
    tokens.insert(
        "node1".to_string(),
        Caller {
            identity: id("istio-system", "ztunnel"),
            node: Some("node1".into()),
        },
    );
    tokens.insert(
        "waypoint".to_string(),
        Caller {
            identity: id("prod", "waypoint"),
            node: None,
        },
    );
    let mut nodes = BTreeMap::new();
    nodes.insert("node1".to_string(), BTreeSet::from([id("prod", "web")]));
    nodes.insert("node2".to_string(), BTreeSet::from([id("prod", "db")]));
    CaService::new(
        Arc::new(CertificateAuthority::generate("cluster.local").unwrap()),
        Arc::new(TokenAuthenticator::new(tokens)),
        Arc::new(ArcSwap::from_pointee(NodeIdentities(nodes))),
        Duration::from_secs(3600),
        &mut Registry::default(),
    )
}

async fn ask(
    ca: &CaService,
    token: Option<&str>,
    csr_for: &Identity,
    impersonate: Option<&Identity>,
) -> Result<Vec<String>, tonic::Status> {
    let (csr, _) = new_csr(csr_for).unwrap();
    let metadata = impersonate.map(|i| {
        let mut fields = BTreeMap::new();
        fields.insert(
            "ImpersonatedIdentity".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(i.to_string())),
            },
        );
        prost_types::Struct { fields }
    });
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 600,
        metadata,
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    ca.create_certificate(req)
        .await
        .map(|r| r.into_inner().cert_chain)
}

#[tokio::test]
async fn node_proxies_impersonate_only_their_nodes_pods() {
    let ca = service();
    let web = id("prod", "web");
    let chain = ask(&ca, Some("node1"), &web, Some(&web))
        .await
        .expect("a pod on node1");
    assert_eq!(chain.len(), 2, "leaf, then the root bundle");
    let db = id("prod", "db");
    let err = ask(&ca, Some("node1"), &db, Some(&db)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message()
            .contains("no pod with that identity is scheduled on node1"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_waypoint_gets_only_its_own_identity() {
    let ca = service();
    let me = id("prod", "waypoint");
    ask(&ca, Some("waypoint"), &me, None)
        .await
        .expect("its own identity");
    let web = id("prod", "web");
    let err = ask(&ca, Some("waypoint"), &web, Some(&web))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("only node proxies may impersonate"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_csr_must_ask_for_the_authorized_identity_and_callers_must_authenticate() {
    let ca = service();
    // Authorized as prod/waypoint, but the CSR's SAN says prod/web: refused.
    let err = ask(&ca, Some("waypoint"), &id("prod", "web"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = ask(&ca, None, &id("prod", "web"), None).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = ask(&ca, Some("guess"), &id("prod", "web"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

/// File mode, as configured: `workloadTokens` authenticate a waypoint as exactly its own identity.
#[tokio::test]
async fn a_workload_token_from_the_config_gets_its_own_identity_only() {
    use mesh_control::config::{Config, NodeToken, WorkloadToken};

    let dir = std::env::temp_dir().join(format!("mesh-ca-workload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (wp_file, node_file) = (dir.join("waypoint"), dir.join("node1"));
    std::fs::write(&wp_file, "wp-secret\n").unwrap();
    std::fs::write(&node_file, "node-secret\n").unwrap();
    let mut cfg = Config {
        config_dir: dir.clone(),
        node_tokens: vec![NodeToken {
            node: "node1".into(),
            token_file: node_file,
        }],
        workload_tokens: vec![WorkloadToken {
            namespace: "prod".into(),
            service_account: "waypoint".into(),
            token_file: wp_file.clone(),
        }],
        ..Config::default()
    };
    cfg.validate().expect("valid config");
    let auth = mesh_control::server::authenticator(&cfg).expect("tokens read");
    let ca = CaService::new(
        Arc::new(CertificateAuthority::generate("cluster.local").unwrap()),
        Arc::new(auth),
        Arc::new(ArcSwap::from_pointee(NodeIdentities(BTreeMap::from([(
            "node1".to_string(),
            BTreeSet::from([id("prod", "web")]),
        )])))),
        Duration::from_secs(3600),
        &mut Registry::default(),
    );

    let me = id("prod", "waypoint");
    ask(&ca, Some("wp-secret"), &me, None)
        .await
        .expect("its own identity");
    ask(&ca, Some("wp-secret"), &me, Some(&me))
        .await
        .expect("naming itself is not impersonation");
    let web = id("prod", "web");
    let err = ask(&ca, Some("wp-secret"), &web, Some(&web))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::PermissionDenied,
        "{}",
        err.message()
    );
    let err = ask(&ca, Some("wp-secret"), &web, None).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
    // The node token in the same config still works for its node's pods.
    ask(&ca, Some("node-secret"), &web, Some(&web))
        .await
        .expect("node1's pod");

    // One token for two callers is refused at start; so are entries that cannot name an identity.
    cfg.node_tokens[0].token_file = wp_file;
    let err = mesh_control::server::authenticator(&cfg)
        .err()
        .expect("duplicate token refused");
    assert!(err.to_string().contains("same token"), "{err}");
    cfg.workload_tokens[0].service_account = String::new();
    let err = cfg.validate().expect_err("empty service account refused");
    assert!(
        err.to_string().contains("workloadTokens[0].serviceAccount"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
