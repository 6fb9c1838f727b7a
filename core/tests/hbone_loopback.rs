//! HBONE client pool against the HBONE server on loopback (no root needed): echo with half-close,
//! the per-connection stream cap, idle expiry, drain (GOAWAY) letting open streams finish, new streams after a
//! GOAWAY, and PING keepalive closing a connection whose peer went silent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_core::ca::CertificateAuthority;
use mesh_core::drain::{Drain, DrainOutcome, DrainWatch};
use mesh_core::hbone::{
    accept_tls, serve_connection, ConnectHandler, ConnectRequest, H2Settings, H2Stream,
    InboundRequest, Pool, PoolKey, PoolSettings, Responder,
};
use mesh_core::metrics::HboneMetrics;
use mesh_core::tls::WorkloadCert;
use mesh_primitives::identity::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Echo;

impl ConnectHandler for Echo {
    async fn handle(&self, _req: InboundRequest, respond: Responder) {
        if let Ok(s) = respond.accept() {
            let (mut r, mut w) = tokio::io::split(s);
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        }
    }
}

struct Server {
    addr: SocketAddr,
    id: Identity,
    client: WorkloadCert,
}

/// A CA's server identity and its TLS acceptor on a loopback listener, and a client certificate of the same CA.
async fn listening() -> (
    Identity,
    WorkloadCert,
    tokio_rustls::TlsAcceptor,
    TcpListener,
) {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let id = Identity::new("cluster.local", "ns", "server");
    let cert = ca.issue(&id, Duration::from_secs(600)).unwrap();
    let client = ca
        .issue(
            &Identity::new("cluster.local", "ns", "client"),
            Duration::from_secs(600),
        )
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config().unwrap());
    (id, client, acceptor, listener)
}

async fn server(drain: DrainWatch) -> Server {
    let (id, client, acceptor, listener) = listening().await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let metrics = HboneMetrics::default();
        loop {
            let (tcp, peer) = tokio::select! {
                _ = drain.stopping() => return,
                a = listener.accept() => a.unwrap(),
            };
            let (acceptor, drain, metrics) = (acceptor.clone(), drain.clone(), metrics.clone());
            tokio::spawn(async move {
                if let Some(tls) = accept_tls(&acceptor, tcp, peer, &metrics).await {
                    serve_connection(tls, peer, &H2Settings::default(), Arc::new(Echo), drain)
                        .await;
                }
            });
        }
    });
    Server { addr, id, client }
}

fn pool(settings: PoolSettings) -> Pool {
    Pool::new(
        settings,
        H2Settings::default(),
        Arc::new(|_addr| tokio::net::TcpSocket::new_v4()),
        HboneMetrics::default(),
    )
}

async fn open(p: &Pool, s: &Server) -> H2Stream {
    let key = PoolKey {
        src: s.client.identity().clone(),
        dst: s.id.clone(),
        dst_addr: s.addr,
    };
    let req = ConnectRequest {
        authority: "198.18.0.1:80".parse().unwrap(),
        forwarded_for: "198.18.0.2:1000".parse().unwrap(),
        baggage: None,
        traceparent: Some(mesh_core::hbone::new_traceparent()),
    };
    p.connect(key, &s.client, req)
        .await
        .expect("CONNECT succeeds")
}

async fn echo(stream: &mut H2Stream, msg: &[u8]) -> Vec<u8> {
    stream.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    stream.read_exact(&mut buf).await.unwrap();
    buf
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn echo_with_half_close() {
    let d = Drain::new();
    let s = server(d.watch()).await;
    let p = pool(PoolSettings::default());
    let mut t = open(&p, &s).await;
    t.write_all(b"half-closed").await.unwrap();
    t.shutdown().await.unwrap();
    let mut out = Vec::new();
    t.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, b"half-closed");
}

#[tokio::test]
async fn streams_are_capped_per_connection() {
    let d = Drain::new();
    let s = server(d.watch()).await;
    let p = pool(PoolSettings {
        max_streams_per_connection: 2,
        connections_per_peer: 1,
        ..Default::default()
    });
    let mut a = open(&p, &s).await;
    let mut b = open(&p, &s).await;
    assert_eq!(p.connections(), 1, "two streams share one connection");
    let mut c = open(&p, &s).await;
    assert_eq!(
        p.connections(),
        2,
        "the third stream needs a second connection"
    );
    for (t, m) in [(&mut a, b"a"), (&mut b, b"b"), (&mut c, b"c")] {
        assert_eq!(echo(t, m).await, m);
    }
    drop(a);
    let mut d2 = open(&p, &s).await;
    assert_eq!(p.connections(), 2, "a freed stream slot is reused");
    assert_eq!(echo(&mut d2, b"d").await, b"d");
}

