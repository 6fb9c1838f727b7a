//! Kubernetes mode's one root for all replicas, over kube-rs' own client and a mock API server: two control
//! planes starting together both find no Secret, both try to create it, and end up signing with the same root.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mesh_primitives::identity::Identity;

type Handle = tower_test::mock::Handle<Request<kube::client::Body>, Response<Full<Bytes>>>;

const SECRET_PATH: &str = "/api/v1/namespaces/istio-system/secrets/istio-ca-secret";
const SECRETS_PATH: &str = "/api/v1/namespaces/istio-system/secrets";

fn status(code: StatusCode, reason: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": reason, "reason": reason, "code": code.as_u16()});
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = code;
    r
}

/// One replica's view of a shared API server: the Secret store, and a barrier that holds each replica's first
/// read until both have read (so both see no Secret and race to create it).
async fn api_server(
    mut handle: Handle,
    store: Arc<Mutex<Option<serde_json::Value>>>,
    race: Arc<tokio::sync::Barrier>,
    posts: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut first_read = true;
    let mut creates = 0;
    while let Some((req, send)) = handle.next_request().await {
        let (parts, body) = req.into_parts();
        match (parts.method.as_str(), parts.uri.path()) {
            ("GET", SECRET_PATH) => {
                let held = store.lock().unwrap().clone();
                if first_read {
                    first_read = false;
                    race.wait().await;
                }
                send.send_response(match held {
                    Some(s) => Response::new(Full::new(Bytes::from(s.to_string()))),
                    None => status(StatusCode::NOT_FOUND, "NotFound"),
                });
            }
            ("POST", SECRETS_PATH) => {
                creates += 1;
                posts.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                let bytes = body.collect().await.unwrap().to_bytes();
                let mut secret: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                secret["metadata"]["resourceVersion"] = "1".into();
                let mut held = store.lock().unwrap();
                send.send_response(if held.is_some() {
                    status(StatusCode::CONFLICT, "AlreadyExists")
                } else {
                    *held = Some(secret.clone());
                    let mut r = Response::new(Full::new(Bytes::from(secret.to_string())));
                    *r.status_mut() = StatusCode::CREATED;
                    r
                });
            }
            (m, p) => panic!("unexpected {m} {p}"),
        }
        assert!(creates <= 1, "a replica creates at most once");
    }
}

#[tokio::test]
async fn replicas_starting_together_share_one_root() {
    let store = Arc::new(Mutex::new(None));
    let race = Arc::new(tokio::sync::Barrier::new(2));
    let posts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let (service, handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<Full<Bytes>>>();
        tokio::spawn(api_server(
            handle,
            store.clone(),
            race.clone(),
            posts.clone(),
        ));
        let client = kube::Client::new(service, "istio-system");
        replicas.push(tokio::spawn(async move {
            mesh_control::ca_secret::load_or_create(client, "istio-system", "cluster.local").await
        }));
    }
    let mut cas = Vec::new();
    for r in replicas {
        cas.push(
            tokio::time::timeout(Duration::from_secs(10), r)
                .await
                .expect("no deadlock")
                .unwrap()
                .expect("a CA"),
        );
    }
    assert_eq!(
        cas[0].root_pem(),
        cas[1].root_pem(),
        "one root for both replicas"
    );
    let stored = store
        .lock()
        .unwrap()
        .clone()
        .expect("the Secret was created");
    assert_eq!(stored["metadata"]["name"], "istio-ca-secret");
    assert_eq!(stored["type"], "istio.io/ca-root");
    // What one replica issues, the other's root verifies: the same CA, not just the same-looking PEM.
    let id = Identity::new("cluster.local", "default", "web");
    let cert = cas[0].issue(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(cas[1].roots(), cert.roots());
}

#[tokio::test]
async fn a_secret_without_its_key_is_a_clear_error() {
    let (service, mut handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<Full<Bytes>>>();
    tokio::spawn(async move {
        while let Some((_req, send)) = handle.next_request().await {
            let body = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "istio-ca-secret", "namespace": "istio-system", "resourceVersion": "1"},
                "data": {"ca-cert.pem": "Zm9v"}});
            send.send_response(Response::new(Full::new(Bytes::from(body.to_string()))));
        }
    });
    let client = kube::Client::new(service, "istio-system");
    let Err(e) =
        mesh_control::ca_secret::load_or_create(client, "istio-system", "cluster.local").await
    else {
        panic!("a Secret without its key must not load");
    };
    assert!(e.to_string().contains("has no ca-key.pem"), "{e}");
}
