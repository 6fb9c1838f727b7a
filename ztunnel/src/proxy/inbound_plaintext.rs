//! Inbound plaintext (15006): TCP arriving at the pod without HBONE, redirected by iptables.
//! Accepted while the pod's policy is PERMISSIVE (the default until PeerAuthentication is enforced).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::Instrument;

use super::{relay, Ends, Pod, ProxyCtx};
use crate::metrics::{Reporter, ResponseFlags, SecurityPolicy};

pub async fn handle(ctx: Arc<ProxyCtx>, pod: Arc<Pod>, mut client: TcpStream, peer: SocketAddr) {
    let dst = match mesh_core::socket::original_dst(&client) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(pod = %pod.name, %peer, error = %e, "inbound connection without original destination; closing");
            return;
        }
    };
    if pod.is_own_port(&dst) || !pod.ips.contains(&dst.ip()) {
        tracing::warn!(pod = %pod.name, %peer, %dst, "plaintext inbound not addressed to this pod's app; closing");
        return;
    }
    let span = tracing::info_span!("inbound_plaintext", pod = %pod.name, src = %peer, dst = %dst);
    async move {
        let snap = ctx.state.load();
        let src = snap.workload(&peer.ip()).cloned();
        let dstw = snap.workload(&dst.ip()).cloned();
        let svc = dstw.as_deref().and_then(|d| snap.service_of(d));
        let ends = Ends {
            reporter: Reporter::destination,
            src: src.as_deref(),
            src_principal: Some("unknown".into()),
            dst: dstw.as_deref(),
            service: svc.as_deref(),
            security: SecurityPolicy::none,
        };
        let td = &ctx.cfg.trust_domain;
        ctx.metrics
            .opened
            .get_or_create(&ends.labels(td, ResponseFlags::None))
            .inc();
        let app = pod.connect(dst, ctx.cfg.pool.connect_timeout).await;
        let (flags, rx, tx) = relay(&ctx, &mut client, app).await;
        ctx.metrics.record(&ends.labels(td, flags), rx, tx);
    }
    .instrument(span)
    .await
}
