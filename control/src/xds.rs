//! Delta ADS: `envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources`.
//!
//! One immutable [`Snapshot`] of every resource is published through a `watch` channel; each stream keeps what its
//! client has (name → version) per type and sends only differences. Nonces pair responses with ACK/NACK; a NACK is
//! counted and logged with the client's `error_detail`. On reconnect `initial_resource_versions` seeds what the client
//! has, so unchanged resources are not resent and resources deleted meanwhile are reported removed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use mesh_core::metrics::BareCounter;
use mesh_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use mesh_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as XdsResource,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::ca::Authenticator;
pub use mesh_translate::Resource;

/// Resources of one type by name. Names are shared (`Arc<str>`) with the previous snapshot and with what every
/// stream records as sent, so 100 proxies holding 10k resources keep one copy of each name, not 100.
pub type ByName = BTreeMap<Arc<str>, Resource>;

/// Every resource of every type, as of one config change.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub version: u64,
    /// When the config change behind this snapshot was observed (for convergence time).
    pub observed: Instant,
    pub resources: BTreeMap<String, ByName>,
}

impl Snapshot {
    /// A snapshot of `resources`, reusing `previous`'s name allocations for names it already had.
    pub fn new(
        version: u64,
        observed: Instant,
        resources: BTreeMap<String, BTreeMap<String, Resource>>,
        previous: Option<&Snapshot>,
    ) -> Self {
        let resources = resources
            .into_iter()
            .map(|(type_url, by_name)| {
                let old = previous.and_then(|p| p.resources.get(&type_url));
                let by_name = by_name
                    .into_iter()
                    .map(|(name, r)| {
                        let key = old
                            .and_then(|o| o.get_key_value(name.as_str()))
                            .map_or_else(|| Arc::from(name), |(k, _)| Arc::clone(k));
                        (key, r)
                    })
                    .collect();
                (type_url, by_name)
            })
            .collect();
        Self {
            version,
            observed,
            resources,
        }
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            version: 0,
            observed: Instant::now(),
            resources: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: String,
}

fn short_type(type_url: &str) -> String {
    type_url
        .rsplit('.')
        .next()
        .unwrap_or(type_url)
        .to_lowercase()
}

/// Istio's pilot metric names, so existing dashboards read them.
#[derive(Clone)]
pub struct XdsMetrics {
    pub pushes: Family<TypeLabels, BareCounter>,
    pub rejects: Family<TypeLabels, BareCounter>,
    pub convergence: Histogram,
    pub connected: Gauge,
}

impl XdsMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            pushes: Family::default(),
            rejects: Family::default(),
            convergence: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            connected: Gauge::default(),
        };
        registry.register(
            "pilot_xds_pushes",
            "xDS responses sent, by type",
            m.pushes.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "xDS responses NACKed by proxies, by type",
            m.rejects.clone(),
        );
        registry.register(
            "pilot_proxy_convergence_time",
            "Seconds from a config change being observed to the proxy's ACK",
            m.convergence.clone(),
        );
        registry.register("pilot_xds", "Connected xDS streams", m.connected.clone());
        m
    }
}

pub struct AdsService {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    auth: Arc<dyn Authenticator>,
    metrics: XdsMetrics,
    stopping: tokio_util::sync::CancellationToken,
    proxies: crate::mesh_view::Proxies,
}

impl AdsService {
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        auth: Arc<dyn Authenticator>,
        metrics: XdsMetrics,
    ) -> Self {
        Self {
            snapshots,
            auth,
            metrics,
            stopping: tokio_util::sync::CancellationToken::new(),
            proxies: Default::default(),
        }
    }

    /// Records each stream (peer, address, config versions sent and acknowledged) for the mesh page.
    pub fn with_proxies(mut self, proxies: crate::mesh_view::Proxies) -> Self {
        self.proxies = proxies;
        self
    }

    /// When `stopping` is cancelled every stream ends with UNAVAILABLE, which tells proxies to reconnect (to
    /// another replica): a stopping control plane does not wait for its clients to leave.
    pub fn with_stop(mut self, stopping: tokio_util::sync::CancellationToken) -> Self {
        self.stopping = stopping;
        self
    }
}

