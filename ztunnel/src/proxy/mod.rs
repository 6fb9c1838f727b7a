//! The data path of one enrolled pod: three listeners opened inside the pod's network namespace (or, for a pod
//! that shares ztunnel's own network, on the pod's address: see [`PodNetwork`]).
//!
//! - `15001` [`outbound`]: the pod's own outgoing TCP, redirected by iptables; carried over HBONE.
//! - `15008` [`inbound`]: HBONE from other ztunnels, terminated and connected to the app.
//! - `15006` [`inbound_plaintext`]: plaintext arriving at the pod, redirected by iptables.

pub mod authz;
pub mod inbound;
pub mod inbound_plaintext;
pub mod outbound;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_core::drain::DrainWatch;
use mesh_core::hbone::Pool;
use mesh_core::netns::NetNs;
use mesh_core::socket::{accept_backoff, accept_retrying};
use mesh_core::{HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use mesh_core::certs::CertManager;
use mesh_core::metrics::{Reporter, ResponseFlags, SecurityPolicy, TcpLabels};
use mesh_core::workload::state::{Service, StateStore, Workload};

/// What every connection of every pod shares.
pub struct ProxyCtx {
    pub cfg: Arc<Config>,
    pub state: StateStore,
    pub certs: Arc<CertManager>,
    pub metrics: Metrics,
    pub drain: DrainWatch,
    /// Open inbound connections, re-checked when policy changes.
    pub conns: authz::Connections,
}

/// Where a pod's sockets live.
pub enum PodNetwork {
    /// In-pod mode: inside the pod's own network namespace, marked so the pod's redirection rules skip them.
    Namespace(Arc<NetNs>),
    /// In ztunnel's own network, unmarked, with sockets and listeners on the pod's address `ip`: a pod that
    /// shares the node's network (no redirection), and the data-path tests on loopback, which need no root.
    Local { ip: IpAddr },
}

impl PodNetwork {
    /// A TCP socket the pod's traffic leaves from.
    pub fn socket(&self, addr: &SocketAddr) -> io::Result<tokio::net::TcpSocket> {
        match self {
            Self::Namespace(ns) => ns.run(|| mesh_core::socket::marked_tcp_socket(addr))?,
            Self::Local { ip } => {
                let s = mesh_core::socket::tcp_socket(addr)?;
                // Traffic leaves from the pod's own address, as it would from its namespace.
                if ip.is_ipv4() == addr.is_ipv4() {
                    s.bind(SocketAddr::new(*ip, 0))?;
                }
                Ok(s)
            }
        }
    }

    /// The pod's HBONE pool's socket factory.
    pub fn sockets(self: &Arc<Self>) -> mesh_core::hbone::SocketFactory {
        let net = self.clone();
        Arc::new(move |addr| net.socket(addr))
    }

    /// The three listeners: on every address inside the pod's namespace, or on the pod's own address.
    fn listeners(&self, ip: IpAddr) -> io::Result<[std::net::TcpListener; 3]> {
        let ports = [OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT];
        match self {
            Self::Namespace(ns) => ns.run(|| -> io::Result<_> {
                let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
                Ok([
                    mesh_core::socket::marked_listener(any(ports[0]), true)?,
                    mesh_core::socket::marked_listener(any(ports[1]), true)?,
                    mesh_core::socket::marked_listener(any(ports[2]), false)?,
                ])
            })?,
            Self::Local { .. } => {
                let bind = |port| -> io::Result<std::net::TcpListener> {
                    let l = std::net::TcpListener::bind(SocketAddr::new(ip, port))?;
                    l.set_nonblocking(true)?;
                    Ok(l)
                };
                Ok([bind(ports[0])?, bind(ports[1])?, bind(ports[2])?])
            }
        }
    }
}

/// An enrolled pod and the listeners ztunnel runs for it.
pub struct Pod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub ips: Vec<IpAddr>,
    pub network: Arc<PodNetwork>,
    pub pool: Pool,
    /// Cancelled when the pod is removed: its listeners close, its connections finish.
    pub stop: CancellationToken,
}

impl Pod {
    /// A socket the pod's traffic leaves from (its own address).
    pub fn socket(&self, addr: &SocketAddr) -> io::Result<tokio::net::TcpSocket> {
        self.network.socket(addr)
    }

    pub async fn connect(
        &self,
        addr: SocketAddr,
        timeout: std::time::Duration,
    ) -> io::Result<TcpStream> {
        let sock = self.socket(&addr)?;
        tokio::time::timeout(timeout, sock.connect(addr))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect to {addr} timed out"),
                )
            })?
    }

    fn is_own_port(&self, dst: &SocketAddr) -> bool {
        [OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT].contains(&dst.port())
            && (dst.ip().is_loopback() || dst.ip().is_unspecified() || self.ips.contains(&dst.ip()))
    }
}

