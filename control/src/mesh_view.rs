//! The mesh page's data (`/dashboard` and `/api/mesh` on the monitoring port): the proxies connected over xDS
//! with the config version each acknowledged, the workloads, services, waypoints and policies of the config, and
//! the live service graph, read from the proxies' own metrics ports (so it needs no Prometheus): who calls whom,
//! request rate, error rate, p99, and mTLS or plaintext on each edge.
//!
//! Scraping runs only while someone looks (an `/api/mesh` request in the last minute), every two seconds.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The page itself: static, embedded in the binary.
pub const PAGE: &str = include_str!("dashboard.html");

/// A proxy holding an xDS stream.
#[derive(Clone, Debug)]
struct Proxy {
    peer: String,
    kind: &'static str,
    addr: Option<IpAddr>,
    since: SystemTime,
    sent: u64,
    acked: u64,
}

/// The connected proxies, by stream.
#[derive(Clone, Default)]
pub struct Proxies {
    streams: Arc<Mutex<BTreeMap<u64, Proxy>>>,
    next: Arc<AtomicU64>,
}

impl Proxies {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Proxy>> {
        self.streams.lock().expect("proxies lock")
    }

    /// A stream opened by `peer` (a node's ztunnel when `node`), from `addr`: its id for the calls below.
    pub fn open(&self, peer: String, node: bool, addr: Option<IpAddr>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let kind = if node { "ztunnel" } else { "waypoint" };
        let since = SystemTime::now();
        self.lock().insert(
            id,
            Proxy {
                peer,
                kind,
                addr,
                since,
                sent: 0,
                acked: 0,
            },
        );
        id
    }

    pub fn sent(&self, id: u64, version: u64) {
        if let Some(p) = self.lock().get_mut(&id) {
            p.sent = version;
        }
    }

    pub fn acked(&self, id: u64, version: u64) {
        if let Some(p) = self.lock().get_mut(&id) {
            p.acked = p.acked.max(version);
        }
    }

    pub fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn all(&self) -> Vec<Proxy> {
        self.lock().values().cloned().collect()
    }
}

/// One edge of the service graph, as counters at a moment.
#[derive(Clone, Debug, Default)]
struct Counts {
    total: f64,
    errors: f64,
    /// Latency histogram (`le` in ms → cumulative count); requests only.
    buckets: BTreeMap<u64, f64>,
}

