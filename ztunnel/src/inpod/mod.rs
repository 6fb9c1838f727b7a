//! Enrolled pods. The node agent hands each pod over with Istio's ZDS protocol ([`zds`]): its uid, name and
//! namespace, and its network namespace as a file descriptor, so ztunnel needs no view of the host's namespace
//! paths. A restarted ztunnel gets every pod again from the agent's snapshot; a reconnect to a restarted agent
//! keeps the pods it already runs (nothing is re-enrolled).

pub mod zds;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mesh_core::hbone::Pool;
use mesh_core::netns::NetNs;
use tokio_util::sync::CancellationToken;

use crate::proxy::{Pod, PodNetwork, ProxyCtx};

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("pod {uid}: no network namespace passed with the request")]
    NoNetns { uid: String },
    #[error("pod {uid}: reading its network namespace: {source}")]
    Netns { uid: String, source: std::io::Error },
    #[error("pod {uid}: its network namespace has no address (is the pod network set up?)")]
    NoAddress { uid: String },
    #[error("pod {uid}: cannot open listeners in its namespace: {source}")]
    Listen { uid: String, source: std::io::Error },
}

/// What the agent says about a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
}

/// What `/config_dump` shows of a pod.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub ips: Vec<IpAddr>,
    pub netns: String,
    pub hbone_connections: usize,
}

pub struct Pods {
    ctx: Arc<ProxyCtx>,
    running: Mutex<HashMap<String, (PodMeta, Arc<Pod>)>>,
    /// Set once the node agent's first snapshot is applied: until then ztunnel does not know its node's pods
    /// and is not ready.
    synced: AtomicBool,
}

impl Pods {
    pub fn new(ctx: Arc<ProxyCtx>) -> Self {
        Self {
            ctx,
            running: Mutex::new(HashMap::new()),
            synced: AtomicBool::new(false),
        }
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Starts serving a pod; a pod already running under this uid is kept as it is (returns `false`).
    pub fn add(&self, meta: PodMeta, netns: Option<NetNs>) -> Result<bool, EnrollError> {
        let uid = meta.uid.clone();
        let netns = netns.ok_or_else(|| EnrollError::NoNetns { uid: uid.clone() })?;
        // The same pod in the same namespace: kept as it is. A new sandbox under the same uid (a missed DEL):
        // the old listeners go, the pod starts again in its new namespace.
        let same = {
            let running = self.running.lock().expect("pods lock");
            running.get(&uid).map(|(_, pod)| match &*pod.network {
                PodNetwork::Namespace(old) => old.inode().ok() == netns.inode().ok(),
                PodNetwork::Local { .. } => false,
            })
        };
        match same {
            Some(true) => return Ok(false),
            Some(false) => {
                tracing::info!(
                    uid,
                    "pod came back in a new network namespace; re-enrolling it"
                );
                self.remove(&uid);
            }
            None => {}
        }
        let ips = netns.addresses().map_err(|source| EnrollError::Netns {
            uid: uid.clone(),
            source,
        })?;
        if ips.is_empty() {
            return Err(EnrollError::NoAddress { uid });
        }
        let pod = self.start(&meta, netns, ips)?;
        tracing::info!(pod = %meta.name, namespace = %meta.namespace, uid, ips = ?pod.ips, netns = %pod_netns(&pod), "pod enrolled");
        self.running
            .lock()
            .expect("pods lock")
            .insert(uid, (meta, pod));
        Ok(true)
    }

    /// Stops serving a pod: its listeners close and its connections end.
    pub fn remove(&self, uid: &str) -> bool {
        let removed = self.running.lock().expect("pods lock").remove(uid);
        match removed {
            Some((meta, pod)) => {
                tracing::info!(pod = %meta.name, uid, "pod removed; closing its listeners");
                pod.stop.cancel();
                true
            }
            None => false,
        }
    }

    /// After a snapshot: stops every pod the agent did not name.
    pub fn retain(&self, named: &HashSet<String>) {
        let gone: Vec<String> = {
            let running = self.running.lock().expect("pods lock");
            running
                .keys()
                .filter(|uid| !named.contains(*uid))
                .cloned()
                .collect()
        };
        for uid in gone {
            self.remove(&uid);
        }
        self.synced.store(true, Ordering::Release);
    }

    fn start(
        &self,
        meta: &PodMeta,
        netns: NetNs,
        ips: Vec<IpAddr>,
    ) -> Result<Arc<Pod>, EnrollError> {
        let network = Arc::new(PodNetwork::Namespace(Arc::new(netns)));
        let pool = Pool::new(
            self.ctx.cfg.pool.clone(),
            self.ctx.cfg.h2.clone(),
            network.sockets(),
            self.ctx.metrics.hbone.clone(),
        );
        let pod = Arc::new(Pod {
            uid: meta.uid.clone(),
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            ips,
            network,
            pool,
            stop: CancellationToken::new(),
        });
        crate::proxy::start(self.ctx.clone(), pod.clone()).map_err(|source| {
            EnrollError::Listen {
                uid: meta.uid.clone(),
                source,
            }
        })?;
        Ok(pod)
    }

    /// Identities of the enrolled pods that the state knows.
    pub fn identities(&self) -> Vec<mesh_primitives::identity::Identity> {
        let snap = self.ctx.state.load();
        let running = self.running.lock().expect("pods lock");
        let mut ids: Vec<_> = running
            .values()
            .flat_map(|(_, pod)| pod.ips.iter().filter_map(|ip| snap.workload(ip)))
            .map(|w| w.identity(&self.ctx.cfg.trust_domain))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    pub fn dump(&self) -> Vec<PodInfo> {
        let running = self.running.lock().expect("pods lock");
        let mut out: Vec<PodInfo> = running
            .values()
            .map(|(meta, pod)| PodInfo {
                uid: meta.uid.clone(),
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                service_account: meta.service_account.clone(),
                ips: pod.ips.clone(),
                netns: pod_netns(pod),
                hbone_connections: pod.pool.connections(),
            })
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }
}

fn pod_netns(pod: &Pod) -> String {
    match &*pod.network {
        PodNetwork::Namespace(ns) => ns.path().display().to_string(),
        PodNetwork::Local { ip } => format!("local {ip}"),
    }
}