type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;
type SotwStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SotwStream>, Status> {
        Err(Status::unimplemented(
            "state-of-the-world ADS is not served: use DeltaAggregatedResources",
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        let caller = self.auth.authenticate(request.metadata()).await?;
        let addr = request.remote_addr().map(|a| a.ip());
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let peer = caller
            .node
            .clone()
            .unwrap_or_else(|| caller.identity.to_string());
        let id = self.proxies.open(peer.clone(), caller.node.is_some(), addr);
        let conn = Conn {
            peer,
            id,
            proxies: self.proxies.clone(),
            types: HashMap::new(),
            nonce: 0,
            tx,
            metrics: self.metrics.clone(),
        };
        tokio::spawn(conn.run(inbound, self.snapshots.clone(), self.stopping.clone()));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[derive(Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client has: name → version (the resource's hash; 0 for a version that is not ours).
    sent: HashMap<Arc<str>, u64>,
    /// Nonce of the last response and when its config change was observed (`None`: the first response).
    pending: Option<(String, Option<Instant>)>,
}

impl TypeState {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

struct Conn {
    peer: String,
    /// This stream in the mesh page's list of proxies.
    id: u64,
    proxies: crate::mesh_view::Proxies,
    types: HashMap<String, TypeState>,
    nonce: u64,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    metrics: XdsMetrics,
}

impl Conn {
    async fn run(
        mut self,
        mut inbound: Streaming<DeltaDiscoveryRequest>,
        mut snaps: watch::Receiver<Arc<Snapshot>>,
        stopping: tokio_util::sync::CancellationToken,
    ) {
        self.metrics.connected.inc();
        tracing::info!(peer = %self.peer, "xDS stream opened");
        loop {
            tokio::select! {
                _ = stopping.cancelled() => {
                    let _ = self
                        .tx
                        .send(Err(Status::unavailable("control plane stopping; reconnect")))
                        .await;
                    break;
                }
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        let snap = snaps.borrow().clone();
                        if self.on_request(req, &snap).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(peer = %self.peer, error = %e, "xDS stream error");
                        break;
                    }
                },
                changed = snaps.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snap = snaps.borrow_and_update().clone();
                    let types: Vec<String> = self.types.keys().cloned().collect();
                    for t in types {
                        if self.push(&t, &snap, false).await.is_err() {
                            break;
                        }
                    }
                    // A change that touched nothing this proxy holds leaves it current without a push.
                    self.proxies.sent(self.id, snap.version);
                    if self.types.values().all(|t| t.pending.is_none()) {
                        self.proxies.acked(self.id, snap.version);
                    }
                }
            }
        }
        self.metrics.connected.dec();
        self.proxies.close(self.id);
        tracing::info!(peer = %self.peer, "xDS stream closed");
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest, snap: &Snapshot) -> Result<(), ()> {
        let first = !self.types.contains_key(&req.type_url);
        let labels = TypeLabels {
            r#type: short_type(&req.type_url),
        };
        let state = self.types.entry(req.type_url.clone()).or_default();
        if first {
            let known = snap.resources.get(&req.type_url);
            state.sent = req
                .initial_resource_versions
                .iter()
                .map(|(name, version)| {
                    let name = known
                        .and_then(|k| k.get_key_value(name.as_str()))
                        .map_or_else(|| Arc::from(name.as_str()), |(k, _)| Arc::clone(k));
                    (name, u64::from_str_radix(version, 16).unwrap_or(0))
                })
                .collect();
            state.wildcard = req.resource_names_subscribe.is_empty();
        }
        if !req.response_nonce.is_empty() {
            let matches = state
                .pending
                .as_ref()
                .is_some_and(|(n, _)| *n == req.response_nonce);
            if let Some(err) = &req.error_detail {
                self.metrics.rejects.get_or_create(&labels).inc();
                tracing::warn!(peer = %self.peer, r#type = %labels.r#type, nonce = %req.response_nonce, error = %err.message, "xDS NACK");
            } else if matches {
                // Our nonces are `<config version>-<n>`.
                if let Some(v) = req
                    .response_nonce
                    .split('-')
                    .next()
                    .and_then(|v| v.parse().ok())
                {
                    self.proxies.acked(self.id, v);
                }
                if let Some((_, Some(observed))) = state.pending.take() {
                    self.metrics
                        .convergence
                        .observe(observed.elapsed().as_secs_f64());
                }
            }
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else {
                state.names.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name);
                state.sent.remove(name.as_str());
            }
        }
        let changed_subscriptions =
            !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty();
        if first || changed_subscriptions {
            self.push(&req.type_url, snap, first).await?;
        }
        Ok(())
    }

    /// Sends what the client lacks of `type_url`; with `always`, even an empty response (the first one).
    async fn push(&mut self, type_url: &str, snap: &Snapshot, always: bool) -> Result<(), ()> {
        let Some(state) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        let empty = BTreeMap::new();
        let current = snap.resources.get(type_url).unwrap_or(&empty);
        let mut resources = Vec::new();
        let mut sending = Vec::new();
        for (name, res) in current {
            if state.wants(name) && state.sent.get(name) != Some(&res.version) {
                resources.push(XdsResource {
                    name: name.to_string(),
                    version: res.version_text(),
                    resource: Some(res.body.clone()),
                    ..Default::default()
                });
                sending.push((Arc::clone(name), res.version));
            }
        }
        let removed: Vec<Arc<str>> = state
            .sent
            .keys()
            .filter(|n| !current.contains_key(&***n) || !state.wants(n))
            .cloned()
            .collect();
        if resources.is_empty() && removed.is_empty() && !always {
            return Ok(());
        }
        state.sent.extend(sending);
        for n in &removed {
            state.sent.remove(n);
        }
        let removed: Vec<String> = removed.iter().map(|n| n.to_string()).collect();
        self.nonce += 1;
        let nonce = format!("{}-{}", snap.version, self.nonce);
        // A stream's first response carries the config as it is, not a change: it has no convergence time (its
        // age would say how long the config sat unchanged before this proxy connected).
        state.pending = Some((nonce.clone(), (!always).then_some(snap.observed)));
        let labels = TypeLabels {
            r#type: short_type(type_url),
        };
        self.metrics.pushes.get_or_create(&labels).inc();
        tracing::debug!(peer = %self.peer, r#type = %labels.r#type, resources = resources.len(), removed = removed.len(), %nonce, "xDS push");
        let resp = DeltaDiscoveryResponse {
            system_version_info: snap.version.to_string(),
            type_url: type_url.to_string(),
            resources,
            removed_resources: removed,
            nonce,
            ..Default::default()
        };
        self.proxies.sent(self.id, snap.version);
        self.tx.send(Ok(resp)).await.map_err(|_| ())
    }
}
