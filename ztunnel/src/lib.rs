//! ztunnel: the per-node L4 proxy of the ambient mesh.
//!
//! One process serves every enrolled pod of its node. For each pod it opens listeners inside the pod's network
//! namespace ([`proxy`]); the node agent ([`cni`]) redirects the pod's TCP to them with iptables. State comes from
//! a local file ([`state`]) and certificates from the development CA ([`identity`]).

pub mod admin;
pub mod cni;
pub mod config;
pub mod identity;
pub mod inpod;
pub mod metrics;
pub mod proxy;
pub mod state;

use std::sync::Arc;

use mesh_core::ca::CertificateAuthority;
use mesh_core::drain::{Drain, DrainOutcome};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, UnixListener};

use crate::config::Config;
use crate::inpod::Pods;
use crate::proxy::ProxyCtx;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("development CA: {0}")]
    Ca(#[from] mesh_core::ca::CaError),
    #[error("cannot listen on {what} {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
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
        let metrics = metrics::Metrics::register(&mut registry);
        let registry = Arc::new(registry);

        let ca_dir = cfg.dev_ca_dir.clone().expect("validated: devCaDir is set");
        let ca = CertificateAuthority::load_or_create(&ca_dir, &cfg.trust_domain)?;
        let state_file = cfg
            .local_state_file
            .clone()
            .expect("validated: localStateFile is set");
        let store = state::StateStore::default();
        store.store(state::read_file(&state_file)?);
        tokio::spawn(state::watch_file(
            state_file,
            store.clone(),
            cfg.state_poll_interval,
        ));

        let drain = Drain::new();
        let ctx = Arc::new(ProxyCtx {
            cfg: cfg.clone(),
            state: store,
            certs: Arc::new(identity::CertManager::new(ca, cfg.certificate_ttl)),
            metrics,
            drain: drain.watch(),
        });
        let pods = Arc::new(Pods::new(ctx.clone()));
        for e in pods.reconcile() {
            tracing::error!(error = %e, "pod not enrolled at start");
        }
        let sock_path = cfg.socket_path();
        let _ = std::fs::remove_file(&sock_path);
        let sock = UnixListener::bind(&sock_path).map_err(|source| StartError::Listen {
            what: "node agent socket",
            addr: sock_path.display().to_string(),
            source,
        })?;
        tokio::spawn(pods.clone().serve_socket(sock));
        // Records written while ztunnel was down, or without a nudge, are picked up here.
        let periodic = pods.clone();
        let w = drain.watch();
        tokio::spawn(async move {
            while !w.is_stopping() {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                periodic.reconcile();
            }
        });

        let servers = [
            (
                "admin",
                cfg.admin_addr,
                admin::admin_handler(ctx.clone(), pods.clone()),
            ),
            (
                "metrics",
                cfg.metrics_addr,
                admin::metrics_handler(registry),
            ),
            (
                "readiness",
                cfg.readiness_addr,
                admin::readiness_handler(ctx.clone()),
            ),
        ];
        for (what, addr, handler) in servers {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Listen {
                    what,
                    addr: addr.to_string(),
                    source,
                })?;
            tokio::spawn(mesh_core::admin::serve(l, handler, drain.watch()));
        }
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
