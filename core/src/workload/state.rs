//! What ztunnel knows of the mesh: workloads and services, as one immutable snapshot swapped atomically.
//!
//! In file mode the snapshot comes from a YAML file polled for changes; an invalid file is rejected with the
//! object and field at fault and the last good snapshot keeps serving.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use mesh_primitives::identity::Identity;

use crate::workload::authz::Policies;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Load(#[from] crate::config::ConfigError),
    #[error("{kind} {namespace}/{name}: field {field}: {reason}")]
    Invalid {
        kind: &'static str,
        namespace: String,
        name: String,
        field: &'static str,
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TunnelProtocol {
    /// In the mesh: reached over HBONE.
    #[default]
    Hbone,
    /// Not in the mesh: plain TCP.
    None,
}

/// Istio's `WorkloadStatus`: unhealthy workloads receive no service traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WorkloadStatus {
    #[default]
    Healthy,
    Unhealthy,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    #[serde(default = "default_sa")]
    pub service_account: String,
    pub ip: IpAddr,
    pub node: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub protocol: TunnelProtocol,
    #[serde(default)]
    pub status: WorkloadStatus,
    /// Services this workload backs, keyed `<namespace>/<hostname>`, with its own target ports (xDS mode).
    #[serde(default)]
    pub services: BTreeMap<String, Vec<ServicePort>>,
    /// WORKLOAD_SELECTOR authorization policies bound to it (`<namespace>/<name>`).
    #[serde(default)]
    pub authorization_policies: Vec<String>,
}

fn default_sa() -> String {
    "default".into()
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub port: u16,
    #[serde(default)]
    pub target_port: Option<u16>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub vip: IpAddr,
    pub ports: Vec<ServicePort>,
    /// File mode: endpoints are the namespace's workloads whose labels match.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// xDS mode: the FQDN that workloads name in their `services` map (key `<namespace>/<hostname>`).
    #[serde(default)]
    pub hostname: Option<String>,
    /// The waypoint (its HBONE address) that traffic to this service must traverse.
    #[serde(default)]
    pub waypoint: Option<SocketAddr>,
}

impl Service {
    pub fn key(&self) -> Option<String> {
        self.hostname
            .as_ref()
            .map(|h| format!("{}/{h}", self.namespace))
    }

    fn selects(&self, w: &Workload) -> bool {
        if self.key().is_some_and(|k| w.services.contains_key(&k)) {
            return true;
        }
        w.namespace == self.namespace
            && !self.selector.is_empty()
            && self
                .selector
                .iter()
                .all(|(k, v)| w.labels.get(k) == Some(v))
    }
}

/// The local state file's shape.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalState {
    #[serde(default)]
    pub workloads: Vec<Workload>,
    #[serde(default)]
    pub services: Vec<Service>,
}

/// Where a connection for an address should go.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub workload: Arc<Workload>,
    pub addr: SocketAddr,
    pub service: Option<Arc<Service>>,
}

/// An immutable, indexed snapshot.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub source: LocalState,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    by_vip: HashMap<IpAddr, (Arc<Service>, Vec<Arc<Workload>>)>,
    /// Service key (`<namespace>/<hostname>`) → VIP.
    by_key: HashMap<String, IpAddr>,
    /// The service each workload is reported under (telemetry, baggage), computed here, not per connection.
    service_of: HashMap<IpAddr, Arc<Service>>,
    /// Namespace → service accounts of every waypoint's workloads: the only peers whose `Forwarded` client
    /// address is believed. Keyed so the per-connection lookup borrows instead of allocating.
    waypoints: HashMap<String, HashSet<String>>,
    rr: AtomicUsize,
}

/// The accounts of the workloads some service names as its waypoint (by workload address, or by the VIP of the
/// waypoint's own Service).
fn waypoint_accounts(
    services: &[Service],
    by_ip: &HashMap<IpAddr, Arc<Workload>>,
    by_vip: &HashMap<IpAddr, (Arc<Service>, Vec<Arc<Workload>>)>,
) -> HashMap<String, HashSet<String>> {
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for addr in services.iter().filter_map(|s| s.waypoint) {
        let ip = addr.ip();
        let workloads: Vec<&Arc<Workload>> = match (by_ip.get(&ip), by_vip.get(&ip)) {
            (Some(w), _) => vec![w],
            (None, Some((_, endpoints))) => endpoints.iter().collect(),
            (None, None) => Vec::new(),
        };
        for w in workloads {
            out.entry(w.namespace.clone())
                .or_default()
                .insert(w.service_account.clone());
        }
    }
    out
}

