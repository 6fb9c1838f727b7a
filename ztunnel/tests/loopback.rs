//! ztunnel's data path without root: two pods that share the test's network ([`PodNetwork::Local`]) on loopback
//! addresses of their own, so no namespaces and no iptables. Outbound is entered where the redirect would hand
//! it over (`outbound::forward` with the original destination), then everything is real: the source pod's
//! certificate, the HBONE pool, the destination pod's 15008 listener, its L4 policy, the app. The netns suite
//! covers the same path with real redirection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mesh_core::ca::CertificateAuthority;
use mesh_core::certs::{CertManager, Issuer};
use mesh_core::drain::Drain;
use mesh_core::hbone::Pool;
use mesh_core::workload::authz::Policies;
use mesh_core::workload::state::{LocalState, Snapshot, StateStore};
use mesh_proto::istio::security as pb;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use ztunnel::config::Config;
use ztunnel::metrics::Metrics;
use ztunnel::proxy::{self, outbound, Pod, PodNetwork, ProxyCtx};

/// The client pod is 127.0.0.<n>, the server pod <n + 1> (its app echoes on 8080), a host outside the mesh
/// <n + 2> (echo on 8080); the service VIP 198.18.255.20:80 selects the server.
fn state_file(n: u8) -> String {
    format!(
        "
workloads:
- {{name: client, namespace: default, serviceAccount: client, ip: 127.0.0.{n}, node: n1, labels: {{app: client}}}}
- {{name: server, namespace: default, serviceAccount: server, ip: 127.0.0.{}, node: n1, labels: {{app: server}}}}
services:
- {{name: echo, namespace: default, vip: 198.18.255.20, ports: [{{port: 80, targetPort: 8080}}], selector: {{app: server}}}}
",
        n + 1
    )
}

struct Node {
    ctx: Arc<ProxyCtx>,
    client: Arc<Pod>,
    metrics: Registry,
    _drain: Drain,
}

fn pod(ctx: &ProxyCtx, name: &str, ip: IpAddr) -> Arc<Pod> {
    let network = Arc::new(PodNetwork::Local { ip });
    Arc::new(Pod {
        uid: name.into(),
        name: name.into(),
        namespace: "default".into(),
        ips: vec![ip],
        pool: Pool::new(
            ctx.cfg.pool.clone(),
            ctx.cfg.h2.clone(),
            network.sockets(),
            ctx.metrics.hbone.clone(),
        ),
        network,
        stop: CancellationToken::new(),
    })
}

async fn echo_app(addr: SocketAddr) {
    let listener = TcpListener::bind(addr)
        .await
        .expect("loopback address free");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
}

/// One ztunnel serving both pods: the server pod's listeners open on its address.
async fn node(n: u8) -> Node {
    let ip = |k: u8| IpAddr::from([127, 0, 0, n + k]);
    echo_app(SocketAddr::new(ip(1), 8080)).await;
    echo_app(SocketAddr::new(ip(2), 8080)).await;
    let cfg = Arc::new(Config {
        node_name: "n1".into(),
        ..Config::default()
    });
    let state = StateStore::default();
    state.store(
        Snapshot::build(mesh_primitives::yaml::from_str::<LocalState>(&state_file(n)).unwrap())
            .unwrap(),
    );
    let mut metrics = Registry::default();
    let drain = Drain::new();
    let ctx = Arc::new(ProxyCtx {
        certs: Arc::new(CertManager::new(
            Issuer::Dev(Box::new(
                CertificateAuthority::generate(&cfg.trust_domain).unwrap(),
            )),
            cfg.certificate_ttl,
        )),
        cfg,
        state,
        metrics: Metrics::register(&mut metrics),
        drain: drain.watch(),
        conns: Default::default(),
    });
    let server = pod(&ctx, "server", ip(1));
    proxy::start(ctx.clone(), server).expect("the server pod's listeners open");
    Node {
        client: pod(&ctx, "client", ip(0)),
        ctx,
        metrics,
        _drain: drain,
    }
}

