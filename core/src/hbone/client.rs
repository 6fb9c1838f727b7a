//! HBONE client: a pool of mTLS HTTP/2 connections keyed by (source identity, destination identity, address).
//!
//! Streams are multiplexed up to a per-connection cap; concurrent streams spread over up to
//! `connections_per_peer` connections so that more than one core can carry them. A connection lives while it has
//! streams or was used within the idle timeout, and is kept alive by PINGs. Concurrent callers for one key share
//! one dial.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpSocket;

use super::{H2Settings, H2Stream, HboneError};
use crate::metrics::{Direction, HboneMetrics};
use crate::tls::WorkloadCert;
use mesh_primitives::identity::Identity;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PoolKey {
    pub src: Identity,
    pub dst: Identity,
    pub dst_addr: SocketAddr,
}

/// What to ask the far side for.
#[derive(Clone, Debug)]
pub struct ConnectRequest {
    pub authority: SocketAddr,
    pub forwarded_for: SocketAddr,
    pub baggage: Option<String>,
    pub traceparent: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PoolSettings {
    pub max_streams_per_connection: usize,
    /// Connections one (source, destination) pair may spread its concurrent streams over. One HTTP/2 connection
    /// is driven by one task, so one core encrypts everything on it; spreading lets parallel connections between
    /// two pods use several cores. A new stream opens another connection only while every existing one is busy
    /// and there are fewer than this many, so sequential connections keep reusing one.
    pub connections_per_peer: usize,
    #[serde(with = "mesh_primitives::duration")]
    pub idle_timeout: Duration,
    #[serde(with = "mesh_primitives::duration")]
    pub connect_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_streams_per_connection: 100,
            connections_per_peer: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .clamp(1, 8),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Creates the TCP socket for a dial (in-pod mode: inside the source pod's namespace, marked).
pub type SocketFactory = Arc<dyn Fn(&SocketAddr) -> std::io::Result<TcpSocket> + Send + Sync>;

type Dial = Shared<BoxFuture<'static, Result<(), Arc<HboneError>>>>;

#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    settings: PoolSettings,
    h2: H2Settings,
    sockets: SocketFactory,
    metrics: HboneMetrics,
    slots: Mutex<HashMap<PoolKey, Slot>>,
}

#[derive(Default)]
struct Slot {
    conns: Vec<Conn>,
    dialing: Option<Dial>,
}

#[derive(Clone)]
struct Conn {
    send: SendRequest<Bytes>,
    state: Arc<ConnState>,
    /// The leaf certificate this connection authenticated with. New streams use it only while that is still the
    /// caller's certificate: after a renewal (onto a new root, too) they handshake afresh, so the new certificate
    /// and root are what the peer sees, and connections made under a retired root age out with their streams.
    leaf: CertificateDer<'static>,
}

struct ConnState {
    active: AtomicUsize,
    alive: AtomicBool,
    last_used: Mutex<Instant>,
}

/// Decrements the connection's stream count when the stream is dropped.
struct StreamGuard(Arc<ConnState>);
impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        if let Ok(mut t) = self.0.last_used.lock() {
            *t = Instant::now();
        }
    }
}

enum Checkout {
    Ready(Conn),
    /// Wait for this dial, then check out again; `spreading`: a working connection exists.
    Wait {
        dial: Dial,
        spreading: bool,
    },
}

