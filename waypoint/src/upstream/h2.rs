//! HTTP/2 connections of one cluster: one per host, multiplexed, each carried by its own HBONE stream.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::{Body, Io};

#[derive(Clone, Default)]
pub struct H2Conns(Arc<Mutex<HashMap<IpAddr, http2::SendRequest<Body>>>>);

impl H2Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, http2::SendRequest<Body>>> {
        self.0.lock().expect("HTTP/2 connections lock")
    }

    /// The HTTP/2 connection to `host`, if one is open.
    pub fn get(&self, host: IpAddr) -> Option<http2::SendRequest<Body>> {
        let mut conns = self.lock();
        match conns.get(&host) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                conns.remove(&host);
                None
            }
            None => None,
        }
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.lock().values().filter(|s| !s.is_closed()).count()
    }

    /// Speaks HTTP/2 on `io` and keeps the connection for later requests to `host`.
    pub async fn handshake(
        &self,
        host: IpAddr,
        io: Box<dyn Io>,
    ) -> Result<http2::SendRequest<Body>, hyper::Error> {
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(16 * 1024 * 1024)
            .handshake(TokioIo::new(io))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        self.lock().insert(host, send.clone());
        Ok(send)
    }
}
