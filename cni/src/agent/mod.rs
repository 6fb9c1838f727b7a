//! The node agent: holds the pods of this node that are in the mesh, keeps their redirection rules installed,
//! and hands them to ztunnel over ZDS ([`zds`]). Pods arrive from the CNI plugin at creation ([`plugin`]) and, in
//! Kubernetes mode, from watching Pods and Namespaces ([`kube`]), which also enrolls pods that were running before
//! their namespace was labelled and releases pods whose label was removed.
//!
//! Each held pod has a record in `<runDir>/pods/`, so a restarted agent knows what it enrolled (rules in place)
//! and replays the same pods to ztunnel: nothing is enrolled twice.

pub mod kube;
pub mod membership;
pub mod netns;
pub mod plugin;
pub mod zds;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use mesh_core::netns::NetNs;
use mesh_core::zds::ZdsSocket;

use crate::rules::{self, RulesError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("pod {pod}: cannot open its network namespace {netns}: {source}")]
    Netns {
        pod: String,
        netns: String,
        source: std::io::Error,
    },
    #[error("pod {pod}: {source}")]
    Rules { pod: String, source: RulesError },
    #[error("pod records in {path}: {source}")]
    Records {
        path: String,
        source: std::io::Error,
    },
    #[error("ztunnel refused pod {pod}: {reason}")]
    Ztunnel { pod: String, reason: String },
}

/// A pod the agent holds; its record on disk.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub service_account: String,
    /// Where the namespace was opened (CNI_NETNS, /var/run/netns/..., or /proc/PID/ns/net).
    pub netns: PathBuf,
    pub ips: Vec<IpAddr>,
    /// Unix seconds: a pod enrolled by the plugin may be missing from the Kubernetes cache for a moment.
    #[serde(default)]
    pub enrolled_at: u64,
}

impl PodRecord {
    fn display(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

struct Held {
    record: PodRecord,
    netns: NetNs,
}

#[derive(Default)]
struct Inner {
    pods: BTreeMap<String, Held>,
    /// The connected ztunnel, once it has had the snapshot.
    ztunnel: Option<ZdsSocket>,
}

/// What happened to an enrollment.
#[derive(Debug, PartialEq, Eq)]
pub enum Enrolled {
    New,
    Already,
}

pub struct Agent {
    records: PathBuf,
    inner: Mutex<Inner>,
}

impl Agent {
    /// Opens the agent's state in `run_dir`: every recorded pod whose namespace still holds its addresses.
    pub fn open(run_dir: &Path) -> Result<Self, AgentError> {
        let records = run_dir.join("pods");
        let err = |source| AgentError::Records {
            path: records.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&records).map_err(err)?;
        let mut pods = BTreeMap::new();
        for entry in std::fs::read_dir(&records).map_err(err)? {
            let path = entry.map_err(err)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match load(&path) {
                Some(held) => {
                    pods.insert(held.record.uid.clone(), held);
                }
                None => {
                    tracing::info!(record = %path.display(), "pod gone while the agent was down; record dropped");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        tracing::info!(pods = pods.len(), "agent state loaded");
        Ok(Self {
            records,
            inner: Mutex::new(Inner {
                pods,
                ztunnel: None,
            }),
        })
    }

    /// Captures a pod and hands it to ztunnel. Blocking (iptables, ZDS): call from a blocking thread.
    pub fn enroll(&self, mut record: PodRecord, netns: NetNs) -> Result<Enrolled, AgentError> {
        let mut inner = self.inner.lock().expect("agent lock");
        if let Some(held) = inner.pods.get(&record.uid) {
            if held.netns.inode().ok() == netns.inode().ok() {
                return Ok(Enrolled::Already);
            }
            // A new sandbox under the same uid (its DEL was missed): ztunnel drops the old one first.
            tracing::info!(pod = %record.display(), "pod came back in a new network namespace");
            inner.pods.remove(&record.uid);
            send_del(&mut inner, &record.uid);
        }
        let pod = record.display();
        rules::install(&netns).map_err(|source| AgentError::Rules {
            pod: pod.clone(),
            source,
        })?;
        record.enrolled_at = now();
        if let Err(reason) = send_add(&mut inner, &record, &netns) {
            let _ = rules::remove(&netns);
            return Err(AgentError::Ztunnel { pod, reason });
        }
        self.write(&record)?;
        tracing::info!(pod, uid = %record.uid, netns = %record.netns.display(), ips = ?record.ips, "pod enrolled");
        inner
            .pods
            .insert(record.uid.clone(), Held { record, netns });
        Ok(Enrolled::New)
    }

    /// Releases a pod: ztunnel stops serving it and its traffic flows as without the mesh.
    pub fn release(&self, uid: &str) -> Result<bool, AgentError> {
        let mut inner = self.inner.lock().expect("agent lock");
        let Some(held) = inner.pods.remove(uid) else {
            return Ok(false);
        };
        let pod = held.record.display();
        // Rules first: new connections go direct at once, and ztunnel's view never lags behind the rules.
        // A deleted pod's namespace may be gone already; nothing is left to undo then.
        if let Err(source) = rules::remove(&held.netns) {
            tracing::warn!(pod, error = %source, "removing the pod's rules");
        }
        send_del(&mut inner, uid);
        let _ = std::fs::remove_file(self.record_path(uid));
        tracing::info!(pod, uid, "pod released");
        Ok(true)
    }

    pub fn uids(&self) -> Vec<String> {
        self.inner
            .lock()
            .expect("agent lock")
            .pods
            .keys()
            .cloned()
            .collect()
    }

    pub fn records(&self) -> Vec<PodRecord> {
        self.inner
            .lock()
            .expect("agent lock")
            .pods
            .values()
            .map(|h| h.record.clone())
            .collect()
    }

    pub fn ztunnel_connected(&self) -> bool {
        self.inner.lock().expect("agent lock").ztunnel.is_some()
    }

    fn record_path(&self, uid: &str) -> PathBuf {
        let safe: String = uid
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.records.join(format!("{safe}.json"))
    }

    fn write(&self, record: &PodRecord) -> Result<(), AgentError> {
        let path = self.record_path(&record.uid);
        let err = |source| AgentError::Records {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(record).expect("a pod record always serializes");
        std::fs::write(&tmp, body).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }
}

/// A record whose namespace can still be opened and still holds the pod's addresses (a `/proc/PID` path may now
/// name another process).
fn load(path: &Path) -> Option<Held> {
    let record: PodRecord = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let netns = NetNs::open(&record.netns).ok()?;
    let addrs = netns.addresses().ok()?;
    record
        .ips
        .iter()
        .all(|ip| addrs.contains(ip))
        .then_some(Held { record, netns })
}

fn send_add(inner: &mut Inner, record: &PodRecord, netns: &NetNs) -> Result<(), String> {
    let Some(sock) = inner.ztunnel.as_ref() else {
        tracing::info!(pod = %record.display(), "ztunnel not connected; the pod goes in its snapshot when it connects");
        return Ok(());
    };
    match zds::add(sock, record, netns) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(reason),
        Err(e) => {
            // ztunnel reconnects and gets this pod in its snapshot.
            tracing::warn!(error = %e, "ztunnel connection lost");
            inner.ztunnel = None;
            Ok(())
        }
    }
}

fn send_del(inner: &mut Inner, uid: &str) {
    let Some(sock) = inner.ztunnel.as_ref() else {
        return;
    };
    match zds::del(sock, uid) {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => tracing::warn!(uid, reason, "ztunnel could not remove the pod"),
        Err(e) => {
            tracing::warn!(error = %e, "ztunnel connection lost");
            inner.ztunnel = None;
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
