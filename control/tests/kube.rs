//! Kubernetes mode against kube-rs' own client over a mock API server (tower-test): the watchers list and watch
//! each kind, objects go through the same validation as file mode, and watch events update the config.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use mesh_model::ConfigSet;
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
        "/apis/discovery.k8s.io/v1/endpointslices" => list(
            "EndpointSlice",
            serde_json::json!([{"metadata": {"name": "ext-1", "namespace": "prod", "resourceVersion": "1",
                "labels": {"kubernetes.io/service-name": "ext"}},
                "addressType": "IPv4", "endpoints": [{"addresses": ["198.51.100.7"]}], "ports": [{"port": 443}]}]),
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
        s.pods().count() >= 1
            && s.services().count() == 1
            && s.virtual_services().count() == 1
            && s.endpoint_slices().count() == 1
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
    let out = mesh_translate::translate(&set, "cluster.local");
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

/// Records every request (method, path and query, body) and answers with the object it was sent.
type Call = (String, String, String);

/// The calls recorded so far, and each as `METHOD /path` (no query).
fn drain_calls(seen: &mut tokio::sync::mpsc::UnboundedReceiver<Call>) -> (Vec<Call>, Vec<String>) {
    let mut calls = Vec::new();
    while let Ok(c) = seen.try_recv() {
        calls.push(c);
    }
    let paths = calls
        .iter()
        .map(|(m, p, _)| format!("{m} {}", p.split('?').next().unwrap_or_default()))
        .collect();
    (calls, paths)
}

async fn recording_api(
    mut handle: Handle,
    seen: tokio::sync::mpsc::UnboundedSender<(String, String, String)>,
) {
    while let Some((req, send)) = handle.next_request().await {
        let (parts, body) = req.into_parts();
        let body = http_body_util::BodyExt::collect(body)
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        let path = parts
            .uri
            .path_and_query()
            .map(ToString::to_string)
            .unwrap_or_default();
        let reply = if body.is_empty() {
            serde_json::json!({"apiVersion": "v1", "kind": "Status", "status": "Success"})
                .to_string()
        } else {
            body.clone()
        };
        let _ = seen.send((parts.method.to_string(), path, body));
        send.send_response(Response::new(Full::new(Bytes::from(reply))));
    }
}

fn gateway_set(gateways: &[&str]) -> ConfigSet {
    let yaml: String = gateways
        .iter()
        .map(|g| format!("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {g}, namespace: shop}}\nspec: {{gatewayClassName: istio-waypoint, listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]}}\n---\n"))
        .collect();
    let ingress = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: ingress, namespace: shop}\nspec: {gatewayClassName: istio, listeners: [{name: http, port: 80, protocol: HTTP}]}\n";
    let (objects, diags) = mesh_model::load_str(&format!("{yaml}{ingress}"), None);
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
    let mut set = ConfigSet::new();
    for o in objects {
        set.insert(o, None);
    }
    set
}

#[tokio::test]
async fn each_waypoint_gateway_gets_an_account_a_deployment_and_a_service() {
    let (service, handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<Full<Bytes>>>();
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(recording_api(handle, tx));
    let client = kube::Client::new(service, "default");
    let mut deployer = mesh_control::deploy::Deployer::new(client, Default::default());

    assert_eq!(
        deployer
            .reconcile(&gateway_set(&["waypoint"]))
            .await
            .unwrap(),
        3
    );
    let (calls, paths) = drain_calls(&mut seen);
    assert_eq!(
        paths,
        [
            "PATCH /api/v1/namespaces/shop/serviceaccounts/waypoint",
            "PATCH /apis/apps/v1/namespaces/shop/deployments/waypoint",
            "PATCH /api/v1/namespaces/shop/services/waypoint",
        ],
        "the ingress Gateway gets nothing"
    );
    assert!(calls
        .iter()
        .all(|(_, p, _)| p.contains("fieldManager=mesh-control") && p.contains("force=true")));
    let deployment: serde_json::Value = serde_json::from_str(&calls[1].2).unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "waypoint");
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]
            ["gateway.networking.k8s.io/gateway-name"],
        "waypoint"
    );
    assert_eq!(
        pod["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "istio-ca"
    );
    let service: serde_json::Value = serde_json::from_str(&calls[2].2).unwrap();
    assert_eq!(service["spec"]["ports"][0]["port"], 15008);

    // Nothing changed: no calls. The Gateway removed: its objects are deleted.
    assert_eq!(
        deployer
            .reconcile(&gateway_set(&["waypoint"]))
            .await
            .unwrap(),
        0
    );
    assert_eq!(deployer.reconcile(&gateway_set(&[])).await.unwrap(), 3);
    let mut deletes = Vec::new();
    while let Ok((m, p, _)) = seen.try_recv() {
        deletes.push(format!("{m} {}", p.split('?').next().unwrap_or_default()));
    }
    assert!(
        deletes.iter().all(|d| d.starts_with("DELETE ")) && deletes.len() == 3,
        "{deletes:?}"
    );
}