#[tokio::test]
async fn concurrent_streams_spread_over_connections_up_to_the_per_peer_limit() {
    let d = Drain::new();
    let s = server(d.watch()).await;
    let p = pool(PoolSettings {
        connections_per_peer: 2,
        ..Default::default()
    });
    let mut a = open(&p, &s).await;
    drop(a);
    let mut a2 = open(&p, &s).await;
    assert_eq!(
        p.connections(),
        1,
        "a sequential stream reuses the idle connection"
    );
    let mut b = open(&p, &s).await;
    assert_eq!(
        p.connections(),
        2,
        "a concurrent stream gets a connection of its own"
    );
    let mut c = open(&p, &s).await;
    assert_eq!(p.connections(), 2, "no more than the per-peer limit");
    for (t, m) in [(&mut a2, b"a"), (&mut b, b"b"), (&mut c, b"c")] {
        assert_eq!(echo(t, m).await, m);
    }
    drop((a2, b, c));
    a = open(&p, &s).await;
    assert_eq!(echo(&mut a, b"again").await, b"again");
    assert_eq!(
        p.connections(),
        2,
        "both stay pooled while within the idle timeout"
    );
}

#[tokio::test]
async fn idle_connections_expire() {
    let d = Drain::new();
    let s = server(d.watch()).await;
    let p = pool(PoolSettings {
        idle_timeout: Duration::from_millis(200),
        ..Default::default()
    });
    let mut t = open(&p, &s).await;
    assert_eq!(echo(&mut t, b"x").await, b"x");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        p.connections(),
        1,
        "a connection with an open stream is never idle"
    );
    drop(t);
    wait_for("idle expiry", || p.connections() == 0).await;
    let mut again = open(&p, &s).await;
    assert_eq!(echo(&mut again, b"y").await, b"y");
}

#[tokio::test]
async fn drain_lets_open_streams_finish() {
    let d = Drain::new();
    let watch = d.watch();
    let s = server(watch.clone()).await;
    let p = pool(PoolSettings::default());
    let mut t = open(&p, &s).await;
    let drained = tokio::spawn(d.drain(Duration::from_secs(5)));
    wait_for("drain to start", || watch.is_stopping()).await;
    assert_eq!(echo(&mut t, b"still open").await, b"still open");
    t.shutdown().await.unwrap();
    let mut rest = Vec::new();
    t.read_to_end(&mut rest).await.unwrap();
    drop(t);
    assert_eq!(drained.await.unwrap(), DrainOutcome::Clean);
}

/// Like [`server`], but each accepted connection gets a drain of its own (`goaway` sends GOAWAY on the
/// connection with that index), and the listener keeps accepting.
struct PerConnServer {
    inner: Server,
    drains: Arc<std::sync::Mutex<Vec<Option<Drain>>>>,
}

impl PerConnServer {
    fn goaway(&self, i: usize) -> tokio::task::JoinHandle<DrainOutcome> {
        let d = self.drains.lock().unwrap()[i]
            .take()
            .expect("not drained yet");
        tokio::spawn(d.drain(Duration::from_secs(5)))
    }
}

async fn per_conn_server() -> PerConnServer {
    let (id, client, acceptor, listener) = listening().await;
    let addr = listener.local_addr().unwrap();
    let drains = Arc::new(std::sync::Mutex::new(Vec::new()));
    let d = drains.clone();
    tokio::spawn(async move {
        let metrics = HboneMetrics::default();
        while let Ok((tcp, peer)) = listener.accept().await {
            let conn_drain = Drain::new();
            let watch = conn_drain.watch();
            d.lock().unwrap().push(Some(conn_drain));
            let (acceptor, metrics) = (acceptor.clone(), metrics.clone());
            tokio::spawn(async move {
                if let Some(tls) = accept_tls(&acceptor, tcp, peer, &metrics).await {
                    serve_connection(tls, peer, &H2Settings::default(), Arc::new(Echo), watch)
                        .await;
                }
            });
        }
    });
    PerConnServer {
        inner: Server { addr, id, client },
        drains,
    }
}

