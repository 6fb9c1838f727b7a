//! A small Kubernetes API server over real HTTP on loopback, for processes that use kube-rs' own client (through
//! a kubeconfig): lists and watches (streamed, from a resourceVersion) of Namespaces and Pods, GETs by name, and
//! changes made by the test (`apply`, `delete`) delivered as watch events. Only what the node agent reads.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::SinkExt;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Namespace,
    Pod,
}

struct Event {
    rv: u64,
    kind: Kind,
    kind_of: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<(Kind, String), Value>,
    events: Vec<Event>,
}

/// The running server; dropped, it stops.
pub struct MockApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: tokio::sync::watch::Sender<u64>,
    _rt: tokio::runtime::Runtime,
}

type Body = BoxBody<Bytes, Infallible>;

impl MockApi {
    pub fn start() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let (changed, _) = tokio::sync::watch::channel(0u64);
        let (s, c) = (state.clone(), changed.clone());
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, c) = (s.clone(), c.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (s, c) = (s.clone(), c.clone());
                        async move { Ok::<_, Infallible>(route(&s, &c, req)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            state,
            changed,
            _rt: rt,
        })
    }

    /// Creates or replaces an object (`kind` Namespace or Pod); watchers see ADDED or MODIFIED.
    pub fn apply(&self, mut object: Value) {
        let kind = match object["kind"].as_str() {
            Some("Namespace") => Kind::Namespace,
            Some("Pod") => Kind::Pod,
            other => panic!("mock API server: unsupported kind {other:?}"),
        };
        let mut st = self.state.lock().expect("mock state");
        st.rv += 1;
        let rv = st.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = (kind, key_of(&object));
        let kind_of = if st.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.objects.insert(key, object.clone());
        st.events.push(Event {
            rv,
            kind,
            kind_of,
            object,
        });
        drop(st);
        self.changed.send_replace(rv);
    }

    /// Writes a kubeconfig that points kube-rs at this server.
    pub fn kubeconfig(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("kubeconfig");
        let cfg = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "mock",
            "clusters": [{"name": "mock", "cluster": {"server": format!("http://{}", self.addr)}}],
            "users": [{"name": "mock", "user": {"token": "mock-token"}}],
            "contexts": [{"name": "mock", "context": {"cluster": "mock", "user": "mock"}}],
        });
        std::fs::write(&path, cfg.to_string()).context("writing the kubeconfig")?;
        Ok(path)
    }
}

fn key_of(o: &Value) -> String {
    let m = &o["metadata"];
    format!(
        "{}/{}",
        m["namespace"].as_str().unwrap_or_default(),
        m["name"].as_str().unwrap_or_default()
    )
}

fn json_reply(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .expect("static response")
}

fn not_found(what: &str) -> Response<Body> {
    json_reply(
        StatusCode::NOT_FOUND,
        &json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404,
            "message": format!("{what} not found")}),
    )
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3D", "=").replace("%3d", "=")))
        .collect()
}

/// `spec.nodeName=X` is the one field selector the agent uses.
fn selected(kind: Kind, q: &BTreeMap<String, String>, o: &Value) -> bool {
    match q
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("spec.nodeName="))
    {
        Some(node) if kind == Kind::Pod => o["spec"]["nodeName"] == node,
        _ => true,
    }
}

fn route(
    state: &Arc<Mutex<State>>,
    changed: &tokio::sync::watch::Sender<u64>,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let q = query(&req);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let kind = match parts.as_slice() {
        ["api", "v1", "namespaces"] => Kind::Namespace,
        ["api", "v1", "pods"] => Kind::Pod,
        ["api", "v1", "namespaces", ns, "pods", name] => {
            return get(state, (Kind::Pod, format!("{ns}/{name}")))
        }
        ["api", "v1", "namespaces", name] => {
            return get(state, (Kind::Namespace, format!("/{name}")))
        }
        _ => return not_found(&path),
    };
    if q.get("watch").map(String::as_str) == Some("true") {
        let from = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        return watch(state.clone(), changed.subscribe(), kind, q, from);
    }
    let st = state.lock().expect("mock state");
    let items: Vec<&Value> = st
        .objects
        .iter()
        .filter(|((k, _), o)| *k == kind && selected(kind, &q, o))
        .map(|(_, o)| o)
        .collect();
    let list = json!({"apiVersion": "v1", "kind": format!("{kind:?}List"),
        "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
    json_reply(StatusCode::OK, &list)
}

fn get(state: &Arc<Mutex<State>>, key: (Kind, String)) -> Response<Body> {
    let st = state.lock().expect("mock state");
    match st.objects.get(&key) {
        Some(o) => json_reply(StatusCode::OK, o),
        None => not_found(&key.1),
    }
}

fn watch(
    state: Arc<Mutex<State>>,
    mut changed: tokio::sync::watch::Receiver<u64>,
    kind: Kind,
    q: BTreeMap<String, String>,
    mut from: u64,
) -> Response<Body> {
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(290u64);
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        loop {
            // Marked seen before reading: a change after this point wakes the select below.
            changed.borrow_and_update();
            let lines: Vec<String> = {
                let st = state.lock().expect("mock state");
                let lines = st
                    .events
                    .iter()
                    .filter(|e| e.rv > from && e.kind == kind && selected(kind, &q, &e.object))
                    .map(|e| json!({"type": e.kind_of, "object": e.object}).to_string() + "\n")
                    .collect();
                from = st.rv;
                lines
            };
            for l in lines {
                if tx.send(Ok(Frame::data(Bytes::from(l)))).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                c = changed.changed() => if c.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(rx)))
        .expect("static response")
}
