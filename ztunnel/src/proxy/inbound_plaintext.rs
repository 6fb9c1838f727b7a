//! Inbound plaintext (15006): TCP arriving at the pod without HBONE, redirected by iptables.
//! Accepted unless policy refuses it: a STRICT PeerAuthentication arrives as a DENY of connections without a peer
//! principal, so plaintext to a STRICT pod is reset here and counted with the policy's name.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::Instrument;

use mesh_core::workload::authz::ConnInfo;

use super::{authz, pipe_until, Ends, Pod, ProxyCtx};
use crate::metrics::Transport;
use mesh_core::metrics::{Reporter, ResponseFlags, SecurityPolicy};

/// A connection accepted on 15006: its destination is the original destination of the redirect.
pub async fn handle(ctx: Arc<ProxyCtx>, pod: Arc<Pod>, client: TcpStream, peer: SocketAddr) {
    let dst = match mesh_core::socket::original_dst(&client) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(pod = %pod.name, %peer, error = %e, "inbound connection without original destination; closing");
            return;
        }
    };
    accept(ctx, pod, client, peer, dst).await
}

/// Admits plaintext from `peer` to the pod's app at `dst` unless policy refuses it.
pub async fn accept(
    ctx: Arc<ProxyCtx>,
    pod: Arc<Pod>,
    mut client: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
) {
    if pod.is_own_port(&dst) || !pod.ips.contains(&dst.ip()) {
        tracing::warn!(pod = %pod.name, %peer, %dst, "plaintext inbound not addressed to this pod's app; closing");
        return;
    }
    let span = tracing::info_span!("inbound_plaintext", pod = %pod.name, src = %peer, dst = %dst);
    async move {
        let opened = std::time::Instant::now();
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
        let info = ConnInfo {
            principal: None,
            src_ip: peer.ip(),
            dst_ip: dst.ip(),
            dst_port: dst.port(),
        };
        if !authz::admit(&ctx.state, &ctx.metrics, &info, Transport::plaintext) {
            // A reset, not a clean close: the client sees the refusal at once.
            reset_on_close(&client);
            return;
        }
        let registered = ctx.conns.register(info, Transport::plaintext);
        ctx.metrics
            .tcp
            .opened
            .get_or_create(&ends.labels(td, ResponseFlags::None))
            .inc();
        let (flags, rx, tx) = match pod.connect(dst, ctx.cfg.pool.connect_timeout).await {
            Ok(mut app) => {
                let (rx, tx) = pipe_until(&ctx, &mut client, &mut app, &registered.stop).await;
                (ResponseFlags::None, rx, tx)
            }
            Err(e) => {
                tracing::info!(error = %e, "app unreachable");
                (ResponseFlags::UF, 0, 0)
            }
        };
        if registered.stop.is_cancelled() {
            reset_on_close(&client);
        }
        ctx.metrics
            .tcp
            .record(&ends.labels(td, flags), rx, tx, opened);
    }
    .instrument(span)
    .await
}

/// Makes dropping the socket send a TCP reset (zero linger does not block).
fn reset_on_close(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
}