/// (source workload, destination, protocol, mTLS).
type EdgeKey = (String, String, &'static str, bool);

/// One scrape of one proxy: when, and its edges' counters.
type Scrape = (Instant, HashMap<EdgeKey, Counts>);

fn parse(text: &str) -> HashMap<EdgeKey, Counts> {
    let mut out: HashMap<EdgeKey, Counts> = HashMap::new();
    for line in text.lines() {
        let Some((name, labels, value)) = mesh_core::metrics::parse_sample(line) else {
            continue;
        };
        let l = |k: &str| labels.get(k).copied().unwrap_or("unknown");
        let mtls = l("connection_security_policy") == "mutual_tls";
        let src = format!(
            "{}/{}",
            l("source_workload_namespace"),
            l("source_workload")
        );
        let (key, part) = match (name, l("reporter")) {
            // L4 as the destination's ztunnel sees it; plaintext to a workload outside the mesh only the
            // source's does.
            ("istio_tcp_connections_opened_total", r)
                if r == "destination" || (r == "source" && !mtls) =>
            {
                let dst = format!(
                    "{}/{}",
                    l("destination_workload_namespace"),
                    l("destination_workload")
                );
                ((src, dst, "tcp", mtls), "total")
            }
            ("istio_requests_total", "waypoint") => {
                let dst = format!(
                    "{}/{}",
                    l("destination_service_namespace"),
                    l("destination_service_name")
                );
                let part = if l("response_code").starts_with('5') {
                    "error"
                } else {
                    "total"
                };
                ((src, dst, "http", mtls), part)
            }
            ("istio_request_duration_milliseconds_bucket", "waypoint") => {
                let dst = format!(
                    "{}/{}",
                    l("destination_service_namespace"),
                    l("destination_service_name")
                );
                ((src, dst, "http", mtls), "bucket")
            }
            _ => continue,
        };
        let c = out.entry(key).or_default();
        match part {
            "total" => c.total += value,
            "error" => {
                c.total += value;
                c.errors += value;
            }
            _ => {
                let le = l("le").parse::<f64>().map_or(u64::MAX, |v| v as u64);
                *c.buckets.entry(le).or_default() += value;
            }
        }
    }
    out
}

/// The latency under which 99% of the requests between two samples fell, in whole ms.
fn p99(before: &BTreeMap<u64, f64>, now: &BTreeMap<u64, f64>) -> Option<u64> {
    mesh_core::metrics::histogram_quantile(before, now, 0.99).map(|ms| ms.ceil() as u64)
}

/// What the scraper keeps: each proxy's last sample, and the edges computed from the last two.
pub struct MeshView {
    pub proxies: Proxies,
    samples: Mutex<HashMap<IpAddr, Scrape>>,
    edges: ArcSwap<Vec<Value>>,
    viewed: AtomicU64,
    metrics_port: u16,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl MeshView {
    pub fn new(proxies: Proxies, metrics_port: u16) -> Arc<Self> {
        Arc::new(Self {
            proxies,
            samples: Mutex::default(),
            edges: ArcSwap::from_pointee(Vec::new()),
            viewed: AtomicU64::new(0),
            metrics_port,
        })
    }

    /// Scrapes every connected proxy every two seconds while the page is being looked at.
    pub fn spawn(self: &Arc<Self>) {
        let view = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if now_secs().saturating_sub(view.viewed.load(Ordering::Relaxed)) < 60 {
                    view.scrape().await;
                } else {
                    // Nobody looks: forget, so the next look does not average rates over the idle gap.
                    view.samples.lock().expect("samples lock").clear();
                    view.edges.store(Arc::new(Vec::new()));
                }
            }
        });
    }

    async fn scrape(&self) {
        let addrs: Vec<IpAddr> = self.proxies.all().iter().filter_map(|p| p.addr).collect();
        let mut edges: BTreeMap<EdgeKey, (f64, f64, Option<u64>)> = BTreeMap::new();
        for ip in addrs {
            let Some(text) = fetch(SocketAddr::new(ip, self.metrics_port)).await else {
                continue;
            };
            let now = (Instant::now(), parse(&text));
            let before = self
                .samples
                .lock()
                .expect("samples lock")
                .insert(ip, now.clone());
            let Some(before) = before else { continue };
            let secs = (now.0 - before.0).as_secs_f64().max(0.001);
            for (key, c) in &now.1 {
                let old = before.1.get(key).cloned().unwrap_or_default();
                let e = edges.entry(key.clone()).or_default();
                e.0 += (c.total - old.total).max(0.0) / secs;
                e.1 += (c.errors - old.errors).max(0.0) / secs;
                e.2 = e.2.max(p99(&old.buckets, &c.buckets));
            }
        }
        let edges = edges
            .into_iter()
            .map(|((src, dst, protocol, mtls), (rate, errors, p99))| {
                json!({
                    "source": src, "destination": dst, "protocol": protocol, "mtls": mtls,
                    "rate": (rate * 10.0).round() / 10.0,
                    "errorRate": if rate > 0.0 { errors / rate } else { 0.0 },
                    "p99Ms": p99,
                })
            })
            .collect();
        self.edges.store(Arc::new(edges));
    }

    /// `/api/mesh`: everything the page shows.
    pub fn json(&self, status: &crate::server::Status, trust_domain: &str) -> Value {
        self.viewed.store(now_secs(), Ordering::Relaxed);
        let set = &status.config;
        let now = SystemTime::now();
        let proxies: Vec<Value> = self
            .proxies
            .all()
            .into_iter()
            .map(|p| {
                json!({
                    "peer": p.peer, "kind": p.kind, "address": p.addr.map(|a| a.to_string()),
                    "connectedSecs": now.duration_since(p.since).map_or(0, |d| d.as_secs()),
                    "sentVersion": p.sent, "ackedVersion": p.acked,
                })
            })
            .collect();
        let workloads: Vec<Value> = set
            .pods()
            .map(|p| {
                let ns = &p.metadata.namespace;
                json!({
                    "namespace": ns, "name": p.metadata.name, "node": p.node_name(),
                    "ip": p.ip().map(|i| i.to_string()),
                    "identity": format!("spiffe://{trust_domain}/ns/{ns}/sa/{}", p.service_account()),
                    "waypoint": mesh_model::waypoint::is_waypoint_pod(set, p),
                })
            })
            .collect();
        let services: Vec<Value> = set
            .services()
            .map(|s| {
                let waypoint = mesh_model::waypoint::service_waypoint(set, s)
                    .map(|w| format!("{}/{}", w.namespace, w.name));
                json!({
                    "namespace": s.metadata.namespace, "name": s.metadata.name,
                    "vip": s.cluster_ip().map(|i| i.to_string()), "waypoint": waypoint,
                })
            })
            .collect();
        let named =
            |kind: &str, ns: &str, name: &str| json!({"kind": kind, "namespace": ns, "name": name});
        let policies: Vec<Value> = set
            .peer_authentications()
            .map(|p| {
                named(
                    "PeerAuthentication",
                    &p.metadata.namespace,
                    &p.metadata.name,
                )
            })
            .chain(set.authorization_policies().map(|p| {
                named(
                    "AuthorizationPolicy",
                    &p.metadata.namespace,
                    &p.metadata.name,
                )
            }))
            .chain(
                set.virtual_services()
                    .map(|p| named("VirtualService", &p.metadata.namespace, &p.metadata.name)),
            )
            .chain(
                set.destination_rules()
                    .map(|p| named("DestinationRule", &p.metadata.namespace, &p.metadata.name)),
            )
            .collect();
        let waypoints: Vec<Value> = set
            .gateways()
            .filter(|g| g.spec.gateway_class_name == mesh_model::WAYPOINT_CLASS)
            .map(|g| named("Gateway", &g.metadata.namespace, &g.metadata.name))
            .collect();
        json!({
            "configVersion": status.version,
            "proxies": proxies, "workloads": workloads, "services": services,
            "waypoints": waypoints, "policies": policies, "edges": &**self.edges.load(),
        })
    }
}