impl Workload {
    pub fn identity(&self, trust_domain: &str) -> Identity {
        Identity::new(trust_domain, &self.namespace, &self.service_account)
    }
}

impl Snapshot {
    pub fn build(source: LocalState) -> Result<Self, StateError> {
        let mut by_ip = HashMap::new();
        for w in &source.workloads {
            let bad = |field, reason: String| StateError::Invalid {
                kind: "Workload",
                namespace: w.namespace.clone(),
                name: w.name.clone(),
                field,
                reason,
            };
            if w.name.is_empty() || w.namespace.is_empty() {
                return Err(bad("name", "name and namespace must be set".into()));
            }
            if w.node.is_empty() {
                return Err(bad(
                    "node",
                    "must name the node the workload runs on".into(),
                ));
            }
            if let Some(prev) = by_ip.insert(w.ip, Arc::new(w.clone())) {
                return Err(bad(
                    "ip",
                    format!(
                        "{} is already used by {}/{}",
                        w.ip, prev.namespace, prev.name
                    ),
                ));
            }
        }
        // xDS names each workload's services: index them once instead of testing every pair.
        let mut by_key: HashMap<&str, Vec<Arc<Workload>>> = HashMap::new();
        for w in by_ip.values() {
            for k in w.services.keys() {
                by_key.entry(k.as_str()).or_default().push(w.clone());
            }
        }
        let mut by_vip = HashMap::new();
        let mut by_service_key = HashMap::new();
        let mut service_of: HashMap<IpAddr, Arc<Service>> = HashMap::new();
        for s in &source.services {
            if s.ports.is_empty() {
                return Err(StateError::Invalid {
                    kind: "Service",
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    field: "ports",
                    reason: "a service needs at least one port".into(),
                });
            }
            let candidates: Vec<Arc<Workload>> = match s.key() {
                Some(k) if s.selector.is_empty() => {
                    by_key.get(k.as_str()).cloned().unwrap_or_default()
                }
                _ => by_ip.values().filter(|w| s.selects(w)).cloned().collect(),
            };
            let svc = Arc::new(s.clone());
            for w in &candidates {
                let slot = service_of.entry(w.ip).or_insert_with(|| svc.clone());
                if svc.name < slot.name {
                    *slot = svc.clone();
                }
            }
            let mut endpoints: Vec<Arc<Workload>> = candidates
                .into_iter()
                .filter(|w| w.status == WorkloadStatus::Healthy)
                .collect();
            endpoints.sort_by_key(|w| w.ip);
            if let Some(k) = s.key() {
                by_service_key.insert(k, s.vip);
            }
            by_vip.insert(s.vip, (svc, endpoints));
        }
        let waypoints = waypoint_accounts(&source.services, &by_ip, &by_vip);
        Ok(Self {
            source,
            by_ip,
            by_vip,
            by_key: by_service_key,
            service_of,
            waypoints,
            rr: AtomicUsize::new(0),
        })
    }

    /// Whether `id` is a waypoint's identity: a waypoint forwards for its clients, so its `Forwarded` header says
    /// who the client was; any other peer's says what it wants policy to believe.
    pub fn is_waypoint(&self, id: &Identity) -> bool {
        self.waypoints
            .get(&id.namespace)
            .is_some_and(|accounts| accounts.contains(&id.service_account))
    }

    pub fn workload(&self, ip: &IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(ip)
    }

    /// Resolves an original destination: a service VIP is balanced round-robin over its endpoints.
    pub fn resolve(&self, dst: SocketAddr) -> Option<Upstream> {
        if let Some((svc, endpoints)) = self.by_vip.get(&dst.ip()) {
            let port = svc.ports.iter().find(|p| p.port == dst.port())?;
            if endpoints.is_empty() {
                return None;
            }
            let i = self.rr.fetch_add(1, Ordering::Relaxed) % endpoints.len();
            let w = endpoints[i].clone();
            let target = Self::target_port(svc, &w, port.port)?;
            return Some(Upstream {
                addr: SocketAddr::new(w.ip, target),
                workload: w,
                service: Some(svc.clone()),
            });
        }
        self.by_ip.get(&dst.ip()).map(|w| Upstream {
            workload: w.clone(),
            addr: dst,
            service: None,
        })
    }

