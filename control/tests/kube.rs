//! Kubernetes mode against kube-rs' own client over a mock API server (tower-test): the watchers list and watch
//! each kind, objects go through the same validation as file mode, and watch events update the config.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use mesh_control::model::ConfigSet;
use tokio::sync::watch;

type Handle = tower_test::mock::Handle<Request<kube::client::Body>, Response<Full<Bytes>>>;

fn list(kind: &str, items: serde_json::Value) -> String {
    serde_json::json!({"apiVersion": "v1", "kind": format!("{kind}List"), "metadata": {"resourceVersion": "1"}, "items": items})
        .to_string()
}

fn answer(path: &str) -> String {
    match path {
        "/api/v1/namespaces" => list(
            "Namespace",
            serde_json::json!([{"metadata": {"name": "prod", "labels": {"istio.io/dataplane-mode": "ambient"}, "resourceVersion": "1"}}]),
        ),
        "/api/v1/pods" => list(
            "Pod",
            serde_json::json!([{"metadata": {"name": "web-1", "namespace": "prod", "labels": {"app": "web"}, "resourceVersion": "1", "uid": "u1"},
                "spec": {"nodeName": "node1", "serviceAccountName": "web", "containers": [{"name": "c", "image": "x"}]},
                "status": {"podIP": "198.18.1.5", "phase": "Running"}}]),
        ),
        "/api/v1/services" => list(
            "Service",
            serde_json::json!([{"metadata": {"name": "web", "namespace": "prod", "resourceVersion": "1"},
                "spec": {"clusterIP": "198.18.255.5", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}]),
        ),
        "/apis/networking.istio.io/v1/virtualservices" => list(
            "VirtualService",
            serde_json::json!([
                {"metadata": {"name": "good", "namespace": "prod", "resourceVersion": "1"},
                 "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}}]}]}},
                {"metadata": {"name": "bad", "namespace": "prod", "resourceVersion": "1"},
                 "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}, "weight": 250}]}]}}
            ]),
        ),
        _ => list("", serde_json::json!([])),
    }
}

/// Serves lists; the first watch on pods delivers one ADDED event, other watches stay open and silent.
async fn api_server(mut handle: Handle) {
    let mut open_watches = Vec::new();
    let mut pod_event_sent = false;
    while let Some((req, send)) = handle.next_request().await {
        let uri = req.uri().clone();
        let path = uri.path().to_string();
        if uri.query().unwrap_or_default().contains("watch=true") {
            if path == "/api/v1/pods" && !pod_event_sent {
                pod_event_sent = true;
                let ev = serde_json::json!({"type": "ADDED", "object": {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "web-2", "namespace": "prod", "labels": {"app": "web"}, "resourceVersion": "2"},
                    "spec": {"nodeName": "node2", "serviceAccountName": "web"}, "status": {"podIP": "198.18.2.5"}}});
                send.send_response(Response::new(Full::new(Bytes::from(format!("{ev}\n")))));
            } else {
                open_watches.push(send);
            }
            continue;
        }
        send.send_response(Response::new(Full::new(Bytes::from(answer(&path)))));
    }
}

async fn wait_for(
    rx: &mut watch::Receiver<mesh_control::kube::Latest>,
    what: &str,
    f: impl Fn(&ConfigSet) -> bool,
) -> Arc<ConfigSet> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        {
            let (set, _) = &*rx.borrow_and_update();
            if f(set) {
                return set.clone();
            }
        }
        tokio::time::timeout_at(deadline, rx.changed())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("publisher alive");
    }
}

#[tokio::test]
async fn watchers_feed_the_model_with_validation_and_events() {
    let (service, handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<Full<Bytes>>>();
    tokio::spawn(api_server(handle));
    let client = kube::Client::new(service, "default");
    let (tx, mut rx) = watch::channel((Arc::new(ConfigSet::new()), Vec::new()));
    tokio::spawn(mesh_control::kube::run(client, tx));

    let set = wait_for(&mut rx, "the initial lists", |s| {
        s.pods().count() >= 1 && s.services().count() == 1 && s.virtual_services().count() == 1
    })
    .await;
    assert!(set.namespace("prod").is_some_and(|n| n.is_ambient()));
    let vs: Vec<&str> = set
        .virtual_services()
        .map(|v| v.metadata.name.as_str())
        .collect();
    assert_eq!(vs, ["good"], "the invalid VirtualService is rejected");
    let diags: Vec<String> = rx.borrow().1.iter().map(ToString::to_string).collect();
    assert!(
        diags
            .iter()
            .any(|d| d.contains("VirtualService prod/bad: spec.http[0].route[0].weight")),
        "{diags:?}"
    );
    // The watch event adds a pod; translation sees both.
    let set = wait_for(&mut rx, "the watched pod", |s| s.pods().count() == 2).await;
    let out = mesh_control::translate::translate(&set, "cluster.local");
    let nodes: Vec<&String> = out.nodes.0.keys().collect();
    assert_eq!(
        nodes,
        ["node1", "node2"],
        "both pods are ambient workloads on their nodes"
    );
}

/// The API server's TokenReview: two known tokens (a ztunnel bound to node1, an app), anything else rejected.
async fn token_reviewer(mut handle: Handle) {
    while let Some((req, send)) = handle.next_request().await {
        assert_eq!(
            req.uri().path(),
            "/apis/authentication.k8s.io/v1/tokenreviews"
        );
        let body = http_body_util::BodyExt::collect(req.into_body())
            .await
            .unwrap()
            .to_bytes();
        let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(review["spec"]["audiences"][0], "istio-ca");
        let status = match review["spec"]["token"].as_str().unwrap() {
            "ztunnel-token" => serde_json::json!({"authenticated": true, "user": {
                "username": "system:serviceaccount:istio-system:ztunnel",
                "extra": {"authentication.kubernetes.io/node-name": ["node1"]}}}),
            "app-token" => {
                serde_json::json!({"authenticated": true, "user": {"username": "system:serviceaccount:prod:web"}})
            }
            _ => serde_json::json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        let out = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": review["spec"], "status": status});
        send.send_response(Response::new(Full::new(Bytes::from(out.to_string()))));
    }
}

#[tokio::test]
async fn token_review_identifies_node_proxies_and_workloads() {
    use mesh_control::ca::Authenticator;
    let (service, handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<Full<Bytes>>>();
    tokio::spawn(token_reviewer(handle));
    let auth = mesh_control::token_review::TokenReviewAuthenticator::new(
        kube::Client::new(service, "default"),
        "cluster.local",
        vec!["istio-system/ztunnel".into()],
    );
    let md = |token: &str| {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("authorization", format!("Bearer {token}").parse().unwrap());
        m
    };
    let z = auth.authenticate(&md("ztunnel-token")).await.unwrap();
    assert_eq!(
        z.identity.to_string(),
        "spiffe://cluster.local/ns/istio-system/sa/ztunnel"
    );
    assert_eq!(z.node.as_deref(), Some("node1"));
    let app = auth.authenticate(&md("app-token")).await.unwrap();
    assert_eq!(
        app.identity.to_string(),
        "spiffe://cluster.local/ns/prod/sa/web"
    );
    assert_eq!(app.node, None, "a workload is not a node proxy");
    let err = auth.authenticate(&md("stolen")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().contains("invalid bearer token"),
        "{}",
        err.message()
    );
}
