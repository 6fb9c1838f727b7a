//! The waypoint's HBONE listener: terminate mTLS as the waypoint's identity, accept each CONNECT whose
//! `:authority` is a service VIP, detect the protocol on the tunnel and serve HTTP (or forward opaque TCP).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::admin::{json, text, Handler};
use mesh_core::hbone::{
    accept_tls, parse_forwarded_for, serve_connection, ConnectHandler, InboundRequest, Responder,
};
use mesh_core::socket::{accept_backoff, accept_retrying};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::downstream::Downstream;
use crate::Ctx;

pub async fn serve(ctx: Arc<Ctx>, listener: TcpListener) {
    let handler = Arc::new(TunnelHandler { ctx: ctx.clone() });
    let mut backoff = accept_backoff();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = ctx.drain.stopping() => return,
            a = accept_retrying("HBONE", &mut backoff, || listener.accept()) => a,
        };
        let _ = tcp.set_nodelay(true);
        let (ctx, handler) = (ctx.clone(), handler.clone());
        ctx.drain
            .clone()
            .spawn(async move { serve_tcp(ctx, handler, tcp, peer).await });
    }
}

async fn serve_tcp(ctx: Arc<Ctx>, handler: Arc<TunnelHandler>, tcp: TcpStream, peer: SocketAddr) {
    let server = match ctx.certs.fetch(&ctx.identity).await {
        Ok((_, cfg)) => cfg,
        Err(e) => {
            tracing::error!(error = %e, "no certificate to serve HBONE; closing");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let Some(tls) = accept_tls(&acceptor, tcp, peer, &ctx.metrics.hbone).await else {
        return;
    };
    serve_connection(tls, peer, &ctx.cfg.h2, handler, ctx.drain.clone()).await;
}

struct TunnelHandler {
    ctx: Arc<Ctx>,
}

impl ConnectHandler for TunnelHandler {
    async fn handle(&self, req: InboundRequest, respond: Responder) {
        let span = tracing::info_span!("waypoint", peer = %req.peer_addr, dst = %req.authority);
        handle_tunnel(self.ctx.clone(), req, respond)
            .instrument(span)
            .await
    }
}

async fn handle_tunnel(ctx: Arc<Ctx>, req: InboundRequest, respond: Responder) {
    let snap = ctx.state.load();
    let Some((service, _)) = snap.service_by_vip(&req.authority.ip()) else {
        tracing::info!("CONNECT names no service this waypoint knows; 400");
        respond.refuse(StatusCode::BAD_REQUEST);
        return;
    };
    if !service.ports.iter().any(|p| p.port == req.authority.port()) {
        tracing::info!("CONNECT names a port the service does not have; 400");
        respond.refuse(StatusCode::BAD_REQUEST);
        return;
    }
    let client_addr = req
        .headers
        .get("forwarded")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_forwarded_for)
        .unwrap_or(req.peer_addr);
    let mut down = Downstream {
        service: service.clone(),
        port: req.authority.port(),
        peer_identity: req.peer_identity,
        client: snap.workload(&client_addr.ip()).cloned(),
        client_addr,
        h2: false,
    };
    drop(snap);
    let mut stream = match respond.accept() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "tunnel closed before it was accepted");
            return;
        }
    };
    let (proto, prefix) = detect(&mut stream, ctx.cfg.protocol_detection_timeout).await;
    let io = Rewind {
        prefix,
        inner: stream,
    };
    match proto {
        Detected::Opaque => crate::forward::tcp(&ctx, &down, io).await,
        Detected::Http1 | Detected::Http2 => {
            down.h2 = proto == Detected::Http2;
            serve_http(ctx, Arc::new(down), io).await
        }
    }
}

async fn serve_http(ctx: Arc<Ctx>, down: Arc<Downstream>, io: Rewind<mesh_core::hbone::H2Stream>) {
    let h2 = down.h2;
    let svc = service_fn(move |req| crate::http::handle(ctx.clone(), down.clone(), req));
    let io = TokioIo::new(io);
    let served = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await
    } else {
        // An `Upgrade: h2c` request is answered over HTTP/1.1, which RFC 9113 permits (it deprecates h2c
        // upgrade); HTTP/2 clients use prior knowledge, detected above.
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .with_upgrades()
            .await
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "downstream HTTP connection ended");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Opaque,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// What the first bytes say, or `None` while they could still become either.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::Http2);
    }
    for m in METHODS {
        let m = m.as_bytes();
        if buf.len() > m.len() && buf.starts_with(m) && buf[m.len()] == b' ' {
            return Some(Detected::Http1);
        }
        if buf.len() <= m.len() && m.starts_with(buf) {
            return None;
        }
    }
    Some(Detected::Opaque)
}

/// Reads until the protocol is known, the peer stops sending, or the timeout passes; returns what was read.
async fn detect<R: AsyncRead + Unpin>(
    r: &mut R,
    timeout: std::time::Duration,
) -> (Detected, Bytes) {
    let mut buf = Vec::with_capacity(64);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut chunk = [0u8; 64];
        let read = tokio::time::timeout_at(deadline, r.read(&mut chunk)).await;
        match read {
            Ok(Ok(n)) if n > 0 => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(d) = classify(&buf) {
                    return (d, buf.into());
                }
            }
            _ => return (Detected::Opaque, buf.into()),
        }
    }
}

/// A stream whose first bytes were already read: they are replayed before the rest.
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub fn admin_handler(ctx: Arc<Ctx>) -> Handler {
    Arc::new(move |req| match req.uri.path() {
        "/config_dump" => {
            let l7 = ctx.l7.load();
            let mut services: Vec<_> = l7
                .config
                .services
                .values()
                .map(|s| {
                    let mut subsets: Vec<_> = s.subsets.keys().collect();
                    subsets.sort();
                    serde_json::json!({
                        "service": s.key,
                        "sources": s.sources,
                        "routes": s.routes.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
                        "subsets": subsets,
                    })
                })
                .collect();
            services.sort_by(|a, b| a["service"].as_str().cmp(&b["service"].as_str()));
            let snap = ctx.state.load();
            json(&serde_json::json!({
                "config": &*ctx.cfg,
                "identity": ctx.identity.to_string(),
                "certificates": ctx.certs.dump(),
                "workloads": snap.source.workloads,
                "services": snap.source.services,
                "l7": {"generation": l7.generation, "services": services},
                "clusters": ctx.clusters.dump(),
            }))
        }
        _ => text(StatusCode::NOT_FOUND, "try /config_dump\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(b"\x16\x03\x01"), Some(Detected::Opaque));
        assert_eq!(classify(b"SSH-2.0"), Some(Detected::Opaque));
        assert_eq!(classify(b"GETX"), Some(Detected::Opaque));
    }
}