/// One `GET /metrics` (1 s at most); `None` when the proxy does not answer.
async fn fetch(addr: SocketAddr) -> Option<String> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.ok()?;
        // A proxy's metrics are kilobytes; a runaway answer is cut, not buffered whole.
        let mut raw = Vec::new();
        (&mut s).take(16 << 20).read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw);
        Some(text.split_once("\r\n\r\n")?.1.to_string())
    };
    tokio::time::timeout(Duration::from_secs(1), get)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_from_ztunnel_and_waypoint_metrics() {
        let text = "istio_tcp_connections_opened_total{reporter=\"destination\",source_workload=\"sleep\",source_workload_namespace=\"default\",destination_workload=\"echo-v1\",destination_workload_namespace=\"default\",connection_security_policy=\"mutual_tls\"} 3\n\
istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"sleep\",source_workload_namespace=\"default\",destination_workload=\"echo-v1\",destination_workload_namespace=\"default\",connection_security_policy=\"mutual_tls\"} 3\n\
istio_requests_total{reporter=\"waypoint\",source_workload=\"sleep\",source_workload_namespace=\"default\",destination_service_name=\"order-service\",destination_service_namespace=\"default\",response_code=\"503\",connection_security_policy=\"mutual_tls\"} 2\n";
        let edges = parse(text);
        let tcp = &edges[&(
            "default/sleep".into(),
            "default/echo-v1".into(),
            "tcp",
            true,
        )];
        assert_eq!(
            tcp.total, 3.0,
            "the source's report of a mesh connection is not counted twice"
        );
        let http = &edges[&(
            "default/sleep".into(),
            "default/order-service".into(),
            "http",
            true,
        )];
        assert_eq!((http.total, http.errors), (2.0, 2.0));
        let before = BTreeMap::from([(5, 0.0), (10, 0.0), (u64::MAX, 0.0)]);
        let now = BTreeMap::from([(5, 90.0), (10, 100.0), (u64::MAX, 100.0)]);
        assert_eq!(
            p99(&before, &now),
            Some(10),
            "interpolated in the (5, 10] bucket: 9.5, rounded up"
        );
    }
}
