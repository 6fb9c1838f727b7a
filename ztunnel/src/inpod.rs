//! Enrolled pods, as the node agent (the `mesh-cni` plugin) leaves them: one JSON record per pod in
//! `<run_dir>/pods/`, and a nudge on `<run_dir>/ztunnel.sock`. The directory is the source of truth, so a restarted
//! ztunnel picks every pod up again; the socket only makes enrollment synchronous.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mesh_core::hbone::Pool;
use mesh_core::netns::NetNs;
use mesh_core::socket::{accept_backoff, accept_retrying};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::proxy::{Pod, PodNetwork, ProxyCtx};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub netns: PathBuf,
    pub ips: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("pods directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("pod {uid}: cannot open network namespace {netns}: {source}")]
    Netns {
        uid: String,
        netns: String,
        source: std::io::Error,
    },
    #[error("pod {uid}: cannot open listeners in its namespace: {source}")]
    Listen { uid: String, source: std::io::Error },
}

/// What `/config_dump` shows of a pod.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub ips: Vec<IpAddr>,
    pub netns: String,
    pub hbone_connections: usize,
}

pub struct Pods {
    ctx: Arc<ProxyCtx>,
    running: Mutex<HashMap<String, (PodRecord, Arc<Pod>)>>,
}

impl Pods {
    pub fn new(ctx: Arc<ProxyCtx>) -> Self {
        Self {
            ctx,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Brings the running pods in line with the records on disk; returns the errors of pods that failed.
    pub fn reconcile(&self) -> Vec<EnrollError> {
        let dir = self.ctx.cfg.pods_dir();
        let wanted = match read_records(&dir) {
            Ok(w) => w,
            Err(e) => return vec![e],
        };
        let mut errors = Vec::new();
        let mut running = self.running.lock().expect("pods lock");
        running.retain(|uid, (rec, pod)| {
            let keep = wanted.get(uid) == Some(rec);
            if !keep {
                tracing::info!(pod = %rec.name, uid, "pod removed; closing its listeners");
                pod.stop.cancel();
            }
            keep
        });
        for (uid, rec) in wanted {
            if running.contains_key(&uid) {
                continue;
            }
            match self.start(&rec) {
                Ok(pod) => {
                    tracing::info!(pod = %rec.name, uid, ips = ?rec.ips, "pod enrolled");
                    running.insert(uid, (rec, pod));
                }
                Err(e) => {
                    tracing::error!(error = %e, "pod enrollment failed");
                    errors.push(e);
                }
            }
        }
        errors
    }

    fn start(&self, rec: &PodRecord) -> Result<Arc<Pod>, EnrollError> {
        let netns = NetNs::open(&rec.netns).map_err(|source| EnrollError::Netns {
            uid: rec.uid.clone(),
            netns: rec.netns.display().to_string(),
            source,
        })?;
        let network = Arc::new(PodNetwork::Namespace(Arc::new(netns)));
        let pool = Pool::new(
            self.ctx.cfg.pool.clone(),
            self.ctx.cfg.h2.clone(),
            network.sockets(),
            self.ctx.metrics.hbone.clone(),
        );
        let pod = Arc::new(Pod {
            uid: rec.uid.clone(),
            name: rec.name.clone(),
            namespace: rec.namespace.clone(),
            ips: rec.ips.clone(),
            network,
            pool,
            stop: CancellationToken::new(),
        });
        crate::proxy::start(self.ctx.clone(), pod.clone()).map_err(|source| {
            EnrollError::Listen {
                uid: rec.uid.clone(),
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
            .flat_map(|(rec, _)| rec.ips.iter().filter_map(|ip| snap.workload(ip)))
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
            .map(|(rec, pod)| PodInfo {
                uid: rec.uid.clone(),
                name: rec.name.clone(),
                namespace: rec.namespace.clone(),
                ips: rec.ips.clone(),
                netns: rec.netns.display().to_string(),
                hbone_connections: pod.pool.connections(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Answers the node agent: each line received triggers a reconcile, answered `ok` or `error: <reasons>`.
    pub async fn serve_socket(self: Arc<Self>, listener: UnixListener) {
        let mut backoff = accept_backoff();
        loop {
            let (stream, _) = tokio::select! {
                _ = self.ctx.drain.stopping() => return,
                s = accept_retrying("node agent socket", &mut backoff, || listener.accept()) => s,
            };
            let pods = self.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(_)) = lines.next_line().await {
                    let errors = pods.reconcile();
                    let reply = if errors.is_empty() {
                        "ok\n".to_string()
                    } else {
                        let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
                        format!("error: {}\n", all.join("; "))
                    };
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
}

fn read_records(dir: &Path) -> Result<HashMap<String, PodRecord>, EnrollError> {
    let err = |source| EnrollError::Dir {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let path = entry.map_err(err)?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<PodRecord>(&t).map_err(|e| e.to_string()));
        match parsed {
            Ok(rec) => {
                out.insert(rec.uid.clone(), rec);
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "unreadable pod record skipped")
            }
        }
    }
    Ok(out)
}
