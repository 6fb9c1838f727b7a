//! The node-level ports: admin (`/config_dump`, `/healthz`), readiness (`/healthz/ready`) and metrics (`/metrics`).

use std::sync::Arc;

use http::StatusCode;
use mesh_core::admin::{json, text, Handler};
use prometheus_client::registry::Registry;

use crate::inpod::Pods;
use crate::proxy::ProxyCtx;

pub fn admin_handler(ctx: Arc<ProxyCtx>, pods: Arc<Pods>) -> Handler {
    Arc::new(move |req| match req.uri.path() {
        "/config_dump" => {
            let snap = ctx.state.load();
            json(&serde_json::json!({
                "config": &*ctx.cfg,
                "state": &snap.source,
                "stateRejected": ctx.state.rejected(),
                "pods": pods.dump(),
                "certificates": ctx.certs.dump(),
                "activeConnections": ctx.drain.active(),
            }))
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => text(StatusCode::NOT_FOUND, "try /config_dump or /healthz\n"),
    })
}

pub fn readiness_handler(ctx: Arc<ProxyCtx>) -> Handler {
    Arc::new(move |req| match req.uri.path() {
        "/healthz/ready" if ctx.drain.is_stopping() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        "/healthz/ready" => text(StatusCode::OK, "ready\n"),
        _ => text(StatusCode::NOT_FOUND, "try /healthz/ready\n"),
    })
}

pub fn metrics_handler(registry: Arc<Registry>) -> Handler {
    Arc::new(move |req| match req.uri.path() {
        "/metrics" | "/stats/prometheus" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            mesh_core::metrics::encode(&registry),
        ),
        _ => text(StatusCode::NOT_FOUND, "try /metrics\n"),
    })
}
