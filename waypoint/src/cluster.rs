//! One upstream cluster per (service, subset, port), as Envoy and Istio have them: its circuit breakers
//! (connections, pending requests, requests, retries), outlier detection per host, and load balancing.
//!
//! Cluster state outlives config swaps (a new route table must not forget an ejected host or in-flight
//! counts); each cluster reads the policy of the newest config it was asked for.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use mesh_core::workload::state::Workload;
use rand::Rng;

use crate::routes::{LoadBalancer, Outlier, Policy};
use crate::upstream::h1::H1Pool;
use crate::upstream::h2::H2Conns;

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ClusterKey {
    pub service: String,
    pub subset: Option<String>,
    pub port: u16,
}

impl std::fmt::Display for ClusterKey {
    /// Istio's cluster name: `outbound|<port>|<subset>|<host>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = self
            .service
            .split_once('/')
            .map_or(&*self.service, |(_, h)| h);
        write!(
            f,
            "outbound|{}|{}|{host}",
            self.port,
            self.subset.as_deref().unwrap_or("")
        )
    }
}

/// How one attempt at a host ended, for outlier detection.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    Status(u16),
    /// Connect failure, reset or timeout: counted as a 503 (Envoy's default, locally originated errors not split).
    LocalFailure,
}

#[derive(Debug, Default)]
struct Host {
    active: usize,
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
    last_unejected: Option<Instant>,
}

pub struct Cluster {
    pub key: ClusterKey,
    policy: ArcSwap<Policy>,
    generation: AtomicUsize,
    pub active_requests: AtomicUsize,
    pub active_retries: AtomicUsize,
    hosts: Mutex<HashMap<IpAddr, Host>>,
    rr: AtomicUsize,
    /// Pooled HTTP/1.1 connections.
    pub h1: H1Pool,
    /// One multiplexed HTTP/2 connection per host.
    pub h2: H2Conns,
}

/// Marks a host busy for LEAST_REQUEST while an attempt is in flight.
pub struct HostLease {
    cluster: Arc<Cluster>,
    ip: IpAddr,
}

impl Drop for HostLease {
    fn drop(&mut self) {
        if let Some(h) = self.cluster.hosts_lock().get_mut(&self.ip) {
            h.active = h.active.saturating_sub(1);
        }
    }
}

