//! The node-level ports: admin (`/config_dump`, `/healthz`), readiness (`/healthz/ready`) and metrics (`/metrics`).

use std::sync::Arc;

use http::StatusCode;
use mesh_core::admin::{json, text, Handler};

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
                "authorizationPolicies": ctx.state.policies().keys(),
                "pods": pods.dump(),
                "certificates": ctx.certs.dump(),
                "activeConnections": ctx.drain.active(),
            }))
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => text(StatusCode::NOT_FOUND, "try /config_dump or /healthz\n"),
    })
}
