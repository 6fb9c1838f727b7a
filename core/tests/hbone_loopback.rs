//! HBONE client pool against the HBONE server on loopback (no root needed): echo with half-close,
//! the per-connection stream cap, idle expiry, and drain (GOAWAY) letting open streams finish.

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

async fn server(drain: DrainWatch) -> Server {
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
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config().unwrap());
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