impl Cluster {
    fn new(key: ClusterKey, policy: Policy, generation: usize) -> Self {
        Self {
            key,
            policy: ArcSwap::from_pointee(policy),
            generation: AtomicUsize::new(generation),
            active_requests: AtomicUsize::new(0),
            active_retries: AtomicUsize::new(0),
            hosts: Mutex::new(HashMap::new()),
            rr: AtomicUsize::new(0),
            h1: H1Pool::default(),
            h2: H2Conns::default(),
        }
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    fn hosts_lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Host>> {
        self.hosts.lock().expect("cluster hosts lock")
    }

    /// Picks an endpoint by the cluster's load balancer, skipping ejected hosts and `exclude` (hosts already
    /// tried by this request) when others are left. `None`: no healthy host.
    pub fn pick(
        self: &Arc<Self>,
        endpoints: &[Arc<Workload>],
        exclude: &[IpAddr],
    ) -> Option<(Arc<Workload>, HostLease)> {
        let now = Instant::now();
        let mut hosts = self.hosts_lock();
        let healthy: Vec<&Arc<Workload>> = endpoints
            .iter()
            .filter(|w| !hosts.get(&w.ip).is_some_and(|h| h.ejected(now)))
            .collect();
        let fresh: Vec<&Arc<Workload>> = healthy
            .iter()
            .copied()
            .filter(|w| !exclude.contains(&w.ip))
            .collect();
        let candidates = if fresh.is_empty() { healthy } else { fresh };
        if candidates.is_empty() {
            return None;
        }
        let chosen = match self.policy.load().lb {
            LoadBalancer::RoundRobin => {
                candidates[self.rr.fetch_add(1, Ordering::Relaxed) % candidates.len()]
            }
            LoadBalancer::Random => candidates[rand::rng().random_range(0..candidates.len())],
            // Envoy's power of two choices: the less busy of two random hosts.
            LoadBalancer::LeastRequest => {
                let mut rng = rand::rng();
                let a = candidates[rng.random_range(0..candidates.len())];
                let b = candidates[rng.random_range(0..candidates.len())];
                let load = |w: &Workload| hosts.get(&w.ip).map_or(0, |h| h.active);
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
        };
        hosts.entry(chosen.ip).or_default().active += 1;
        let lease = HostLease {
            cluster: self.clone(),
            ip: chosen.ip,
        };
        Some((chosen.clone(), lease))
    }

    /// Records how an attempt at `ip` ended; ejects the host when its consecutive errors reach the threshold
    /// and the ejection cap allows. Returns true if this call ejected it.
    pub fn record(&self, ip: IpAddr, outcome: Outcome, total_hosts: usize) -> bool {
        self.record_at(ip, outcome, total_hosts, Instant::now())
    }

    /// [`Cluster::record`] as of `now` (tests step time instead of sleeping).
    pub fn record_at(
        &self,
        ip: IpAddr,
        outcome: Outcome,
        total_hosts: usize,
        now: Instant,
    ) -> bool {
        let policy = self.policy.load();
        let Some(od) = policy.outlier.as_ref() else {
            return false;
        };
        let status = match outcome {
            Outcome::Status(s) => s,
            Outcome::LocalFailure => 503,
        };
        let mut hosts = self.hosts_lock();
        let ejected_now = hosts.values().filter(|h| h.ejected(now)).count();
        let h = hosts.entry(ip).or_default();
        if status < 500 {
            h.consecutive_5xx = 0;
            h.consecutive_gateway = 0;
            return false;
        }
        h.consecutive_5xx += 1;
        // Envoy's gateway-error streak is broken by any other answer, a 500 included.
        if matches!(status, 502..=504) {
            h.consecutive_gateway += 1;
        } else {
            h.consecutive_gateway = 0;
        }
        let tripped = (od.consecutive_5xx > 0 && h.consecutive_5xx >= od.consecutive_5xx)
            || (od.consecutive_gateway > 0 && h.consecutive_gateway >= od.consecutive_gateway);
        if !tripped || h.ejected(now) {
            return false;
        }
        // maxEjectionPercent caps ejections, yet one host can always be ejected.
        let cap = (total_hosts * od.max_ejection_percent as usize) / 100;
        if ejected_now > 0 && ejected_now >= cap {
            return false;
        }
        h.eject(od, now);
        tracing::info!(cluster = %self.key, host = %ip, times = h.times_ejected, "outlier ejected");
        true
    }

    /// Hosts currently ejected (for `/config_dump` and tests).
    pub fn ejected(&self) -> Vec<IpAddr> {
        self.ejected_at(Instant::now())
    }

    pub fn ejected_at(&self, now: Instant) -> Vec<IpAddr> {
        self.hosts_lock()
            .iter()
            .filter(|(_, h)| h.ejected(now))
            .map(|(ip, _)| *ip)
            .collect()
    }
}

impl Host {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }

    fn eject(&mut self, od: &Outlier, now: Instant) {
        // Envoy lowers the multiplier by one for every interval the host stayed healthy since it came back.
        let healthy_intervals = self.last_unejected.map_or(0, |t| {
            let iv = od.interval.as_millis().max(1);
            (now.duration_since(t).as_millis() / iv) as u32
        });
        self.times_ejected = self.times_ejected.saturating_sub(healthy_intervals) + 1;
        let cap = od.base_ejection.max(Duration::from_secs(300));
        let time = od
            .base_ejection
            .checked_mul(self.times_ejected)
            .map_or(cap, |t| t.min(cap));
        let until = now.checked_add(time);
        self.ejected_until = until;
        self.last_unejected = until;
        self.consecutive_5xx = 0;
        self.consecutive_gateway = 0;
    }
}

/// Every cluster this waypoint has used.
#[derive(Default)]
pub struct Clusters {
    map: Mutex<HashMap<ClusterKey, Arc<Cluster>>>,
}

impl Clusters {
    /// The cluster for `key`, created on first use; `policy` of config `generation` replaces an older one.
    pub fn get(&self, key: ClusterKey, policy: &Policy, generation: usize) -> Arc<Cluster> {
        let mut map = self.map.lock().expect("clusters lock");
        if let Some(c) = map.get(&key) {
            // Only a newer config replaces the policy: a request still holding an older one must not undo it.
            if c.generation.fetch_max(generation, Ordering::AcqRel) < generation {
                c.policy.store(Arc::new(policy.clone()));
            }
            return c.clone();
        }
        let c = Arc::new(Cluster::new(key.clone(), policy.clone(), generation));
        map.insert(key, c.clone());
        c
    }

    /// Every cluster, for the metrics refresh.
    pub fn all(&self) -> Vec<Arc<Cluster>> {
        self.map
            .lock()
            .expect("clusters lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn dump(&self) -> Vec<serde_json::Value> {
        let map = self.map.lock().expect("clusters lock");
        let mut out: Vec<_> = map
            .values()
            .map(|c| {
                serde_json::json!({
                    "name": c.key.to_string(),
                    "activeRequests": c.active_requests.load(Ordering::Relaxed),
                    "connections": c.h1.connections(),
                    "http2Connections": c.h2.connections(),
                    "ejected": c.ejected(),
                })
            })
            .collect();
        out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        out
    }
}
