//! The waypoint: the optional per-namespace L7 proxy of the ambient mesh.
//!
//! The modules follow a request. ztunnel sends traffic for a waypoint-bound service here over HBONE ([`proxy`],
//! which records who called in a [`downstream::Downstream`]); the waypoint detects HTTP/1.1 or HTTP/2 and runs
//! each request through the pipeline in [`http`]: authorization ([`authz`]), the service's compiled L7 config
//! ([`routes`], fed over xDS by [`xds`]), the route's actions ([`actions`]); then [`forward`] applies the
//! destination cluster's circuit breakers ([`budget`]) and outlier detection ([`cluster`]), retries and
//! timeouts, and sends it over HBONE to the chosen endpoint as the waypoint's own identity ([`upstream`]).
//! Every answer the waypoint makes itself is a [`reply::LocalReply`]. Other TCP is forwarded as bytes.

pub mod actions;
pub mod authz;
pub mod budget;
pub mod cluster;
pub mod config;
pub mod downstream;
pub mod forward;
pub mod http;
pub mod metrics;
pub mod proxy;
pub mod reply;
pub mod routes;
pub mod trace;
pub mod upstream;
pub mod xds;

use std::sync::Arc;

use mesh_core::certs::{CertManager, Issuer};
use mesh_core::drain::{Drain, DrainOutcome, DrainWatch};
use mesh_core::hbone::Pool;
use mesh_core::workload::state::StateStore;
use mesh_primitives::identity::Identity;
use prometheus_client::registry::Registry;

use crate::cluster::Clusters;
use crate::config::Config;
use crate::xds::L7Store;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Control(#[from] mesh_core::control::ControlError),
    #[error(transparent)]
    Listen(#[from] mesh_core::admin::ListenError),
    #[error("tracing.address: {0}")]
    Tracing(tonic::transport::Error),
}

/// What every connection and request shares.
pub struct Ctx {
    pub cfg: Arc<Config>,
    pub identity: Identity,
    pub state: StateStore,
    pub l7: L7Store,
    pub certs: CertManager,
    pub pool: Pool,
    pub clusters: Clusters,
    pub metrics: metrics::Metrics,
    pub drain: DrainWatch,
    /// Set when `tracing` is configured.
    pub tracer: Option<trace::Tracer>,
}

impl Ctx {
    /// Opens upstream connections as this waypoint.
    pub fn dialer(&self) -> upstream::Dialer<'_> {
        upstream::Dialer {
            identity: &self.identity,
            trust_domain: &self.cfg.trust_domain,
            certs: &self.certs,
            pool: &self.pool,
            connect_timeout: self.cfg.pool.connect_timeout,
        }
    }
}

/// How the waypoint introduces itself over xDS (Istio's node id shape for a waypoint).
fn xds_node(cfg: &Config) -> mesh_proto::envoy::config::core::v3::Node {
    mesh_proto::envoy::config::core::v3::Node {
        id: mesh_primitives::names::xds_node_id("waypoint", &cfg.name, &cfg.namespace),
        ..Default::default()
    }
}

pub struct Waypoint {
    drain: Drain,
    cfg: Arc<Config>,
    pub ctx: Arc<Ctx>,
}

impl Waypoint {
    pub async fn start(cfg: Config) -> Result<Self, StartError> {
        let cfg = Arc::new(cfg);
        let cp = cfg
            .control_plane
            .clone()
            .expect("validated: a waypoint has a control plane");
        let mut registry = Registry::default();
        mesh_core::metrics::register_build(&mut registry, "proxy");
        let metrics = metrics::Metrics::register(&mut registry);
        let registry = Arc::new(registry);
        let state = StateStore::default();
        let l7 = L7Store::default();
        // First, so a missing root or token file stops the start before anything retries with it.
        let issuer = Issuer::control_plane(cp.clone())?;
        tokio::spawn(mesh_core::control::run_xds(
            cp,
            xds_node(&cfg),
            xds::WaypointHandler::new(state.clone(), l7.clone()),
        ));
        let drain = Drain::new();
        // The waypoint is not in a redirected pod network: plain sockets.
        let sockets: mesh_core::hbone::SocketFactory = Arc::new(mesh_core::socket::tcp_socket);
        let ctx = Arc::new(Ctx {
            identity: cfg.identity(),
            state,
            l7,
            certs: CertManager::new(issuer, cfg.certificate_ttl),
            pool: Pool::new(
                cfg.pool.clone(),
                cfg.h2.clone(),
                sockets,
                metrics.hbone.clone(),
            ),
            clusters: Clusters::default(),
            metrics,
            drain: drain.watch(),
            tracer: cfg
                .tracing
                .as_ref()
                .map(|t| trace::Tracer::start(t, format!("{}.{}", cfg.name, cfg.namespace)))
                .transpose()
                .map_err(StartError::Tracing)?,
            cfg: cfg.clone(),
        });
        let hbone = mesh_core::admin::bind("HBONE", "hboneAddr", cfg.hbone_addr).await?;
        tokio::spawn(proxy::serve(ctx.clone(), hbone));
        // Circuit-breaker and outlier gauges, from the clusters' own counts.
        let c = ctx.clone();
        tokio::spawn(async move {
            while !c.drain.is_stopping() {
                for cluster in c.clusters.all() {
                    let label = metrics::ClusterMetrics::label(&cluster);
                    let m = &c.metrics.clusters;
                    m.rq_active.get_or_create(&label).set(
                        cluster
                            .active_requests
                            .load(std::sync::atomic::Ordering::Relaxed)
                            as i64,
                    );
                    m.ejections_active
                        .get_or_create(&label)
                        .set(cluster.ejected().len() as i64);
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
        // Fetched ahead of the first connection, renewed at half-life.
        let c = ctx.clone();
        tokio::spawn(async move {
            while !c.drain.is_stopping() {
                if let Err(e) = c.certs.fetch(&c.identity).await {
                    tracing::warn!(identity = %c.identity, error = %e, "certificate fetch failed");
                }
                c.certs.renew_due().await;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
        let servers = [
            (
                "admin",
                "adminAddr, env ADMIN_ADDR",
                cfg.admin_addr,
                mesh_core::admin::with_logging(proxy::admin_handler(ctx.clone())),
            ),
            (
                "metrics",
                "metricsAddr, env METRICS_ADDR",
                cfg.metrics_addr,
                mesh_core::admin::metrics_handler(registry),
            ),
            (
                "readiness",
                "readinessAddr, env READINESS_ADDR",
                cfg.readiness_addr,
                mesh_core::admin::gated_readiness_handler(ctx.drain.clone(), {
                    let c = ctx.clone();
                    Arc::new(move || {
                        if !c.state.synced() {
                            Some("a first config from the control plane".to_string())
                        } else if !c.certs.has_valid(&c.identity) {
                            Some(format!("its certificate ({})", c.identity))
                        } else {
                            None
                        }
                    })
                }),
            ),
        ];
        mesh_core::admin::serve_all(servers, &drain.watch()).await?;
        tracing::info!(identity = %ctx.identity, hbone = %cfg.hbone_addr, "waypoint started");
        Ok(Self { drain, cfg, ctx })
    }

    /// Stops accepting, lets requests finish until the drain timeout, then closes them.
    pub async fn shutdown(self) -> DrainOutcome {
        let outcome = self.drain.drain(self.cfg.drain_timeout).await;
        tracing::info!(?outcome, "waypoint drained");
        outcome
    }
}