/// The control plane watches exactly what each CRD stores, so the two cannot drift apart.
#[test]
fn every_crd_is_watched_at_its_storage_version() {
    for crd in mesh_model::crds::all() {
        let kind = crd.spec.names.kind.as_str();
        let storage = crd
            .spec
            .versions
            .iter()
            .find(|v| v.storage)
            .map(|v| v.name.as_str())
            .expect("a storage version");
        let watched = mesh_control::kube::WATCHED
            .iter()
            .find(|w| w.2 == kind)
            .unwrap_or_else(|| panic!("{kind} is not watched"));
        assert_eq!(
            (watched.0, watched.1, watched.3),
            (
                crd.spec.group.as_str(),
                storage,
                crd.spec.names.plural.as_str()
            )
        );
    }
}

/// One VirtualService in `prod`: valid with `hosts: [<host>]`, invalid (a weight over 100) when `host` is None.
fn vs(name: &str, rv: u32, host: Option<&str>) -> serde_json::Value {
    let (hosts, weight) = match host {
        Some(h) => (h, 100),
        None => ("web", 250),
    };
    serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "prod", "resourceVersion": rv.to_string()},
        "spec": {"hosts": [hosts], "http": [{"route": [{"destination": {"host": "web"}, "weight": weight}]}]}})
}

/// What the scripted API server does with the next watch request on VirtualServices.
enum Step {
    Event(&'static str, serde_json::Value),
    /// 410 Gone: the watcher must relist, and the relist answers with the second list.
    Gone,
}

const VS_PATH: &str = "/apis/networking.istio.io/v1/virtualservices";

/// Lists (VirtualServices: the first list, then after a 410 the second); each watch on VirtualServices waits for
/// the test's next [`Step`]; every other watch stays open and silent.
async fn scripted_api_server(
    mut handle: Handle,
    steps: tokio::sync::mpsc::Receiver<Step>,
    first: serde_json::Value,
    second: serde_json::Value,
) {
    let steps = Arc::new(tokio::sync::Mutex::new(steps));
    let relisted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut open_watches = Vec::new();
    while let Some((req, send)) = handle.next_request().await {
        let uri = req.uri().clone();
        let watching = uri.query().unwrap_or_default().contains("watch=true");
        match (uri.path(), watching) {
            (VS_PATH, false) => {
                let items = if relisted.load(std::sync::atomic::Ordering::Acquire) {
                    &second
                } else {
                    &first
                };
                send.send_response(Response::new(Full::new(Bytes::from(list(
                    "VirtualService",
                    items.clone(),
                )))));
            }
            (VS_PATH, true) => {
                let (steps, relisted) = (steps.clone(), relisted.clone());
                tokio::spawn(async move {
                    let Some(step) = steps.lock().await.recv().await else {
                        return;
                    };
                    let ev = match step {
                        Step::Event(kind, object) => {
                            serde_json::json!({"type": kind, "object": object})
                        }
                        Step::Gone => {
                            relisted.store(true, std::sync::atomic::Ordering::Release);
                            serde_json::json!({"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status",
                                "status": "Failure", "reason": "Expired", "code": 410,
                                "message": "too old resource version"}})
                        }
                    };
                    send.send_response(Response::new(Full::new(Bytes::from(format!("{ev}\n")))));
                });
            }
            (_, true) => open_watches.push(send),
            (path, false) => {
                let kind = path.rsplit('/').next().unwrap_or_default();
                send.send_response(Response::new(Full::new(Bytes::from(list(
                    kind,
                    serde_json::json!([]),
                )))));
            }
        }
    }
}

fn vs_hosts(set: &ConfigSet) -> Vec<(String, String)> {
    set.virtual_services()
        .map(|v| (v.metadata.name.clone(), v.spec.hosts.join(",")))
        .collect()
}

