//! ztunnel: the per-node L4 proxy of the ambient mesh.
//!
//! One process serves every enrolled pod of its node. For each pod it opens listeners inside the pod's network
//! namespace ([`proxy`]); the node agent (crate `mesh-cni`) redirects the pod's TCP to them with iptables and hands the pod over with ZDS ([`inpod`]). State comes from
//! a local file ([`state`]) and certificates from the development CA ([`identity`]).

pub mod admin;
pub mod config;
pub mod inpod;
pub mod metrics;
pub mod proxy;

/// Shared with the waypoint; kept under their old names so ztunnel's modules read as before.
use std::sync::Arc;

use mesh_core::ca::CertificateAuthority;
use mesh_core::certs::{CertManager, Issuer};
use mesh_core::drain::{Drain, DrainOutcome};
use mesh_core::workload::{state, xds};
use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::inpod::Pods;
use crate::proxy::ProxyCtx;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("development CA: {0}")]
    Ca(#[from] mesh_core::ca::CaError),
    #[error(transparent)]
    Control(#[from] mesh_core::control::ControlError),
    #[error(transparent)]
    Listen(#[from] mesh_core::admin::ListenError),
    #[error("starting the node agent client thread: {0}")]
    Thread(std::io::Error),
}

/// How ztunnel introduces itself over xDS (Istio's node id shape).
fn xds_node(cfg: &Config) -> mesh_proto::envoy::config::core::v3::Node {
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(
        "NODE_NAME".to_string(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(cfg.node_name.clone())),
        },
    );
    mesh_proto::envoy::config::core::v3::Node {
        id: mesh_primitives::names::xds_node_id("ztunnel", &cfg.node_name, "istio-system"),
        metadata: Some(prost_types::Struct { fields }),
        ..Default::default()
    }
}

/// What ztunnel still waits for before it can serve its node: the node agent's pods, a first workload config, and
/// a certificate for every enrolled pod the config knows.
fn readiness(pods: &Pods, ctx: &ProxyCtx, socket: &std::path::Path) -> Option<String> {
    if !pods.synced() {
        return Some(format!(
            "the node agent's pods (ZDS socket {})",
            socket.display()
        ));
    }
    if !ctx.state.synced() {
        return Some("a first workload config (control plane or local state file)".into());
    }
    let missing: Vec<String> = pods
        .identities()
        .into_iter()
        .filter(|id| !ctx.certs.has_valid(id))
        .map(|id| id.to_string())
        .collect();
    (!missing.is_empty()).then(|| format!("certificates for {}", missing.join(", ")))
}

/// A started ztunnel; [`Ztunnel::shutdown`] drains it.
pub struct Ztunnel {
    drain: Drain,
    cfg: Arc<Config>,
}

impl Ztunnel {
    pub async fn start(cfg: Config) -> Result<Self, StartError> {
        let cfg = Arc::new(cfg);
        let mut registry = Registry::default();
        mesh_core::metrics::register_build(&mut registry, "ztunnel");
        let metrics = metrics::Metrics::register(&mut registry);
        let registry = Arc::new(registry);

        let store = state::StateStore::default();
        let issuer = match (&cfg.control_plane, &cfg.dev_ca_dir) {
            (Some(cp), _) => Issuer::control_plane(cp.clone())?,
            (None, Some(dir)) => Issuer::Dev(Box::new(CertificateAuthority::load_or_create(
                dir,
                &cfg.trust_domain,
            )?)),
            (None, None) => unreachable!("validated: devCaDir or controlPlane is set"),
        };
        if let Some(file) = cfg.local_state_file.clone() {
            store.store(state::read_file(&file)?);
            tokio::spawn(state::watch_file(
                file,
                store.clone(),
                cfg.state_poll_interval,
            ));
        } else if let Some(cp) = cfg.control_plane.clone() {
            tokio::spawn(mesh_core::control::run_xds(
                cp,
                xds_node(&cfg),
                xds::WorkloadHandler::new(store.clone()),
            ));
        }

        let drain = Drain::new();
        let ctx = Arc::new(ProxyCtx {
            cfg: cfg.clone(),
            state: store,
            certs: Arc::new(CertManager::new(issuer, cfg.certificate_ttl)),
            metrics,
            drain: drain.watch(),
            conns: Default::default(),
        });
        // A new policy (or state) applies to established connections too.
        let (c, mut changes) = (ctx.clone(), ctx.state.subscribe());
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                c.conns.revalidate(&c.state, &c.metrics);
            }
        });
        let pods = Arc::new(Pods::new(ctx.clone()));
        inpod::zds::spawn(pods.clone(), cfg.socket_path(), drain.watch())
            .map_err(StartError::Thread)?;
        // Certificates of enrolled pods are fetched ahead of their first connection and renewed at half-life.
        let periodic = pods.clone();
        let (w, c) = (drain.watch(), ctx.clone());
        tokio::spawn(async move {
            while !w.is_stopping() {
                for id in periodic.identities() {
                    if let Err(e) = c.certs.fetch(&id).await {
                        tracing::warn!(identity = %id, error = %e, "certificate prefetch failed");
                    }
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
                mesh_core::admin::with_logging(admin::admin_handler(ctx.clone(), pods.clone())),
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
                    let (p, c, sock) = (pods.clone(), ctx.clone(), cfg.socket_path());
                    // A start-up gate, as Istio's: once ready, a pod joining later (its certificate a moment
                    // away) does not flip the node's ztunnel to unready.
                    let ready = std::sync::atomic::AtomicBool::new(false);
                    Arc::new(move || {
                        if ready.load(std::sync::atomic::Ordering::Acquire) {
                            return None;
                        }
                        let pending = readiness(&p, &c, &sock);
                        if pending.is_none() {
                            ready.store(true, std::sync::atomic::Ordering::Release);
                        }
                        pending
                    })
                }),
            ),
        ];
        mesh_core::admin::serve_all(servers, &drain.watch()).await?;
        tracing::info!(node = %cfg.node_name, admin = %cfg.admin_addr, "ztunnel started");
        Ok(Self { drain, cfg })
    }

    /// Stops accepting, lets connections finish until the drain timeout, then closes them.
    pub async fn shutdown(self) -> DrainOutcome {
        let outcome = self.drain.drain(self.cfg.drain_timeout).await;
        tracing::info!(?outcome, "ztunnel drained");
        outcome
    }
}
