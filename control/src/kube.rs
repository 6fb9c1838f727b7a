//! Kubernetes mode: kube-rs watchers on Namespaces, Pods, Services and the mesh's CRDs feed the same model as
//! file mode. Every object goes through the same parsing and validation (`mesh_model::load_value`), so an invalid
//! object is rejected with the same message, and its last good version keeps serving.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use tokio::sync::{mpsc, watch};

use mesh_model::{self as model, ConfigSet, Diagnostic, Object};

/// A watched kind: group, version, kind, plural.
pub struct Watched(
    pub &'static str,
    pub &'static str,
    pub &'static str,
    pub &'static str,
);

/// Everything the control plane watches. Workloads come from Pods; EndpointSlices give the endpoints of Services
/// without a selector.
pub const WATCHED: &[Watched] = &[
    Watched("", "v1", "Namespace", "namespaces"),
    Watched("", "v1", "Pod", "pods"),
    Watched("", "v1", "Service", "services"),
    Watched("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    Watched(
        "networking.istio.io",
        "v1",
        "WorkloadEntry",
        "workloadentries",
    ),
    Watched(
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    ),
    Watched(
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules",
    ),
    Watched(
        "security.istio.io",
        "v1",
        "PeerAuthentication",
        "peerauthentications",
    ),
    Watched(
        "security.istio.io",
        "v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    Watched(
        "split.smi-spec.io",
        "v1alpha2",
        "TrafficSplit",
        "trafficsplits",
    ),
    Watched("gateway.networking.k8s.io", "v1", "Gateway", "gateways"),
    Watched("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
    Watched("gateway.networking.k8s.io", "v1", "GRPCRoute", "grpcroutes"),
];

impl Watched {
    fn resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(self.0, self.1, self.2), self.3)
    }

    fn api_version(&self) -> String {
        if self.0.is_empty() {
            self.1.to_string()
        } else {
            format!("{}/{}", self.0, self.1)
        }
    }
}

/// The latest config built from the cluster, with its diagnostics.
pub type Latest = (Arc<ConfigSet>, Vec<Diagnostic>);

type Key = (usize, String, String);

/// Watches the cluster until the process ends, publishing a new config after each batch of events.
pub async fn run(client: Client, out: watch::Sender<Latest>) {
    let (tx, mut rx) = mpsc::channel::<(usize, Event<DynamicObject>)>(1024);
    for (i, w) in WATCHED.iter().enumerate() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &w.resource());
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut events = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(ev) => {
                        if tx.send((i, ev)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(kind = WATCHED[i].2, error = %e, "watch failed; retrying with backoff")
                    }
                }
            }
        });
    }
    drop(tx);
    let mut objects: BTreeMap<Key, serde_json::Value> = BTreeMap::new();
    let mut buffers: BTreeMap<usize, BTreeMap<Key, serde_json::Value>> = BTreeMap::new();
    let mut previous: Option<ConfigSet> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        // Batch what arrives together (a list, a burst of edits) into one push.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while let Ok(ev) = rx.try_recv() {
            batch.push(ev);
        }
        for (i, ev) in batch {
            apply_event(i, ev, &mut objects, &mut buffers);
        }
        let (set, diagnostics) = build(&objects, previous.as_ref());
        out.send_replace((Arc::new(set.clone()), diagnostics));
        previous = Some(set);
    }
}

fn key(i: usize, o: &DynamicObject) -> Key {
    (
        i,
        o.metadata.namespace.clone().unwrap_or_default(),
        o.metadata.name.clone().unwrap_or_default(),
    )
}

/// The object as the model reads it: apiVersion and kind set (list items omit them), status kept for Pods.
fn value(i: usize, o: &DynamicObject) -> serde_json::Value {
    let mut v = serde_json::to_value(o).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), WATCHED[i].api_version().into());
        m.insert("kind".into(), WATCHED[i].2.into());
    }
    v
}

fn apply_event(
    i: usize,
    ev: Event<DynamicObject>,
    objects: &mut BTreeMap<Key, serde_json::Value>,
    buffers: &mut BTreeMap<usize, BTreeMap<Key, serde_json::Value>>,
) {
    match ev {
        Event::Apply(o) => {
            objects.insert(key(i, &o), value(i, &o));
        }
        Event::Delete(o) => {
            objects.remove(&key(i, &o));
        }
        Event::Init => {
            buffers.insert(i, BTreeMap::new());
        }
        Event::InitApply(o) => {
            buffers
                .entry(i)
                .or_default()
                .insert(key(i, &o), value(i, &o));
        }
        Event::InitDone => {
            // A (re)list replaces everything of that kind at once.
            objects.retain(|k, _| k.0 != i);
            objects.extend(buffers.remove(&i).unwrap_or_default());
        }
    }
}

/// Parses and validates every object; an invalid one keeps its previous good version.
fn build(
    objects: &BTreeMap<Key, serde_json::Value>,
    previous: Option<&ConfigSet>,
) -> (ConfigSet, Vec<Diagnostic>) {
    let mut set = ConfigSet::new();
    let mut diagnostics = Vec::new();
    for ((i, ns, name), v) in objects {
        let (parsed, diags) = model::load_value(v.clone());
        let failed = diags.iter().any(Diagnostic::is_error);
        diagnostics.extend(diags);
        if !failed {
            for o in parsed {
                set.insert(o, None);
            }
            continue;
        }
        let kept = previous.and_then(|p| {
            p.of_kind(kind_of(*i)?)
                .find(|o: &&Object| o.metadata().namespace == *ns && o.metadata().name == *name)
                .cloned()
        });
        if let Some(o) = kept {
            set.insert(o, None);
        }
    }
    (set, diagnostics)
}

fn kind_of(i: usize) -> Option<model::Kind> {
    let w = &WATCHED[i];
    model::Kind::from_group_kind(w.0, w.2)
}
