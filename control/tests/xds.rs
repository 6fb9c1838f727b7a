//! The delta ADS server's protocol on loopback: wildcard subscription, nonces and ACK/NACK, only changes pushed,
//! removals, `initial_resource_versions` on reconnect, authentication.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_control::ca::{Caller, TokenAuthenticator};
use mesh_control::xds::{AdsService, Resource, Snapshot, XdsMetrics};
use mesh_primitives::identity::Identity;
use mesh_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use mesh_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use mesh_proto::google::rpc::Status as RpcStatus;
use mesh_proto::istio::workload::{address, Address, Workload};
use mesh_proto::ADDRESS_TYPE_URL;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tonic::Streaming;

fn workload(name: &str, version: &str) -> Resource {
    Resource::new(&Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: name.into(),
            name: name.into(),
            canonical_revision: version.into(),
            ..Default::default()
        })),
    })
}

fn snapshot(version: u64, items: &[(&str, &str)]) -> Arc<Snapshot> {
    let map: BTreeMap<String, Resource> = items
        .iter()
        .map(|(n, v)| (n.to_string(), workload(n, v)))
        .collect();
    let mut resources = BTreeMap::new();
    resources.insert(ADDRESS_TYPE_URL.to_string(), map);
    Arc::new(Snapshot::new(version, Instant::now(), resources, None))
}

struct Harness {
    addr: std::net::SocketAddr,
    snaps: watch::Sender<Arc<Snapshot>>,
    registry: Arc<std::sync::Mutex<Registry>>,
}

async fn server() -> Harness {
    let (snaps, rx) = watch::channel(snapshot(1, &[("a", "1"), ("b", "1")]));
    let mut registry = Registry::default();
    let metrics = XdsMetrics::register(&mut registry);
    let mut tokens = HashMap::new();
    tokens.insert(
        "good".to_string(),
        Caller {
            identity: Identity::new("cluster.local", "istio-system", "ztunnel"),
            node: Some("node1".into()),
        },
    );
    let ads = AdsService::new(rx, Arc::new(TokenAuthenticator::new(tokens)), metrics);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(ads))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Harness {
        addr,
        snaps,
        registry: Arc::new(std::sync::Mutex::new(registry)),
    }
}

struct Client {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

async fn connect(
    h: &Harness,
    token: &str,
    initial: HashMap<String, String>,
) -> Result<Client, tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", h.addr))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        initial_resource_versions: initial.into_iter().collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let rx = client.delta_aggregated_resources(req).await?.into_inner();
    Ok(Client { tx, rx })
}

impl Client {
    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response within 5 s")
            .unwrap()
            .expect("stream open")
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse, error: Option<&str>) {
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                error_detail: error.map(|m| RpcStatus {
                    code: 3,
                    message: m.into(),
                    details: vec![],
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// No response arrives for a while (the only way to show nothing was resent).
    async fn quiet(&mut self) -> bool {
        tokio::time::timeout(Duration::from_millis(300), self.rx.message())
            .await
            .is_err()
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut n: Vec<String> = r.resources.iter().map(|x| x.name.clone()).collect();
    n.sort();
    n
}

#[tokio::test]
async fn wildcard_then_only_changes_then_removals() {
    let h = server().await;
    let mut c = connect(&h, "good", HashMap::new()).await.unwrap();
    let first = c.next().await;
    assert_eq!(names(&first), ["a", "b"]);
    assert!(!first.nonce.is_empty());
    c.ack(&first, None).await;
    assert!(c.quiet().await, "nothing is resent after an ACK");

    // b changes, a does not: only b is pushed.
    h.snaps
        .send_replace(snapshot(2, &[("a", "1"), ("b", "2"), ("c", "1")]));
    let second = c.next().await;
    assert_eq!(names(&second), ["b", "c"]);
    assert!(second.removed_resources.is_empty());
    assert_ne!(second.nonce, first.nonce);
    c.ack(&second, None).await;

    // a is deleted.
    h.snaps.send_replace(snapshot(3, &[("b", "2"), ("c", "1")]));
    let third = c.next().await;
    assert!(third.resources.is_empty());
    assert_eq!(third.removed_resources, ["a"]);

    // An identical snapshot pushes nothing.
    c.ack(&third, None).await;
    h.snaps.send_replace(snapshot(4, &[("b", "2"), ("c", "1")]));
    assert!(c.quiet().await, "unchanged resources are not resent");
}

#[tokio::test]
async fn nack_is_counted_and_ack_observes_convergence() {
    let h = server().await;
    let mut c = connect(&h, "good", HashMap::new()).await.unwrap();
    let first = c.next().await;
    c.ack(&first, Some("bad workload")).await;
    h.snaps.send_replace(snapshot(2, &[("a", "2"), ("b", "1")]));
    let second = c.next().await;
    c.ack(&second, None).await;
    let text = || mesh_core::metrics::encode(&h.registry.lock().unwrap());
    let end = Instant::now() + Duration::from_secs(5);
    while !text().contains("pilot_proxy_convergence_time_count 1") {
        assert!(Instant::now() < end, "{}", text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        text().contains("pilot_total_xds_rejects{type=\"address\"} 1"),
        "{}",
        text()
    );
}

#[tokio::test]
async fn reconnect_with_initial_versions_gets_only_what_changed() {
    let h = server().await;
    let mut c = connect(&h, "good", HashMap::new()).await.unwrap();
    let first = c.next().await;
    let held: HashMap<String, String> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(c);
    // While disconnected: a changes, b is deleted.
    h.snaps.send_replace(snapshot(2, &[("a", "2")]));
    let mut c = connect(&h, "good", held.clone()).await.unwrap();
    let r = c.next().await;
    assert_eq!(names(&r), ["a"]);
    assert_eq!(r.removed_resources, ["b"]);
    // Reconnecting fully up to date: an empty response, nothing resent.
    let held2: HashMap<String, String> = [("a".to_string(), r.resources[0].version.clone())].into();
    let mut c2 = connect(&h, "good", held2).await.unwrap();
    let r2 = c2.next().await;
    assert!(
        r2.resources.is_empty() && r2.removed_resources.is_empty(),
        "{r2:?}"
    );
}

#[tokio::test]
async fn unauthenticated_streams_are_refused() {
    let h = server().await;
    let err = connect(&h, "wrong", HashMap::new())
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}
