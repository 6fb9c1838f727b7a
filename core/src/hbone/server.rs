//! HBONE server: terminates mTLS, accepts `CONNECT` streams and hands each to a [`ConnectHandler`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Response, StatusCode};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::Transport;
use tokio_rustls::TlsAcceptor;

use super::{H2Settings, H2Stream};
use crate::drain::DrainWatch;
use crate::metrics::{Direction, HboneMetrics};
use mesh_primitives::identity::Identity;

/// A `CONNECT` the server accepted for parsing; the handler decides what happens to it.
#[derive(Debug)]
pub struct InboundRequest {
    /// The original destination (`:authority`).
    pub authority: SocketAddr,
    /// The TCP peer of the HBONE connection (the calling pod or node).
    pub peer_addr: SocketAddr,
    /// The verified SPIFFE identity of the caller.
    pub peer_identity: Option<Identity>,
    pub headers: http::HeaderMap,
}

/// Why a `CONNECT` is answered with something other than `200`.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
}

/// Answers one `CONNECT`: [`Responder::accept`] turns it into a byte stream, [`Responder::refuse`] ends it.
pub struct Responder {
    send: SendResponse<Bytes>,
    recv: RecvStream,
}

impl Responder {
    pub fn accept(mut self) -> Result<H2Stream, h2::Error> {
        let resp = Response::builder()
            .status(StatusCode::OK)
            .body(())
            .expect("static response is valid");
        let send = self.send.send_response(resp, false)?;
        Ok(H2Stream::new(send, self.recv, None))
    }

    pub fn refuse(mut self, status: StatusCode) {
        let resp = Response::builder()
            .status(status)
            .body(())
            .expect("static response is valid");
        let _ = self.send.send_response(resp, true);
    }
}

pub trait ConnectHandler: Send + Sync + 'static {
    fn handle(&self, req: InboundRequest, respond: Responder) -> impl Future<Output = ()> + Send;
}

/// Completes the TLS handshake, counting and logging a failure with the peer address and reason.
pub async fn accept_tls(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    metrics: &HboneMetrics,
) -> Option<TlsStream<Transport>> {
    let tcp = super::transport(tcp);
    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(mut tls)) => {
            metrics.connection_opened(Direction::inbound);
            tls.get_mut()
                .1
                .set_buffer_limit(Some(super::TLS_SEND_BUFFER));
            Some(tls)
        }
        Ok(Err(e)) => {
            let reason = metrics.handshake_failed(Direction::inbound, &e);
            tracing::warn!(%peer, ?reason, error = %e, "HBONE TLS handshake failed");
            None
        }
        Err(_) => {
            let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out");
            metrics.handshake_failed(Direction::inbound, &e);
            tracing::warn!(%peer, "HBONE TLS handshake timed out");
            None
        }
    }
}

/// Serves HBONE on an established TLS connection until the peer leaves or the drain closes it (GOAWAY first).
pub async fn serve_connection<H: ConnectHandler>(
    tls: TlsStream<Transport>,
    peer_addr: SocketAddr,
    settings: &H2Settings,
    handler: Arc<H>,
    drain: DrainWatch,
) {
    let peer_identity = crate::tls::peer_identity(tls.get_ref().1);
    let mut conn = match h2::server::Builder::new()
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(settings.max_frame_size)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .handshake::<_, Bytes>(tls)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer_addr, error = %e, "HBONE h2 handshake failed");
            return;
        }
    };
    let mut goaway_sent = false;
    loop {
        let next = tokio::select! {
            _ = drain.stopping(), if !goaway_sent => {
                conn.graceful_shutdown();
                goaway_sent = true;
                continue;
            }
            next = conn.accept() => next,
        };
        let (req, send) = match next {
            None => return,
            Some(Err(e)) => {
                tracing::debug!(%peer_addr, error = %e, "HBONE connection ended");
                return;
            }
            Some(Ok(pair)) => pair,
        };
        let (parts, recv) = req.into_parts();
        let respond = Responder { send, recv };
        if parts.method != Method::CONNECT {
            respond.refuse(StatusCode::METHOD_NOT_ALLOWED);
            continue;
        }
        let authority = parts
            .uri
            .authority()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok());
        let Some(authority) = authority else {
            tracing::info!(%peer_addr, uri = %parts.uri, "HBONE CONNECT with bad authority");
            respond.refuse(StatusCode::BAD_REQUEST);
            continue;
        };
        let req = InboundRequest {
            authority,
            peer_addr,
            peer_identity: peer_identity.clone(),
            headers: parts.headers,
        };
        let handler = handler.clone();
        drain.spawn(async move { handler.handle(req, respond).await });
    }
}
