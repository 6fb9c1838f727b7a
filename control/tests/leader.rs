//! Replicated control plane over kube-rs' own client and a mock API server that keeps one Lease (with
//! resourceVersion conflicts, as the real one): only the Lease holder applies waypoint objects; stopping it hands
//! the Lease over and the other replica takes up the work; a holder that dies without giving it up loses it once
//! it expires.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mesh_control::deploy::{Deployer, WaypointDeployment};
use mesh_control::leader::Election;
use mesh_control::root_cert::RootCertPublisher;
use mesh_model::{load_str, ConfigSet};
use tokio::sync::watch;

type Handle = tower_test::mock::Handle<Request<kube::client::Body>, Response<Full<Bytes>>>;

const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/istio-system/leases/mesh-control-writer";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/istio-system/leases";

/// The API server's one Lease and its resourceVersion.
#[derive(Default)]
struct Store {
    lease: Option<serde_json::Value>,
    version: u64,
    /// Every object applied: (path, its ownerReferences).
    owners: Vec<(String, serde_json::Value)>,
}

fn reply(code: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = code;
    r
}

fn status(code: StatusCode, reason: &str) -> Response<Full<Bytes>> {
    reply(
        code,
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": reason, "reason": reason, "code": code.as_u16()}),
    )
}

/// One replica's connection to the shared API server; counts the waypoint objects it applies.
async fn api_server(mut handle: Handle, store: Arc<Mutex<Store>>, applied: Arc<AtomicUsize>) {
    while let Some((req, send)) = handle.next_request().await {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let path = parts.uri.path().to_string();
        let mut s = store.lock().unwrap();
        let resp = match (parts.method.as_str(), path.as_str()) {
            ("GET", LEASE) => match &s.lease {
                Some(l) => reply(StatusCode::OK, l.clone()),
                None => status(StatusCode::NOT_FOUND, "NotFound"),
            },
            ("POST", LEASES) if s.lease.is_some() => status(StatusCode::CONFLICT, "AlreadyExists"),
            ("PUT", LEASE) | ("POST", LEASES) => {
                let mut lease: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let sent = lease["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string);
                if parts.method == "PUT" && sent != Some(s.version.to_string()) {
                    status(StatusCode::CONFLICT, "Conflict")
                } else {
                    s.version += 1;
                    lease["metadata"]["resourceVersion"] = s.version.to_string().into();
                    s.lease = Some(lease.clone());
                    reply(StatusCode::OK, lease)
                }
            }
            ("PATCH", p) if p.starts_with("/api") && p.contains("/namespaces/shop/") => {
                applied.fetch_add(1, Ordering::AcqRel);
                let mut obj: serde_json::Value = serde_json::from_slice(&body).unwrap();
                s.owners
                    .push((p.to_string(), obj["metadata"]["ownerReferences"].clone()));
                obj["metadata"]["resourceVersion"] = "1".into();
                reply(StatusCode::OK, obj)
            }
            (m, p) => panic!("unexpected {m} {p}"),
        };
        drop(s);
        send.send_response(resp);
    }
}

struct Replica {
    leading: watch::Receiver<bool>,
    applied: Arc<AtomicUsize>,
    stop: tokio_util::sync::CancellationToken,
    election: tokio::task::JoinHandle<()>,
}

fn replica(
    name: &str,
    store: &Arc<Mutex<Store>>,
    config: &watch::Receiver<mesh_control::kube::Latest>,
) -> Replica {
    let applied = Arc::new(AtomicUsize::new(0));
    let (service, handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<Full<Bytes>>>();
    tokio::spawn(api_server(handle, store.clone(), applied.clone()));
    let client = kube::Client::new(service, "istio-system");
    let election = Election {
        namespace: "istio-system".into(),
        identity: name.into(),
        lease_duration: Duration::from_secs(1),
        renew_every: Duration::from_millis(100),
    };
    let (tx, leading) = watch::channel(false);
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let election =
        tokio::spawn(election.run(client.clone(), tx, async move { s.cancelled().await }));
    tokio::spawn(mesh_control::server::run_writer(
        config.clone(),
        leading.clone(),
        Deployer::new(client.clone(), WaypointDeployment::default()),
        RootCertPublisher::new(client, "ROOT PEM".into()),
    ));
    Replica {
        leading,
        applied,
        stop,
        election,
    }
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn waypoint_config() -> mesh_control::kube::Latest {
    let (objects, diags) = load_str(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop, uid: gw-uid-1}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n",
        None,
    );
    assert!(diags.is_empty(), "{diags:?}");
    let mut set = ConfigSet::new();
    for o in objects {
        set.insert(o, None);
    }
    (Arc::new(set), Vec::new())
}

#[tokio::test]
async fn only_the_lease_holder_writes_and_a_stop_hands_over() {
    let store = Arc::new(Mutex::new(Store::default()));
    let (_config_tx, config) = watch::channel(waypoint_config());
    let a = replica("control-a", &store, &config);
    eventually("a leads", || *a.leading.borrow()).await;
    let b = replica("control-b", &store, &config);
    // The root ConfigMap of the one namespace, and the ServiceAccount, Deployment and Service of its waypoint:
    // applied by the leader alone.
    eventually("a applies the waypoint", || {
        a.applied.load(Ordering::Acquire) == 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // five of b's rounds
    assert!(!*b.leading.borrow(), "one leader at a time");
    assert_eq!(
        b.applied.load(Ordering::Acquire),
        0,
        "a follower never writes"
    );
    // The waypoint's objects are owned by their Gateway (garbage-collected with it); the root ConfigMap is not.
    let owner = serde_json::json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "name": "waypoint", "uid": "gw-uid-1", "controller": true}]);
    let owners = store.lock().unwrap().owners.clone();
    assert_eq!(owners.len(), 4, "{owners:?}");
    for (path, refs) in &owners {
        if path.contains("/configmaps/") {
            assert!(refs.is_null(), "{path}: {refs}");
        } else {
            assert_eq!(refs, &owner, "{path}");
        }
    }

    // A graceful stop gives the Lease up: b takes over well before it would expire, and takes up the work.
    a.stop.cancel();
    a.election.await.unwrap();
    let handed_over = tokio::time::Instant::now();
    eventually("b leads", || *b.leading.borrow()).await;
    assert!(
        handed_over.elapsed() < Duration::from_millis(900),
        "{:?}",
        handed_over.elapsed()
    );
    eventually("b applies the waypoint", || {
        b.applied.load(Ordering::Acquire) == 4
    })
    .await;
    assert_eq!(a.applied.load(Ordering::Acquire), 4);
    let lease = store.lock().unwrap().lease.clone().unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "control-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);

    // A holder that dies without giving the Lease up (b's election stops renewing) loses it once it expires.
    b.election.abort();
    let c = replica("control-c", &store, &config);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!*c.leading.borrow(), "the Lease is b's until it expires");
    eventually("c takes over the expired Lease", || *c.leading.borrow()).await;
    eventually("c applies the waypoint", || {
        c.applied.load(Ordering::Acquire) == 4
    })
    .await;
    let lease = store.lock().unwrap().lease.clone().unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "control-c");
    assert_eq!(lease["spec"]["leaseTransitions"], 2);
}