impl Pool {
    pub fn new(
        settings: PoolSettings,
        h2: H2Settings,
        sockets: SocketFactory,
        metrics: HboneMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                h2,
                sockets,
                metrics,
                slots: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Opens a CONNECT stream to `key.dst_addr` as `cert`'s identity, expecting the server to be `key.dst`.
    pub async fn connect(
        &self,
        key: PoolKey,
        cert: &WorkloadCert,
        req: ConnectRequest,
    ) -> Result<H2Stream, HboneError> {
        // A connection the server has sent GOAWAY on takes no new streams, and the pool learns of it only when
        // a stream is refused: that connection leaves the pool and the stream is retried on another. Bounded,
        // since a server that GOAWAYs every connection at once would otherwise be dialed forever.
        let mut goaways = 0;
        let mut spread = true;
        loop {
            match self.checkout(&key, cert, spread) {
                Checkout::Ready(conn) => {
                    let state = conn.state.clone();
                    match self.open_stream(conn, key.dst_addr, req.clone()).await {
                        Err(HboneError::H2 { source, .. })
                            if source.is_go_away() && goaways < 3 =>
                        {
                            state.alive.store(false, Ordering::Release);
                            goaways += 1;
                        }
                        other => return other,
                    }
                }
                Checkout::Wait { dial, spreading } => {
                    if let Err(e) = dial.await {
                        // A failed extra connection is no reason to fail a stream a working one can carry.
                        if !spreading {
                            return Err(shared_error(&e, key.dst_addr));
                        }
                        spread = false;
                    }
                }
            }
        }
    }

    /// Number of live pooled connections (for `/config_dump` and tests).
    pub fn connections(&self) -> usize {
        let slots = self.inner.slots.lock().expect("pool lock poisoned");
        slots
            .values()
            .flat_map(|s| &s.conns)
            .filter(|c| c.state.alive.load(Ordering::Acquire))
            .count()
    }

    /// A connection for one more stream: the least busy one that may take it, unless all are busy and another
    /// may be opened (`spread`), in which case the caller waits for that dial and checks out again.
    fn checkout(&self, key: &PoolKey, cert: &WorkloadCert, spread: bool) -> Checkout {
        let settings = &self.inner.settings;
        let mut slots = self.inner.slots.lock().expect("pool lock poisoned");
        let slot = slots.entry(key.clone()).or_default();
        slot.conns.retain(|c| c.state.alive.load(Ordering::Acquire));
        let leaf = cert.chain().first();
        let usable = slot.conns.iter().filter(|c| Some(&c.leaf) == leaf);
        let count = usable.clone().count();
        let best = usable
            .map(|c| (c.state.active.load(Ordering::Acquire), c))
            .filter(|(n, _)| *n < settings.max_streams_per_connection)
            .min_by_key(|(n, _)| *n);
        let may_open = spread && count < settings.connections_per_peer.max(1);
        if let Some((active, c)) = best {
            if active == 0 || !may_open {
                c.state.active.fetch_add(1, Ordering::AcqRel);
                return Checkout::Ready(c.clone());
            }
        }
        let spreading = best.is_some();
        if let Some(d) = &slot.dialing {
            return Checkout::Wait {
                dial: d.clone(),
                spreading,
            };
        }
        let dial = self
            .clone()
            .dial(key.clone(), cert.clone())
            .boxed()
            .shared();
        slot.dialing = Some(dial.clone());
        Checkout::Wait { dial, spreading }
    }

    async fn dial(self, key: PoolKey, cert: WorkloadCert) -> Result<(), Arc<HboneError>> {
        let result = self.establish(&key, &cert).await;
        let mut slots = self.inner.slots.lock().expect("pool lock poisoned");
        let slot = slots.entry(key).or_default();
        slot.dialing = None;
        match result {
            Ok(conn) => {
                slot.conns.push(conn);
                Ok(())
            }
            Err(e) => Err(Arc::new(e)),
        }
    }

    async fn establish(&self, key: &PoolKey, cert: &WorkloadCert) -> Result<Conn, HboneError> {
        let addr = key.dst_addr;
        let timeout = self.inner.settings.connect_timeout;
        let socket =
            (self.inner.sockets)(&addr).map_err(|source| HboneError::Connect { addr, source })?;
        let tcp = tokio::time::timeout(timeout, socket.connect(addr))
            .await
            .map_err(|_| HboneError::Connect {
                addr,
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            })?
            .map_err(|source| HboneError::Connect { addr, source })?;
        // HTTP/2 writes a frame header and its payload apart: with Nagle on, a small request's tail waits for the
        // peer's delayed ACK (40 ms). Set here, whatever socket the factory made.
        let _ = tcp.set_nodelay(true);
        let tls_config = cert.client_config(vec![key.dst.clone()])?;
        let server_name = ServerName::IpAddress(addr.ip().into());
        let mut tls = match tokio_rustls::TlsConnector::from(tls_config)
            .connect(server_name, super::transport(tcp))
            .await
        {
            Ok(t) => t,
            Err(source) => {
                let reason = self
                    .inner
                    .metrics
                    .handshake_failed(Direction::outbound, &source);
                tracing::warn!(peer = %addr, ?reason, error = %source, "HBONE TLS handshake failed");
                return Err(HboneError::Handshake { addr, source });
            }
        };
        tls.get_mut()
            .1
            .set_buffer_limit(Some(super::TLS_SEND_BUFFER));
        let h2s = &self.inner.h2;
        let (send, mut conn) = h2::client::Builder::new()
            .initial_window_size(h2s.stream_window)
            .initial_connection_window_size(h2s.connection_window)
            .max_frame_size(h2s.max_frame_size)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|source| HboneError::H2 { addr, source })?;
        let state = Arc::new(ConnState {
            active: AtomicUsize::new(0),
            alive: AtomicBool::new(true),
            last_used: Mutex::new(Instant::now()),
        });
        let ping = conn.ping_pong();
        let inner = self.inner.clone();
        let st = state.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = &mut conn => if let Err(e) = r { tracing::debug!(peer = %addr, error = %e, "HBONE connection ended") },
                _ = keepalive(ping, inner.h2.keepalive_interval, inner.h2.keepalive_timeout) => {
                    tracing::info!(peer = %addr, "HBONE keepalive failed; closing connection");
                }
                _ = idle(&inner, &st) => tracing::debug!(peer = %addr, "HBONE connection idle; closing"),
            }
            st.alive.store(false, Ordering::Release);
        });
        self.inner.metrics.connection_opened(Direction::outbound);
        let leaf = cert
            .chain()
            .first()
            .cloned()
            .ok_or_else(|| HboneError::Handshake {
                addr,
                source: std::io::Error::other("the workload certificate has no leaf"),
            })?;
        Ok(Conn { send, state, leaf })
    }

    async fn open_stream(
        &self,
        conn: Conn,
        addr: SocketAddr,
        req: ConnectRequest,
    ) -> Result<H2Stream, HboneError> {
        let guard = StreamGuard(conn.state.clone());
        let h2err = |source| HboneError::H2 { addr, source };
        let mut send = conn.send.ready().await.map_err(h2err)?;
        let mut builder = Request::builder()
            .method(Method::CONNECT)
            .uri(req.authority.to_string())
            .header("forwarded", super::forwarded_for(req.forwarded_for));
        if let Some(b) = &req.baggage {
            builder = builder.header("baggage", b);
        }
        if let Some(t) = &req.traceparent {
            builder = builder.header("traceparent", t);
        }
        let request = builder
            .body(())
            .expect("authority and header values are valid");
        let (resp, stream) = send.send_request(request, false).map_err(h2err)?;
        let resp = resp.await.map_err(h2err)?;
        if resp.status() != StatusCode::OK {
            return Err(HboneError::Status {
                addr,
                authority: req.authority,
                status: resp.status(),
            });
        }
        Ok(H2Stream::new(
            stream,
            resp.into_body(),
            Some(Box::new(guard)),
        ))
    }
}

fn shared_error(e: &Arc<HboneError>, addr: SocketAddr) -> HboneError {
    match &**e {
        HboneError::Connect { source, .. } => HboneError::Connect {
            addr,
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        other => HboneError::Handshake {
            addr,
            source: std::io::Error::other(other.to_string()),
        },
    }
}

async fn keepalive(ping: Option<h2::PingPong>, every: Duration, timeout: Duration) {
    let Some(mut ping) = ping else {
        return futures::future::pending().await;
    };
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}

/// Resolves once the connection has had no streams for the idle timeout; marks it dead under the pool lock so a
/// concurrent checkout cannot pick it as it closes.
async fn idle(inner: &Inner, st: &ConnState) {
    let timeout = inner.settings.idle_timeout;
    loop {
        tokio::time::sleep((timeout / 4).max(Duration::from_millis(100))).await;
        let _slots = inner.slots.lock().expect("pool lock poisoned");
        let idle_for = st.last_used.lock().map(|t| t.elapsed()).unwrap_or_default();
        if st.active.load(Ordering::Acquire) == 0 && idle_for >= timeout {
            st.alive.store(false, Ordering::Release);
            return;
        }
    }
}