    /// A service by VIP, with its healthy endpoints (sorted by IP).
    pub fn service_by_vip(&self, vip: &IpAddr) -> Option<(&Arc<Service>, &[Arc<Workload>])> {
        self.by_vip.get(vip).map(|(s, e)| (s, e.as_slice()))
    }

    /// A service by key `<namespace>/<hostname>`, with its healthy endpoints.
    pub fn service_by_key(&self, key: &str) -> Option<(&Arc<Service>, &[Arc<Workload>])> {
        self.by_key
            .get(key)
            .and_then(|vip| self.service_by_vip(vip))
    }

    /// The port on `w` that `service_port` of `svc` reaches (a named targetPort resolves per workload).
    pub fn target_port(svc: &Service, w: &Workload, service_port: u16) -> Option<u16> {
        let port = svc.ports.iter().find(|p| p.port == service_port)?;
        let own = svc
            .key()
            .and_then(|k| w.services.get(&k))
            .and_then(|ports| ports.iter().find(|p| p.port == port.port))
            .and_then(|p| p.target_port);
        Some(own.or(port.target_port).unwrap_or(port.port))
    }

    /// The service a workload belongs to (first by name), for telemetry.
    pub fn service_of(&self, w: &Workload) -> Option<Arc<Service>> {
        self.service_of.get(&w.ip).cloned()
    }
}

/// The current snapshot, shared by every connection.
#[derive(Clone)]
pub struct StateStore {
    current: Arc<ArcSwap<Snapshot>>,
    /// Why the newest input was rejected, while the last good snapshot serves (shown at `/config_dump`).
    rejected: Arc<ArcSwap<Option<String>>>,
    policies: Arc<ArcSwap<Policies>>,
    /// Bumped on every change, so established connections can be checked against new state and policy.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Set by the first state stored (a local file read, or the control plane's first response applied).
    synced: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for StateStore {
    fn default() -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            rejected: Arc::new(ArcSwap::from_pointee(None)),
            policies: Arc::new(ArcSwap::from_pointee(Policies::default())),
            changes: Arc::new(tokio::sync::watch::channel(0).0),
            synced: Default::default(),
        }
    }
}

