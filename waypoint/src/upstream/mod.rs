//! Upstream connections: how the waypoint reaches an endpoint ([`Dialer`]: HBONE as its own identity, or plain
//! TCP to a workload outside the mesh), and the connections each cluster keeps ([`h1::H1Pool`], [`h2::H2Conns`]).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use mesh_core::certs::{CertError, CertManager};
use mesh_core::hbone::{new_traceparent, ConnectRequest, HboneError, Pool, PoolKey};
use mesh_core::workload::state::{TunnelProtocol, Workload};
use mesh_primitives::identity::Identity;
use tokio::io::{AsyncRead, AsyncWrite};

pub mod h1;
pub mod h2;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// A byte stream to a host: an HBONE tunnel or a TCP connection.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Why an upstream connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("TCP connect to {0}: {1}")]
    Tcp(SocketAddr, std::io::Error),
    #[error("no certificate for {0}: {1}")]
    Certificate(Identity, CertError),
    #[error("HBONE to {0}: {1}")]
    Tunnel(SocketAddr, HboneError),
    #[error("connect to {0} timed out after {1:?}")]
    Timeout(SocketAddr, Duration),
}

/// What opening an upstream connection needs: the waypoint's identity, its certificates and HBONE pool.
pub struct Dialer<'a> {
    pub identity: &'a Identity,
    pub trust_domain: &'a str,
    pub certs: &'a CertManager,
    pub pool: &'a Pool,
    /// When the destination's policy sets no `connectTimeout`.
    pub connect_timeout: Duration,
}

impl Dialer<'_> {
    /// Opens a byte stream to `w:port` for a request from `client`: HBONE as the waypoint's identity when `w` is
    /// in the mesh (the client's address travels in `Forwarded`), else plain TCP.
    pub async fn dial(
        &self,
        client: SocketAddr,
        w: &Workload,
        port: u16,
        connect_timeout: Option<Duration>,
    ) -> Result<Box<dyn Io>, DialError> {
        let limit = connect_timeout.unwrap_or(self.connect_timeout);
        let addr = SocketAddr::new(w.ip, port);
        let dialed = async {
            if w.protocol == TunnelProtocol::None {
                let s = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| DialError::Tcp(addr, e))?;
                let _ = s.set_nodelay(true);
                return Ok(Box::new(s) as Box<dyn Io>);
            }
            let (cert, _) = self
                .certs
                .fetch(self.identity)
                .await
                .map_err(|e| DialError::Certificate(self.identity.clone(), e))?;
            let key = PoolKey {
                src: self.identity.clone(),
                dst: w.identity(self.trust_domain),
                dst_addr: SocketAddr::new(w.ip, mesh_core::HBONE_PORT),
            };
            let req = ConnectRequest {
                authority: addr,
                forwarded_for: client,
                baggage: None,
                traceparent: Some(new_traceparent()),
            };
            let s = self
                .pool
                .connect(key, &cert, req)
                .await
                .map_err(|e| DialError::Tunnel(addr, e))?;
            Ok(Box::new(s) as Box<dyn Io>)
        };
        tokio::time::timeout(limit, dialed)
            .await
            .map_err(|_| DialError::Timeout(addr, limit))?
    }
}

impl DialError {
    /// The reason alone, without addresses or identities: what a client may see in a 503 body (the full error is
    /// logged).
    pub fn reason(&self) -> String {
        match self {
            Self::Tcp(_, e) => e.to_string(),
            Self::Certificate(..) => "no certificate".into(),
            Self::Tunnel(_, e) => e.to_string(),
            Self::Timeout(..) => "connect timeout".into(),
        }
    }
}

impl ConnectError {
    /// See [`DialError::reason`].
    pub fn reason(&self) -> String {
        match self {
            Self::Dial(e) => e.reason(),
            Self::Handshake(e) => e.to_string(),
        }
    }
}

/// Why an upstream HTTP connection could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("HTTP handshake: {0}")]
    Handshake(#[from] hyper::Error),
}
