//! Inbound HBONE (15008, inside the destination pod's namespace): terminate mTLS, check the `:authority` names
//! this pod, connect to the app from inside the pod.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use mesh_core::hbone::{
    accept_tls, serve_connection, ConnectHandler, InboundRequest, PeerMetadata, Responder,
};
use tokio::net::TcpStream;
use tracing::Instrument;

use mesh_core::workload::authz::ConnInfo;
use mesh_core::workload::state::Workload;

use super::{authz, pipe_until, Ends, Pod, ProxyCtx};
use crate::metrics::Transport;
use mesh_core::metrics::{Reporter, ResponseFlags, SecurityPolicy};

pub struct Handler {
    pub ctx: Arc<ProxyCtx>,
    pub pod: Arc<Pod>,
}

/// Accepts one HBONE TCP connection on behalf of `pod`.
pub async fn serve(
    ctx: Arc<ProxyCtx>,
    pod: Arc<Pod>,
    handler: Arc<Handler>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let snap = ctx.state.load();
    let Some(w) = pod.ips.iter().find_map(|ip| snap.workload(ip)) else {
        tracing::warn!(pod = %pod.name, %peer, "HBONE for a pod with no workload entry; closing");
        return;
    };
    let id = w.identity(&ctx.cfg.trust_domain);
    let server_config = match ctx.certs.fetch(&id).await {
        Ok((_, cfg)) => cfg,
        Err(e) => {
            tracing::error!(error = %e, "no certificate to serve HBONE; closing");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
    let Some(tls) = accept_tls(&acceptor, tcp, peer, &ctx.metrics.hbone).await else {
        return;
    };
    serve_connection(tls, peer, &ctx.cfg.h2, handler, ctx.drain.clone()).await;
}

impl ConnectHandler for Handler {
    async fn handle(&self, req: InboundRequest, respond: Responder) {
        let span = tracing::info_span!("inbound", pod = %self.pod.name, peer = %req.peer_addr, dst = %req.authority);
        self.handle_inner(req, respond).instrument(span).await
    }
}

impl Handler {
    async fn handle_inner(&self, req: InboundRequest, respond: Responder) {
        let opened = std::time::Instant::now();
        let (ctx, pod) = (&self.ctx, &self.pod);
        if !pod.ips.contains(&req.authority.ip()) {
            tracing::info!("CONNECT names an address that is not this pod; 400");
            respond.refuse(StatusCode::BAD_REQUEST);
            return;
        }
        let snap = ctx.state.load();
        let td = &ctx.cfg.trust_domain;
        let dst = snap.workload(&req.authority.ip()).cloned();
        let meta = req
            .headers
            .get("baggage")
            .and_then(|v| v.to_str().ok())
            .map(PeerMetadata::from_baggage);
        let src_addr = req
            .headers
            .get("forwarded")
            .and_then(|v| v.to_str().ok())
            .and_then(mesh_core::hbone::parse_forwarded_for);
        // The source is whoever the mTLS peer is: the workload named by `Forwarded` when that is the peer,
        // else the peer itself (a waypoint forwarding for the original client, as Istio reports it).
        let peer_is = |w: &Workload| req.peer_identity.as_ref() == Some(&w.identity(td));
        let src = src_addr
            .and_then(|a| snap.workload(&a.ip()).cloned())
            .filter(|w| peer_is(w))
            .or_else(|| {
                snap.workload(&req.peer_addr.ip())
                    .cloned()
                    .filter(|w| peer_is(w))
            });
        let svc = dst.as_deref().and_then(|d| snap.service_of(d));
        let ends = Ends {
            reporter: Reporter::destination,
            src: src.as_deref(),
            src_principal: req.peer_identity.as_ref().map(ToString::to_string),
            dst: dst.as_deref(),
            service: svc.as_deref(),
            security: SecurityPolicy::mutual_tls,
        };
        let mut labels = ends.labels(td, ResponseFlags::None);
        if let (None, Some(m)) = (&src, meta) {
            labels.source_workload = m.workload;
            labels.source_workload_namespace = m.namespace;
        }
        // Policy sees the connection's own source, unless the peer is a waypoint forwarding for its client (as
        // Istio trusts its waypoints): a `Forwarded` header from anyone else is the caller's claim, not a fact.
        let trusted_forward = req
            .peer_identity
            .as_ref()
            .is_some_and(|id| snap.is_waypoint(id));
        let info = ConnInfo {
            principal: req.peer_identity.clone(),
            src_ip: src_addr
                .filter(|_| trusted_forward)
                .map_or(req.peer_addr.ip(), |a| a.ip()),
            dst_ip: req.authority.ip(),
            dst_port: req.authority.port(),
        };
        if !authz::admit(&ctx.state, &ctx.metrics, &info, Transport::hbone) {
            // Istio's ztunnel answers a denied CONNECT with 401.
            respond.refuse(StatusCode::UNAUTHORIZED);
            return;
        }
        let registered = ctx.conns.register(info, Transport::hbone);
        ctx.metrics.tcp.opened.get_or_create(&labels).inc();
        let mut app = match Box::pin(pod.connect(req.authority, ctx.cfg.pool.connect_timeout)).await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(error = %e, "app unreachable; 503");
                respond.refuse(StatusCode::SERVICE_UNAVAILABLE);
                labels.response_flags = ResponseFlags::UF;
                ctx.metrics.tcp.record(&labels, 0, 0, opened);
                return;
            }
        };
        let mut tunnel = match respond.accept() {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %e, "tunnel closed before 200 was sent");
                return;
            }
        };
        // The request's headers are not needed while the connection lasts.
        drop(req.headers);
        let (rx, tx) = pipe_until(ctx, &mut tunnel, &mut app, &registered.stop).await;
        ctx.metrics.tcp.record(&labels, rx, tx, opened);
    }
}