#[tokio::test]
async fn after_goaway_new_streams_open_on_a_new_connection() {
    let s = per_conn_server().await;
    // One connection per peer: the second connection must come from the GOAWAY, not from spreading.
    let p = pool(PoolSettings {
        connections_per_peer: 1,
        ..Default::default()
    });
    let mut old = open(&p, &s.inner).await;
    assert_eq!(echo(&mut old, b"1").await, b"1");
    let drained = s.goaway(0);
    // Streams opened while the GOAWAY is on its way may still land on the old connection (the server's grace
    // window); once it arrives, the next stream goes over a second connection. None may fail or hang.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut opened = Vec::new();
    while s.drains.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no second connection after GOAWAY"
        );
        let mut t = tokio::time::timeout(Duration::from_secs(2), open(&p, &s.inner))
            .await
            .expect("a new stream does not wait for the old connection to finish");
        assert_eq!(echo(&mut t, b"2").await, b"2");
        opened.push(t);
    }
    drop(opened);
    // The stream that was open when the GOAWAY came still works, then its connection goes away.
    assert_eq!(echo(&mut old, b"3").await, b"3");
    old.shutdown().await.unwrap();
    let mut rest = Vec::new();
    old.read_to_end(&mut rest).await.unwrap();
    drop(old);
    assert_eq!(drained.await.unwrap(), DrainOutcome::Clean);
    wait_for("the drained connection to leave the pool", || {
        p.connections() == 1
    })
    .await;
}

/// A TCP relay that can go silent: while `paused`, nothing is forwarded either way (a peer that vanished
/// without closing, as after a node failure).
async fn relay(to: SocketAddr, paused: Arc<std::sync::atomic::AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            let up = tokio::net::TcpStream::connect(to).await.unwrap();
            let (dr, dw) = down.into_split();
            let (ur, uw) = up.into_split();
            for (mut r, mut w) in [
                (
                    Box::new(dr) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    Box::new(uw) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                ),
                (Box::new(ur), Box::new(dw)),
            ] {
                let paused = paused.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if paused.load(std::sync::atomic::Ordering::Acquire) {
                            continue; // dropped on the floor
                        }
                        if w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    addr
}

#[tokio::test]
async fn keepalive_closes_a_connection_whose_peer_went_silent() {
    let d = Drain::new();
    let s = server(d.watch()).await;
    let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let via = relay(s.addr, paused.clone()).await;
    let through_relay = Server {
        addr: via,
        id: s.id.clone(),
        client: s.client.clone(),
    };
    let p = Pool::new(
        PoolSettings::default(),
        H2Settings {
            keepalive_interval: Duration::from_millis(100),
            keepalive_timeout: Duration::from_millis(200),
            ..H2Settings::default()
        },
        Arc::new(|_addr| tokio::net::TcpSocket::new_v4()),
        HboneMetrics::default(),
    );
    let mut t = open(&p, &through_relay).await;
    assert_eq!(echo(&mut t, b"alive").await, b"alive");
    // Answered PINGs keep an idle-looking connection (no data) open.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(p.connections(), 1, "PINGs answered: the connection stays");
    paused.store(true, std::sync::atomic::Ordering::Release);
    wait_for("the unanswered PING to close the connection", || {
        p.connections() == 0
    })
    .await;
}

#[tokio::test]
async fn a_renewed_certificate_opens_a_new_connection_and_the_old_one_ages_out() {
    let d = Drain::new();
    let s = server(d.watch()).await;
    let p = pool(PoolSettings {
        idle_timeout: Duration::from_millis(300),
        connections_per_peer: 1,
        ..Default::default()
    });
    let mut old = open(&p, &s).await;
    assert_eq!(echo(&mut old, b"1").await, b"1");
    // Same identity, new certificate (a renewal): a new stream does not ride the connection the old one opened.
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let renewed = Server {
        addr: s.addr,
        id: s.id.clone(),
        client: ca
            .issue(s.client.identity(), Duration::from_secs(600))
            .unwrap(),
    };
    // The server trusts only its own CA, so the renewed certificate (another root) is refused: proof that the
    // stream needed a fresh handshake rather than the pooled connection.
    let key = PoolKey {
        src: renewed.client.identity().clone(),
        dst: renewed.id.clone(),
        dst_addr: renewed.addr,
    };
    let req = ConnectRequest {
        authority: "198.18.0.1:80".parse().unwrap(),
        forwarded_for: "198.18.0.2:1000".parse().unwrap(),
        baggage: None,
        traceparent: None,
    };
    assert!(
        p.connect(key, &renewed.client, req).await.is_err(),
        "a new certificate means a new handshake"
    );
    // The original certificate still reuses its connection, which ages out once idle.
    let mut again = open(&p, &s).await;
    assert_eq!(echo(&mut again, b"2").await, b"2");
    assert_eq!(p.connections(), 1);
    drop((old, again));
    wait_for("the idle connection to expire", || p.connections() == 0).await;
}
