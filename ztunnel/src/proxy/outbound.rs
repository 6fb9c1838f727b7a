//! Outbound: the pod's own connection, redirected to 15001; sent over HBONE when the destination is in the mesh.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_core::hbone::{new_traceparent, ConnectRequest, PeerMetadata, PoolKey};
use tokio::net::TcpStream;
use tracing::Instrument;

use super::{relay, Ends, Pod, ProxyCtx};
use mesh_core::metrics::{Reporter, ResponseFlags, SecurityPolicy};
use mesh_core::workload::state::{Snapshot, TunnelProtocol, Upstream};

/// A connection accepted on 15001: where it was going is the original destination of the redirect.
pub async fn handle(ctx: Arc<ProxyCtx>, pod: Arc<Pod>, client: TcpStream, peer: SocketAddr) {
    let dst = match mesh_core::socket::original_dst(&client) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(pod = %pod.name, %peer, error = %e, "outbound connection without original destination; closing");
            return;
        }
    };
    forward(ctx, pod, client, peer, dst).await
}

/// Carries the pod's connection from `peer` to `dst`: over HBONE to a mesh workload (or its service's
/// waypoint), as plain TCP to anything else.
pub async fn forward(
    ctx: Arc<ProxyCtx>,
    pod: Arc<Pod>,
    mut client: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
) {
    if pod.is_own_port(&dst) {
        tracing::warn!(pod = %pod.name, %peer, %dst, "connection to ztunnel's own port refused (loop)");
        return;
    }
    let span = tracing::info_span!("outbound", pod = %pod.name, src = %peer, dst = %dst);
    async move {
        let snap = ctx.state.load();
        let td = &ctx.cfg.trust_domain;
        let src = snap.workload(&peer.ip()).cloned();
        let opened = std::time::Instant::now();
        // A waypoint-bound service is reached through its waypoint, which sees the service address as authority.
        let (up, authority, hbone_addr) = match waypoint_of(&snap, dst, peer) {
            Some(Some(wp)) => {
                let addr = wp.addr;
                (wp, dst, addr)
            }
            Some(None) => {
                tracing::warn!("the service's waypoint is not a known workload; closing");
                return;
            }
            None => match snap.resolve(dst) {
                Some(up) => {
                    let (authority, hbone) = (
                        up.addr,
                        SocketAddr::new(up.workload.ip, mesh_core::HBONE_PORT),
                    );
                    (up, authority, hbone)
                }
                None => {
                    Box::pin(passthrough(&ctx, &pod, &mut client, dst)).await;
                    return;
                }
            },
        };
        let mut ends = Ends {
            reporter: Reporter::source,
            src: src.as_deref(),
            src_principal: None,
            dst: Some(&up.workload),
            service: up.service.as_deref(),
            security: SecurityPolicy::none,
        };
        if up.workload.protocol == TunnelProtocol::None {
            ctx.metrics
                .tcp
                .opened
                .get_or_create(&ends.labels(td, ResponseFlags::None))
                .inc();
            let upstream = Box::pin(pod.connect(up.addr, ctx.cfg.pool.connect_timeout)).await;
            let (flags, rx, tx) = relay(&ctx, &mut client, upstream).await;
            ctx.metrics
                .tcp
                .record(&ends.labels(td, flags), rx, tx, opened);
            return;
        }
        let Some(src) = src.as_deref() else {
            tracing::warn!(
                "source pod is not a known workload; cannot choose its identity, closing"
            );
            return;
        };
        ends.security = SecurityPolicy::mutual_tls;
        ctx.metrics
            .tcp
            .opened
            .get_or_create(&ends.labels(td, ResponseFlags::None))
            .inc();
        // Heap state used only to open the tunnel (certificate chain, headers) is gone before the relay starts: a
        // connection then holds little more than its sockets while it lasts.
        let src_id = src.identity(td);
        let cert = match Box::pin(ctx.certs.fetch(&src_id)).await {
            Ok((cert, _)) => cert,
            Err(e) => {
                tracing::error!(error = %e, "no certificate for the source pod; closing");
                ctx.metrics
                    .tcp
                    .record(&ends.labels(td, ResponseFlags::UF), 0, 0, opened);
                return;
            }
        };
        let key = PoolKey {
            src: src_id,
            dst: up.workload.identity(td),
            dst_addr: hbone_addr,
        };
        let meta = PeerMetadata {
            namespace: src.namespace.clone(),
            workload: src.name.clone(),
            service: snap
                .service_of(src)
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            version: src.labels.get("version").cloned().unwrap_or_default(),
        };
        let req = ConnectRequest {
            authority,
            forwarded_for: peer,
            baggage: Some(meta.baggage()),
            traceparent: Some(new_traceparent()),
        };
        // Boxed: the dial's large state (TLS and HTTP/2 handshakes) is freed once the tunnel is open instead of
        // sizing every connection's task for as long as it lives.
        let tunnel = Box::pin(pod.pool.connect(key, &cert, req)).await;
        drop((cert, meta));
        let (flags, rx, tx) = relay(&ctx, &mut client, tunnel).await;
        tracing::debug!(
            bytes_out = rx,
            bytes_in = tx,
            elapsed_ms = opened.elapsed().as_millis() as u64,
            "closed"
        );
        ctx.metrics
            .tcp
            .record(&ends.labels(td, flags), rx, tx, opened);
    }
    .instrument(span)
    .await
}

/// `None` when `dst` is not a waypoint-bound service (or the caller is that waypoint itself); else the waypoint
/// as an upstream whose `addr` is its HBONE address, or `Some(None)` when the waypoint cannot be resolved.
fn waypoint_of(snap: &Snapshot, dst: SocketAddr, peer: SocketAddr) -> Option<Option<Upstream>> {
    let (svc, _) = snap.service_by_vip(&dst.ip())?;
    let wp = svc.waypoint?;
    // Only the service's own ports exist on its VIP.
    if !svc.ports.iter().any(|p| p.port == dst.port()) {
        return None;
    }
    if wp.ip() == peer.ip() {
        return None;
    }
    // Named by a workload IP, or by the VIP of the waypoint's own Service (then balanced over its pods).
    Some(snap.resolve(wp).map(|mut up| {
        if up.service.is_none() {
            up.addr = wp;
        }
        up.service = Some(svc.clone());
        up
    }))
}

/// A destination outside the mesh: plain TCP from the pod's own address.
async fn passthrough(ctx: &ProxyCtx, pod: &Pod, client: &mut TcpStream, dst: SocketAddr) {
    let upstream = pod.connect(dst, ctx.cfg.pool.connect_timeout).await;
    let (_, rx, tx) = relay(ctx, client, upstream).await;
    tracing::debug!(bytes_out = rx, bytes_in = tx, "passthrough closed");
}