impl Node {
    /// A connection from the client pod to `dst`, handed to ztunnel as its redirect would; returns what came
    /// back for `msg`.
    async fn call(&self, dst: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        let entry = TcpListener::bind(SocketAddr::new(self.client.ips[0], 0)).await?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(self.client.ips[0], 0))?;
        let (app, accepted) = tokio::join!(socket.connect(entry.local_addr()?), entry.accept());
        let (mut app, (redirected, peer)) = (app?, accepted?);
        tokio::spawn(outbound::forward(
            self.ctx.clone(),
            self.client.clone(),
            redirected,
            peer,
            dst,
        ));
        app.write_all(msg).await?;
        app.shutdown().await?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), app.read_to_end(&mut out)).await??;
        Ok(out)
    }

    fn metric(&self, name: &str, must: &[&str]) -> f64 {
        mesh_core::metrics::encode(&self.metrics)
            .lines()
            .filter(|l| l.starts_with(name) && must.iter().all(|m| l.contains(m)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A namespace-wide DENY of connections matching `m`.
fn deny(name: &str, m: pb::Match) -> pb::Authorization {
    pb::Authorization {
        name: name.into(),
        namespace: "default".into(),
        scope: pb::Scope::Namespace as i32,
        action: pb::Action::Deny as i32,
        rules: vec![pb::Rule {
            clauses: vec![pb::Clause { matches: vec![m] }],
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn pod_to_pod_and_service_vip_go_over_mtls_hbone() {
    let n = node(20).await;
    let server = SocketAddr::new([127, 0, 0, 21].into(), 8080);
    assert_eq!(n.call(server, b"direct").await.unwrap(), b"direct");
    assert_eq!(
        n.call("198.18.255.20:80".parse().unwrap(), b"via the VIP")
            .await
            .unwrap(),
        b"via the VIP"
    );
    // Both ends reported it as Istio does: mTLS, with the verified client identity on the server side.
    let mtls = "connection_security_policy=\"mutual_tls\"";
    assert_eq!(
        n.metric(
            "istio_tcp_connections_opened_total",
            &["reporter=\"source\"", mtls]
        ),
        2.0
    );
    assert_eq!(
        n.metric(
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"destination\"",
                mtls,
                "source_principal=\"spiffe://cluster.local/ns/default/sa/client\"",
                "destination_service=\"echo.default.svc.cluster.local\""
            ]
        ),
        2.0,
        "the destination reports the service its workload backs, however it was addressed"
    );
    // Bytes are counted per direction: 6 + 11 sent by the client, the same echoed back.
    assert_eq!(
        n.metric(
            "istio_tcp_received_bytes_total",
            &["reporter=\"destination\""]
        ),
        17.0
    );
    assert_eq!(
        n.metric("istio_tcp_sent_bytes_total", &["reporter=\"destination\""]),
        17.0
    );
    assert_eq!(
        n.metric(
            "mesh_hbone_connections_opened_total",
            &["direction=\"inbound\""]
        ),
        1.0,
        "both streams shared one pooled HBONE connection"
    );
}

#[tokio::test]
async fn destinations_outside_the_mesh_pass_through_as_plain_tcp() {
    let n = node(30).await;
    let outside = SocketAddr::new([127, 0, 0, 32].into(), 8080);
    assert_eq!(n.call(outside, b"plain").await.unwrap(), b"plain");
    assert_eq!(
        n.metric("mesh_hbone_connections_opened_total", &[]),
        0.0,
        "no tunnel for a non-mesh destination"
    );
    // A pod reaching ztunnel's own port on itself is closed, not looped back into ztunnel.
    let own = SocketAddr::new([127, 0, 0, 30].into(), 15001);
    assert_eq!(n.call(own, b"loop?").await.unwrap_or_default(), b"");
}

#[tokio::test]
async fn l4_policy_at_the_destination_refuses_with_401_and_counts() {
    let n = node(40).await;
    let server = SocketAddr::new([127, 0, 0, 41].into(), 8080);
    assert_eq!(n.call(server, b"allowed").await.unwrap(), b"allowed");
    let deny_client = deny(
        "deny-client",
        pb::Match {
            principals: vec![pb::StringMatch {
                match_type: Some(pb::string_match::MatchType::Exact(
                    // Istio's principal form: no scheme.
                    "cluster.local/ns/default/sa/client".into(),
                )),
            }],
            ..Default::default()
        },
    );
    n.ctx
        .state
        .store_policies(Policies::compile([&deny_client]).unwrap());
    assert_eq!(
        n.call(server, b"denied").await.unwrap_or_default(),
        b"",
        "nothing reaches the app"
    );
    assert_eq!(
        n.metric(
            "mesh_authorization_denied_connections_total",
            &["policy=\"default/deny-client\"", "transport=\"hbone\""]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_destination_missing_from_state_is_not_admitted() {
    let n = node(50).await;
    let server = SocketAddr::new([127, 0, 0, 51].into(), 8080);
    assert_eq!(n.call(server, b"known").await.unwrap(), b"known");
    // The server pod is still enrolled, but the state no longer knows its workload (deleted, or not yet
    // pushed): ztunnel has no identity to answer as, so it closes the tunnel rather than guess.
    let only_client = state_file(50)
        .lines()
        .filter(|l| !l.contains("name: server"))
        .collect::<Vec<_>>()
        .join("\n");
    n.ctx.state.store(
        Snapshot::build(mesh_primitives::yaml::from_str::<LocalState>(&only_client).unwrap())
            .unwrap(),
    );
    // The client's ztunnel now sees a destination outside the mesh and sends plain TCP to the app, which is
    // not ztunnel's to refuse. A tunnel made with the old view (a stale peer) is refused by the destination's
    // ztunnel, even over the HBONE connection the first call left in the pool.
    assert_eq!(n.call(server, b"plain").await.unwrap(), b"plain");
    let tunnel = hbone_to(&n, server).await;
    assert!(
        tunnel.is_err(),
        "a tunnel to an unknown workload is refused"
    );
    assert_eq!(
        n.metric(
            "mesh_authorization_denied_connections_total",
            &["reason=\"unknown_destination\"", "transport=\"hbone\""]
        ),
        1.0
    );
}

/// A CONNECT to `dst` over HBONE as the client, addressed to the server's identity (what a peer with a stale
/// view of the destination would send).
async fn hbone_to(
    n: &Node,
    dst: SocketAddr,
) -> Result<mesh_core::hbone::H2Stream, mesh_core::hbone::HboneError> {
    hbone_forwarding(n, dst, SocketAddr::new(n.client.ips[0], 1)).await
}

/// The same, with `forwarded` in the `Forwarded` header (what a waypoint sets; anyone else could lie in it).
async fn hbone_forwarding(
    n: &Node,
    dst: SocketAddr,
    forwarded: SocketAddr,
) -> Result<mesh_core::hbone::H2Stream, mesh_core::hbone::HboneError> {
    let id = mesh_primitives::identity::Identity::new("cluster.local", "default", "client");
    let (cert, _) = n.ctx.certs.fetch(&id).await.expect("a certificate");
    let key = mesh_core::hbone::PoolKey {
        src: id,
        dst: mesh_primitives::identity::Identity::new("cluster.local", "default", "server"),
        dst_addr: SocketAddr::new(dst.ip(), mesh_core::HBONE_PORT),
    };
    let req = mesh_core::hbone::ConnectRequest {
        authority: dst,
        forwarded_for: forwarded,
        baggage: None,
        traceparent: None,
    };
    tokio::time::timeout(
        Duration::from_secs(5),
        n.client.pool.connect(key, &cert, req),
    )
    .await
    .expect("refused promptly, not hung")
}

#[tokio::test]
async fn a_forged_forwarded_address_does_not_pass_ip_blocks() {
    let n = node(60).await;
    let server = SocketAddr::new([127, 0, 0, 61].into(), 8080);
    // DENY connections from the client pod's address (ipBlocks is the source address).
    let deny_client_ip = deny(
        "deny-client-ip",
        pb::Match {
            source_ips: vec![pb::Address {
                address: vec![127, 0, 0, 60],
                length: 32,
            }],
            ..Default::default()
        },
    );
    n.ctx
        .state
        .store_policies(Policies::compile([&deny_client_ip]).unwrap());
    assert_eq!(n.call(server, b"honest").await.unwrap_or_default(), b"");
    // Claiming another address in `Forwarded` changes nothing: only a waypoint's claim is believed.
    let forged = hbone_forwarding(&n, server, "127.0.0.99:1".parse().unwrap()).await;
    assert!(
        forged.is_err(),
        "a forged Forwarded address must not pass the DENY"
    );
    assert_eq!(
        n.metric(
            "mesh_authorization_denied_connections_total",
            &["policy=\"default/deny-client-ip\""]
        ),
        2.0
    );
    // Once the client's account is a waypoint (a service names it), its `Forwarded` address is the one policy
    // judges: the client it forwards for is not in the denied block.
    let with_waypoint = format!(
        "{}- {{name: shop, namespace: default, vip: 198.18.255.21, ports: [{{port: 80}}], waypoint: 127.0.0.60:15008}}\n",
        state_file(60)
    );
    n.ctx.state.store(
        Snapshot::build(mesh_primitives::yaml::from_str::<LocalState>(&with_waypoint).unwrap())
            .unwrap(),
    );
    assert!(
        hbone_forwarding(&n, server, "127.0.0.99:1".parse().unwrap())
            .await
            .is_ok(),
        "a waypoint's Forwarded client is believed"
    );
}