/// Opens the pod's three listeners and serves them until the pod or ztunnel stops.
pub fn start(ctx: Arc<ProxyCtx>, pod: Arc<Pod>) -> io::Result<()> {
    let ip =
        pod.ips.first().copied().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "a pod without an address")
        })?;
    let [out, inb, hbone] = pod.network.listeners(ip)?;
    let out = TcpListener::from_std(out)?;
    let inb = TcpListener::from_std(inb)?;
    let hbone = TcpListener::from_std(hbone)?;
    {
        let (ctx, pod) = (ctx.clone(), pod.clone());
        spawn_accept(ctx.clone(), pod.clone(), out, move |s, peer| {
            outbound::handle(ctx.clone(), pod.clone(), s, peer)
        });
    }
    {
        let (ctx, pod) = (ctx.clone(), pod.clone());
        spawn_accept(ctx.clone(), pod.clone(), inb, move |s, peer| {
            inbound_plaintext::handle(ctx.clone(), pod.clone(), s, peer)
        });
    }
    let handler = Arc::new(inbound::Handler {
        ctx: ctx.clone(),
        pod: pod.clone(),
    });
    let c = ctx.clone();
    spawn_accept(ctx, pod.clone(), hbone, move |s, peer| {
        inbound::serve(c.clone(), pod.clone(), handler.clone(), s, peer)
    });
    Ok(())
}

fn spawn_accept<F, Fut>(ctx: Arc<ProxyCtx>, pod: Arc<Pod>, listener: TcpListener, on_conn: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = accept_backoff();
        loop {
            let (stream, peer) = tokio::select! {
                _ = ctx.drain.stopping() => return,
                _ = pod.stop.cancelled() => return,
                a = accept_retrying(&pod.name, &mut backoff, || listener.accept()) => a,
            };
            let _ = stream.set_nodelay(true);
            ctx.drain.spawn(on_conn(stream, peer));
        }
    });
}

/// Copies both ways until both sides are done, with half-close propagated; returns (client→server, server→client).
pub async fn pipe<A, B>(ctx: &ProxyCtx, client: &mut A, server: &mut B) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let n = ctx.cfg.copy_buffer_bytes;
    match mesh_core::relay::copy_bidirectional(client, server, n).await {
        Ok(counts) => counts,
        Err(e) => {
            tracing::debug!(error = %e, "connection ended with error");
            (0, 0)
        }
    }
}

/// Like [`pipe`], but ends (both sides closed) when `stop` is cancelled: a policy change denied the connection.
pub async fn pipe_until<A, B>(
    ctx: &ProxyCtx,
    client: &mut A,
    server: &mut B,
    stop: &CancellationToken,
) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::select! {
        counts = pipe(ctx, client, server) => counts,
        _ = stop.cancelled() => (0, 0),
    }
}

/// Pipes `client` to an upstream that may have failed to open; returns the response flags and byte counts to record.
pub async fn relay<C, S, E>(
    ctx: &ProxyCtx,
    client: &mut C,
    upstream: Result<S, E>,
) -> (ResponseFlags, u64, u64)
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    S: AsyncRead + AsyncWrite + Unpin,
    E: std::fmt::Display,
{
    match upstream {
        Ok(mut server) => {
            let (rx, tx) = pipe(ctx, client, &mut server).await;
            (ResponseFlags::None, rx, tx)
        }
        Err(e) => {
            tracing::info!(error = %e, "upstream unreachable");
            (ResponseFlags::UF, 0, 0)
        }
    }
}

/// Istio's connection labels from what is known of both ends.
pub struct Ends<'a> {
    pub reporter: Reporter,
    pub src: Option<&'a Workload>,
    pub src_principal: Option<String>,
    pub dst: Option<&'a Workload>,
    pub service: Option<&'a Service>,
    pub security: SecurityPolicy,
}

impl Ends<'_> {
    pub fn labels(&self, td: &str, flags: ResponseFlags) -> TcpLabels {
        let unknown = || "unknown".to_string();
        TcpLabels {
            reporter: self.reporter,
            source_workload: self.src.map(|w| w.name.clone()).unwrap_or_else(unknown),
            source_workload_namespace: self
                .src
                .map(|w| w.namespace.clone())
                .unwrap_or_else(unknown),
            source_principal: self
                .src_principal
                .clone()
                .or_else(|| self.src.map(|w| w.identity(td).to_string()))
                .unwrap_or_else(unknown),
            destination_workload: self.dst.map(|w| w.name.clone()).unwrap_or_else(unknown),
            destination_workload_namespace: self
                .dst
                .map(|w| w.namespace.clone())
                .unwrap_or_else(unknown),
            destination_principal: self
                .dst
                .map(|w| w.identity(td).to_string())
                .unwrap_or_else(unknown),
            destination_service: self
                .service
                .map(|s| mesh_primitives::names::hostname(&s.name, &s.namespace))
                .unwrap_or_else(unknown),
            request_protocol: "tcp",
            response_flags: flags,
            connection_security_policy: self.security,
        }
    }
}