#[tokio::test]
async fn kubernetes_mode_lifecycle_modify_invalid_delete_and_relist() {
    let (service, handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<Full<Bytes>>>();
    let (steps, rx_steps) = tokio::sync::mpsc::channel(8);
    tokio::spawn(scripted_api_server(
        handle,
        rx_steps,
        serde_json::json!([vs("orders", 1, Some("web"))]),
        serde_json::json!([vs("after-relist", 9, Some("web"))]),
    ));
    let client = kube::Client::new(service, "default");
    let (tx, mut rx) = watch::channel((Arc::new(ConfigSet::new()), Vec::new()));
    tokio::spawn(mesh_control::kube::run(client, tx));
    let pair = |n: &str, h: &str| vec![(n.to_string(), h.to_string())];

    wait_for(&mut rx, "the initial list", |s| {
        vs_hosts(s) == pair("orders", "web")
    })
    .await;

    // A valid edit is applied.
    steps
        .send(Step::Event(
            "MODIFIED",
            vs("orders", 2, Some("web.prod.svc.cluster.local")),
        ))
        .await
        .unwrap();
    wait_for(&mut rx, "the edit", |s| {
        vs_hosts(s) == pair("orders", "web.prod.svc.cluster.local")
    })
    .await;

    // An invalid edit is rejected with its field, and the last good version keeps serving.
    steps
        .send(Step::Event("MODIFIED", vs("orders", 3, None)))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        {
            let (set, diags) = &*rx.borrow_and_update();
            if diags.iter().any(|d| {
                d.to_string()
                    .contains("VirtualService prod/orders: spec.http[0].route[0].weight")
            }) {
                assert_eq!(
                    vs_hosts(set),
                    pair("orders", "web.prod.svc.cluster.local"),
                    "last good kept"
                );
                break;
            }
        }
        tokio::time::timeout_at(deadline, rx.changed())
            .await
            .expect("the rejection")
            .unwrap();
    }

    // A delete removes it, even though its latest version was invalid.
    steps
        .send(Step::Event("DELETED", vs("orders", 4, None)))
        .await
        .unwrap();
    wait_for(&mut rx, "the delete", |s| s.virtual_services().count() == 0).await;
    steps
        .send(Step::Event("ADDED", vs("before-relist", 5, Some("web"))))
        .await
        .unwrap();
    wait_for(&mut rx, "the add", |s| {
        vs_hosts(s) == pair("before-relist", "web")
    })
    .await;

    // 410 Gone: the watcher relists, and the relist replaces everything of that kind.
    steps.send(Step::Gone).await.unwrap();
    wait_for(&mut rx, "the relist", |s| {
        vs_hosts(s) == pair("after-relist", "web")
    })
    .await;
    assert!(
        rx.borrow()
            .1
            .iter()
            .all(|d| !d.to_string().contains("orders")),
        "no stale diagnostics"
    );
}

#[tokio::test]
async fn the_root_certificate_is_published_in_every_namespace_once() {
    let (service, handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<Full<Bytes>>>();
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(recording_api(handle, tx));
    let client = kube::Client::new(service, "default");
    let mut publisher = mesh_control::root_cert::RootCertPublisher::new(
        client,
        "-----BEGIN CERTIFICATE-----\nMII\n".into(),
    );
    let set = |names: &[&str]| {
        let text: String = names
            .iter()
            .map(|n| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}}}\n---\n"))
            .collect();
        let (objects, diags) = mesh_model::load_str(&text, None);
        assert!(diags.is_empty(), "{diags:?}");
        let mut s = ConfigSet::new();
        for o in objects {
            s.insert(o, None);
        }
        s
    };
    assert_eq!(
        publisher.reconcile(&set(&["shop", "prod"])).await.unwrap(),
        2
    );
    let (calls, paths) = drain_calls(&mut seen);
    assert_eq!(
        paths,
        [
            "PATCH /api/v1/namespaces/prod/configmaps/istio-ca-root-cert",
            "PATCH /api/v1/namespaces/shop/configmaps/istio-ca-root-cert",
        ]
    );
    let cm: serde_json::Value = serde_json::from_str(&calls[0].2).unwrap();
    assert_eq!(
        cm["data"]["root-cert.pem"],
        "-----BEGIN CERTIFICATE-----\nMII\n"
    );
    // Published once; a new namespace gets it; after losing the Lease, a new term re-applies everything.
    assert_eq!(
        publisher.reconcile(&set(&["shop", "prod"])).await.unwrap(),
        0
    );
    assert_eq!(
        publisher
            .reconcile(&set(&["shop", "prod", "new"]))
            .await
            .unwrap(),
        1
    );
    publisher.forget();
    assert_eq!(
        publisher
            .reconcile(&set(&["shop", "prod", "new"]))
            .await
            .unwrap(),
        3
    );
}
