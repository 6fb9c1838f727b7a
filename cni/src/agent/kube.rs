//! Kubernetes mode: watch the Pods of this node and all Namespaces (kube-rs reflectors), and keep the held pods
//! equal to the pods that are in the mesh: labelling a namespace enrolls its running pods (their namespace is found
//! on the host by IP, see [`Finder`]), removing the label releases them, and `istio.io/dataplane-mode=none` on a pod
//! keeps it out. No pod restarts; the pods of other namespaces are not touched.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::Client;
use tokio::sync::mpsc;

use super::membership;
use super::netns::Finder;
use super::{Agent, PodRecord};

/// How long a pod the plugin enrolled may be missing from the watch before it counts as gone.
const PLUGIN_GRACE_SECS: u64 = 60;
/// Reconcile this often even without events (a running pod whose namespace was not found yet).
const RESYNC: Duration = Duration::from_secs(5);

/// Why a new pod is not enrolled: it is not in the mesh, or its labels could not be read (then the pod must not
/// start: the CNI ADD fails and the runtime retries).
#[derive(Debug)]
pub enum Refusal {
    NotInMesh(String),
    Lookup(String),
}

/// The watched Pods and Namespaces, shared with the plugin's event handler.
#[derive(Clone)]
pub struct View {
    client: Client,
    node: String,
    namespaces: Store<Namespace>,
    pods: Store<Pod>,
}

impl View {
    /// Whether a pod the plugin just reported is in the mesh; `Ok` carries its service account.
    pub async fn admit(&self, namespace: &str, name: &str) -> Result<String, Refusal> {
        let pod = match self.pods.get(&ObjectRef::new(name).within(namespace)) {
            Some(p) => (*p).clone(),
            None => Api::<Pod>::namespaced(self.client.clone(), namespace)
                .get(name)
                .await
                .map_err(|e| Refusal::Lookup(format!("reading pod {namespace}/{name}: {e}")))?,
        };
        let ns = match self.namespaces.get(&ObjectRef::new(namespace)) {
            Some(n) => Some((*n).clone()),
            None => Api::<Namespace>::all(self.client.clone())
                .get_opt(namespace)
                .await
                .map_err(|e| Refusal::Lookup(format!("reading namespace {namespace}: {e}")))?,
        };
        membership::decide(ns.as_ref(), &pod).map_err(Refusal::NotInMesh)?;
        Ok(service_account(&pod))
    }

    /// The pods of this node that are in the mesh, by uid, with the IP to find them by.
    fn wanted(&self) -> HashMap<String, (Arc<Pod>, IpAddr)> {
        let mut out = HashMap::new();
        for pod in self.pods.state() {
            let on_node =
                pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&self.node);
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if !on_node || matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            let ns = pod
                .metadata
                .namespace
                .as_deref()
                .and_then(|n| self.namespaces.get(&ObjectRef::new(n)));
            if membership::decide(ns.as_deref(), &pod).is_err() {
                continue;
            }
            let ip = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse::<IpAddr>().ok());
            if let (Some(uid), Some(ip)) = (pod.metadata.uid.clone(), ip) {
                out.insert(uid, (pod, ip));
            }
        }
        out
    }

    fn known_uids(&self) -> HashSet<String> {
        self.pods
            .state()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect()
    }
}

fn service_account(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into())
}

/// Starts the watches and the reconcile loop; returns the view at once (it fills as the watches list).
pub fn start(client: Client, node: String, agent: Arc<Agent>, finder: Finder) -> View {
    let (namespaces, ns_writer) = reflector::store();
    let (pods, pod_writer) = reflector::store();
    let (changed, changes) = mpsc::channel::<()>(1);
    let ns_events = reflector::reflector(
        ns_writer,
        watcher::watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        ),
    );
    let pod_events = reflector::reflector(
        pod_writer,
        watcher::watcher(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        ),
    );
    tokio::spawn(forward(
        "namespaces",
        ns_events.default_backoff(),
        changed.clone(),
    ));
    tokio::spawn(forward("pods", pod_events.default_backoff(), changed));
    let view = View {
        client,
        node,
        namespaces,
        pods,
    };
    tokio::spawn(reconcile_loop(view.clone(), agent, finder, changes));
    view
}

async fn forward<S, T>(what: &'static str, events: S, changed: mpsc::Sender<()>)
where
    S: futures::Stream<Item = Result<T, watcher::Error>>,
{
    futures::pin_mut!(events);
    while let Some(ev) = events.next().await {
        match ev {
            Ok(_) => {
                let _ = changed.try_send(());
            }
            Err(e) => tracing::warn!(what, error = %e, "watch failed; retrying"),
        }
    }
}

async fn reconcile_loop(
    view: View,
    agent: Arc<Agent>,
    finder: Finder,
    mut changes: mpsc::Receiver<()>,
) {
    // Both lists complete first: a half-listed view would release pods it has not seen yet.
    let ready = async {
        let _ = view.namespaces.wait_until_ready().await;
        let _ = view.pods.wait_until_ready().await;
    };
    ready.await;
    tracing::info!("Kubernetes view synced");
    loop {
        reconcile(&view, &agent, &finder).await;
        tokio::select! {
            c = changes.recv() => if c.is_none() { return },
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

/// One pass: release what is held but no longer wanted, enroll what is wanted and not held.
pub async fn reconcile(view: &View, agent: &Arc<Agent>, finder: &Finder) {
    let wanted = view.wanted();
    let known = view.known_uids();
    let held = agent.records();
    let now = super::now();
    for rec in held.iter().filter(|r| !wanted.contains_key(&r.uid)) {
        // A pod the plugin enrolled a moment ago may not be in the watch yet.
        if !known.contains(&rec.uid) && now.saturating_sub(rec.enrolled_at) < PLUGIN_GRACE_SECS {
            continue;
        }
        let (a, uid) = (agent.clone(), rec.uid.clone());
        match tokio::task::spawn_blocking(move || a.release(&uid)).await {
            Ok(Err(e)) => tracing::error!(error = %e, "releasing a pod"),
            Err(e) => tracing::error!(error = %e, "releasing a pod: task failed"),
            Ok(Ok(_)) => {}
        }
    }
    let held: HashSet<String> = held.into_iter().map(|r| r.uid).collect();
    for (uid, (pod, ip)) in wanted.into_iter().filter(|(uid, _)| !held.contains(uid)) {
        let (a, f) = (agent.clone(), finder.clone());
        let record = PodRecord {
            uid,
            name: pod.metadata.name.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            service_account: service_account(&pod),
            netns: Default::default(),
            ips: vec![ip],
            enrolled_at: 0,
        };
        let done = tokio::task::spawn_blocking(move || {
            let Some((path, ns)) = f.find(ip) else {
                return Err(format!("no network namespace on this node holds {ip} yet"));
            };
            a.enroll(
                PodRecord {
                    netns: path,
                    ..record
                },
                ns,
            )
            .map_err(|e| e.to_string())
        })
        .await;
        match done {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(pod = %pod.metadata.name.as_deref().unwrap_or_default(), error = e, "running pod not enrolled yet; retrying")
            }
            Err(e) => tracing::error!(error = %e, "enrolling a pod: task failed"),
        }
    }
}
