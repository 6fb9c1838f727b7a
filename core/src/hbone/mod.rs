//! HBONE: one HTTP/2 `CONNECT` stream per proxied TCP connection, over mutual TLS, port 15008.
//!
//! `:authority` is the original destination `ip:port`. `200` makes the stream a byte pipe both ways
//! ([`H2Stream`]); `400` bad authority, `401` denied, `503` upstream unreachable.

mod client;
mod server;
mod stream;

use std::net::SocketAddr;
use std::time::Duration;

pub use client::{ConnectRequest, Pool, PoolKey, PoolSettings, SocketFactory};
pub use server::{
    accept_tls, serve_connection, ConnectHandler, InboundRequest, Refusal, Responder,
};
pub use stream::H2Stream;

use mesh_primitives::identity::Identity;

use crate::buffers::Batched;

/// The TCP side of an HBONE connection, under TLS: read in batches of [`READ_BATCH`] bytes, so one `recvfrom`
/// brings in many TLS records (rustls on its own reads about one record per call).
pub type Transport = Batched<tokio::net::TcpStream>;

/// Bytes one read of an HBONE connection's socket may bring in.
pub const READ_BATCH: usize = 256 * 1024;

/// Plaintext rustls may hold encrypted and unsent per connection (its default is 64 KiB): more per `writev`.
pub const TLS_SEND_BUFFER: usize = 512 * 1024;

fn transport(tcp: tokio::net::TcpStream) -> Transport {
    Batched::new(tcp, READ_BATCH)
}

/// HTTP/2 sizing for throughput: a few MiB per stream, more per connection, large frames.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct H2Settings {
    pub stream_window: u32,
    pub connection_window: u32,
    pub max_frame_size: u32,
    pub max_concurrent_streams: u32,
    #[serde(with = "mesh_primitives::duration")]
    pub keepalive_interval: Duration,
    #[serde(with = "mesh_primitives::duration")]
    pub keepalive_timeout: Duration,
}

impl Default for H2Settings {
    fn default() -> Self {
        Self {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_frame_size: 1024 * 1024,
            max_concurrent_streams: 100,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("TCP connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP/2 with {addr} failed: {source}")]
    H2 { addr: SocketAddr, source: h2::Error },
    #[error("CONNECT {authority} via {addr} answered {status}")]
    Status {
        addr: SocketAddr,
        authority: SocketAddr,
        status: http::StatusCode,
    },
    #[error("TLS client config: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("HBONE connection to {addr} closed while connecting")]
    Closed { addr: SocketAddr },
}

/// `forwarded: for="<ip:port>"` (RFC 7239: IPv6 in brackets, quoted because of the colon).
pub fn forwarded_for(addr: SocketAddr) -> String {
    format!("for=\"{addr}\"")
}

/// Reads the client address back from a `forwarded` header.
pub fn parse_forwarded_for(value: &str) -> Option<SocketAddr> {
    value.split(';').find_map(|part| {
        let v = part.trim().strip_prefix("for=")?;
        v.trim_matches('"').parse().ok()
    })
}

/// Who is calling, for the `baggage` header (W3C baggage, keys as Istio's ztunnel writes them).
#[derive(Clone, Debug, Default)]
pub struct PeerMetadata {
    pub namespace: String,
    pub workload: String,
    pub service: String,
    pub version: String,
}

impl PeerMetadata {
    pub fn baggage(&self) -> String {
        format!(
            "k8s.namespace.name={},k8s.deployment.name={},service.name={},service.version={}",
            self.namespace, self.workload, self.service, self.version
        )
    }

    pub fn from_baggage(value: &str) -> Self {
        let mut out = Self::default();
        for kv in value.split(',') {
            if let Some((k, v)) = kv.trim().split_once('=') {
                let v = v.to_string();
                match k {
                    "k8s.namespace.name" => out.namespace = v,
                    "k8s.deployment.name" | "k8s.pod.name" => out.workload = v,
                    "service.name" => out.service = v,
                    "service.version" => out.version = v,
                    _ => {}
                }
            }
        }
        out
    }
}

/// A fresh W3C `traceparent` (version 00, sampled).
pub fn new_traceparent() -> String {
    let trace: u128 = rand::random::<u128>().max(1);
    let span: u64 = rand::random::<u64>().max(1);
    format!("00-{trace:032x}-{span:016x}-01")
}

/// Identities a client accepts for a destination: normally exactly one.
pub fn expected(ids: impl IntoIterator<Item = Identity>) -> Vec<Identity> {
    ids.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_round_trips_v4_and_v6() {
        for a in ["198.18.1.2:4000", "[2001:db8::1]:80"] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(parse_forwarded_for(&forwarded_for(addr)), Some(addr));
        }
    }

    #[test]
    fn traceparent_shape() {
        let t = new_traceparent();
        let parts: Vec<&str> = t.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!((parts[1].len(), parts[2].len()), (32, 16));
    }

    #[test]
    fn baggage_round_trips() {
        let m = PeerMetadata {
            namespace: "ns".into(),
            workload: "w".into(),
            service: "s".into(),
            version: "v1".into(),
        };
        let back = PeerMetadata::from_baggage(&m.baggage());
        assert_eq!(
            (back.namespace, back.workload, back.service, back.version),
            ("ns".into(), "w".into(), "s".into(), "v1".into())
        );
    }
}