impl StateStore {
    pub fn rejected(&self) -> Option<String> {
        (*self.rejected.load_full()).clone()
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn store(&self, s: Snapshot) {
        self.current.store(Arc::new(s));
        self.synced
            .store(true, std::sync::atomic::Ordering::Release);
        self.changes.send_modify(|v| *v += 1);
    }

    /// Whether any state arrived yet: until then a proxy knows no workload and must not say it is ready.
    pub fn synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn policies(&self) -> Arc<Policies> {
        self.policies.load_full()
    }

    pub fn store_policies(&self, p: Policies) {
        self.policies.store(Arc::new(p));
        self.changes.send_modify(|v| *v += 1);
    }

    /// Notified after every change of state or policy.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

pub fn read_file(path: &Path) -> Result<Snapshot, StateError> {
    let local: LocalState = crate::config::load_yaml("local state file", path)?;
    Snapshot::build(local)
}

/// Watches the local state file, swapping in each valid version.
pub async fn watch_file(path: PathBuf, store: StateStore, every: Duration) {
    let mut seen: Option<SystemTime> = None;
    loop {
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if mtime.is_some() && mtime != seen {
            seen = mtime;
            match read_file(&path) {
                Ok(s) => {
                    tracing::info!(file = %path.display(), workloads = s.source.workloads.len(), services = s.source.services.len(), "local state loaded");
                    store.store(s);
                    store.rejected.store(Arc::new(None));
                }
                Err(e) => {
                    tracing::error!(error = %e, "local state rejected; the last good state keeps serving");
                    store.rejected.store(Arc::new(Some(e.to_string())));
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LocalState {
        mesh_primitives::yaml::from_str(
            r#"
workloads:
- {name: a, namespace: ns, ip: 198.18.1.2, node: n1, labels: {app: echo}}
- {name: b, namespace: ns, ip: 198.18.2.2, node: n2, labels: {app: echo}, serviceAccount: echo}
- {name: c, namespace: other, ip: 198.18.2.3, node: n2, labels: {app: echo}}
services:
- {name: echo, namespace: ns, vip: 198.18.255.1, ports: [{port: 80, targetPort: 8080}], selector: {app: echo}}
"#,
        )
        .unwrap()
    }

    #[test]
    fn vip_balances_over_selected_endpoints_in_namespace() {
        let s = Snapshot::build(sample()).unwrap();
        let dst: SocketAddr = "198.18.255.1:80".parse().unwrap();
        let picks: Vec<String> = (0..4)
            .map(|_| s.resolve(dst).unwrap().addr.to_string())
            .collect();
        assert_eq!(
            picks,
            [
                "198.18.1.2:8080",
                "198.18.2.2:8080",
                "198.18.1.2:8080",
                "198.18.2.2:8080"
            ]
        );
        assert!(s.resolve("198.18.255.1:81".parse().unwrap()).is_none());
    }

    #[test]
    fn unhealthy_endpoints_get_no_service_traffic() {
        let mut l = sample();
        l.workloads[0].status = WorkloadStatus::Unhealthy;
        let s = Snapshot::build(l).unwrap();
        let dst: SocketAddr = "198.18.255.1:80".parse().unwrap();
        for _ in 0..4 {
            assert_eq!(s.resolve(dst).unwrap().addr.to_string(), "198.18.2.2:8080");
        }
    }

    #[tokio::test]
    async fn invalid_file_keeps_last_good_state() {
        let path = std::env::temp_dir().join(format!("zt-state-{}.yaml", std::process::id()));
        std::fs::write(&path, mesh_primitives::yaml::to_string(&sample()).unwrap()).unwrap();
        let store = StateStore::default();
        let task = tokio::spawn(watch_file(
            path.clone(),
            store.clone(),
            Duration::from_millis(20),
        ));
        let wait_for = |want: usize| {
            let store = store.clone();
            async move {
                for _ in 0..250 {
                    if store.load().source.workloads.len() == want {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                panic!("state never had {want} workloads");
            }
        };
        wait_for(3).await;
        // Invalid (duplicate IP): rejected, the 3-workload snapshot keeps serving.
        let mut bad = sample();
        bad.workloads.push(bad.workloads[0].clone());
        bad.workloads[3].name = "dup".into();
        write_bumping_mtime(&path, &mesh_primitives::yaml::to_string(&bad).unwrap());
        for _ in 0..250 {
            if store.rejected().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let why = store.rejected().expect("the invalid file is rejected");
        assert!(why.contains("Workload ns/dup: field ip"), "{why}");
        assert_eq!(store.load().source.workloads.len(), 3);
        // A valid change is applied.
        let mut good = sample();
        good.workloads.pop();
        write_bumping_mtime(&path, &mesh_primitives::yaml::to_string(&good).unwrap());
        wait_for(2).await;
        task.abort();
        let _ = std::fs::remove_file(&path);
    }

    fn write_bumping_mtime(path: &Path, body: &str) {
        let before = std::fs::metadata(path).and_then(|m| m.modified()).unwrap();
        std::fs::write(path, body).unwrap();
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(before + Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn service_of_is_known_for_endpoints_only() {
        let s = Snapshot::build(sample()).unwrap();
        let b = s.workload(&"198.18.2.2".parse().unwrap()).unwrap().clone();
        assert_eq!(
            s.service_of(&b).map(|x| x.name.clone()).as_deref(),
            Some("echo")
        );
        let c = s.workload(&"198.18.2.3".parse().unwrap()).unwrap().clone();
        assert!(s.service_of(&c).is_none(), "other namespace");
    }

    #[test]
    fn workload_identity() {
        let s = Snapshot::build(sample()).unwrap();
        let w = s.workload(&"198.18.2.2".parse().unwrap()).unwrap();
        assert_eq!(w.identity("td").to_string(), "spiffe://td/ns/ns/sa/echo");
    }

    #[test]
    fn duplicate_ip_rejected_with_name_and_field() {
        let mut l = sample();
        l.workloads[1].ip = l.workloads[0].ip;
        let e = Snapshot::build(l).unwrap_err().to_string();
        assert!(e.contains("Workload ns/b: field ip"), "{e}");
    }

    #[test]
    fn unknown_field_rejected() {
        let e = mesh_primitives::yaml::from_str::<LocalState>(
            "workloads: [{name: a, namespace: n, ip: 198.18.0.1, node: x, bogus: 1}]",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
