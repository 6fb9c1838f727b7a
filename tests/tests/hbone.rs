//! HBONE's security and capacity at the destination ztunnel: what 15008 admits and what it refuses, bulk
//! transfer integrity, many concurrent streams.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_core::ca::CertificateAuthority;
use mesh_core::hbone::{ConnectRequest, H2Settings, HboneError, Pool, PoolKey, PoolSettings};
use mesh_core::metrics::HboneMetrics;
use mesh_core::netns::NetNs;
use mesh_core::tls::WorkloadCert;
use mesh_primitives::identity::Identity;
use mesh_tests::net::{connect_in, connect_in_async};
use mesh_tests::{poll, require_netns, Cluster, PodSpec};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cluster() -> Cluster {
    Cluster::start(
        2,
        vec![
            PodSpec::mesh("client", 0),
            PodSpec::mesh("server", 1),
            PodSpec::plain("outside", 1),
        ],
    )
    .expect("cluster starts")
}

fn id(td: &str, sa: &str) -> Identity {
    Identity::new(td, "default", sa)
}

/// A pool whose sockets start in the `outside` pod (unenrolled, so nothing redirects them).
fn pool_from(c: &Cluster, pod: &str) -> Pool {
    let ns = Arc::new(NetNs::named(&c.pod(pod).netns).unwrap());
    Pool::new(
        PoolSettings::default(),
        H2Settings::default(),
        Arc::new(move |addr| ns.run(|| mesh_core::socket::marked_tcp_socket(addr))?),
        HboneMetrics::default(),
    )
}

async fn tunnel(
    c: &Cluster,
    cert: &WorkloadCert,
    expect: Identity,
    authority: SocketAddr,
) -> Result<mesh_core::hbone::H2Stream, HboneError> {
    let server = c.pod("server").ip;
    let key = PoolKey {
        src: cert.identity().clone(),
        dst: expect,
        dst_addr: SocketAddr::new(server, 15008),
    };
    let req = ConnectRequest {
        authority,
        forwarded_for: SocketAddr::new(c.pod("outside").ip, 1234),
        baggage: None,
        traceparent: None,
    };
    pool_from(c, "outside").connect(key, cert, req).await
}

fn handshake_failures(c: &Cluster, reason: &str) -> f64 {
    let m = c.metrics(1).unwrap();
    m.lines()
        .filter(|l| {
            l.starts_with("mesh_tls_handshake_failures_total")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hbone_port_admits_only_mtls_from_the_trust_domain() {
    require_netns!();
    let c = cluster();
    let server = c.pod("server").ip;
    let app = SocketAddr::new(server, 8080);
    let server_id = id("cluster.local", "server");
    let ca = CertificateAuthority::load_or_create(&c.ca_dir(), "cluster.local").unwrap();
    let ttl = Duration::from_secs(600);

    // Positive control: a certificate of the mesh CA and trust domain tunnels and echoes.
    let good = ca.issue(&id("cluster.local", "client"), ttl).unwrap();
    let mut t = tunnel(&c, &good, server_id.clone(), app)
        .await
        .expect("valid mTLS CONNECT");
    t.write_all(b"hello").await.unwrap();
    t.shutdown().await.unwrap();
    let mut out = Vec::new();
    t.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, b"hello");

    // Plaintext on 15008 gets no answer and is counted.
    let outside = c.pod("outside").netns.clone();
    let mut s = connect_in(
        &outside,
        SocketAddr::new(server, 15008),
        Duration::from_secs(5),
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nhello")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        !buf.windows(5).any(|w| w == b"hello"),
        "plaintext must never reach the app"
    );
    poll("not_tls counted", Duration::from_secs(5), || {
        (handshake_failures(&c, "not_tls") >= 1.0).then_some(())
    })
    .unwrap();

    // Same root, other trust domain: refused by the server.
    let foreign = ca.issue(&id("evil.local", "client"), ttl).unwrap();
    assert!(
        tunnel(&c, &foreign, server_id.clone(), app).await.is_err(),
        "foreign trust domain admitted"
    );
    poll(
        "foreign_trust_domain counted",
        Duration::from_secs(5),
        || (handshake_failures(&c, "foreign_trust_domain") >= 1.0).then_some(()),
    )
    .unwrap();

    // A leaf from another CA (the client still trusts the real root, so the server is the one to refuse).
    let rogue = CertificateAuthority::generate("cluster.local").unwrap();
    let r = rogue.issue(&id("cluster.local", "client"), ttl).unwrap();
    let rogue_cert = WorkloadCert::new(
        r.identity().clone(),
        r.chain().to_vec(),
        r.key().clone_key(),
        ca.roots().to_vec(),
        r.not_after(),
    );
    assert!(
        tunnel(&c, &rogue_cert, server_id.clone(), app)
            .await
            .is_err(),
        "unknown CA admitted"
    );
    poll("untrusted_issuer counted", Duration::from_secs(5), || {
        (handshake_failures(&c, "untrusted_issuer") >= 1.0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", c.metrics(1).unwrap(), c.ztunnel_log(1)));

    // An expired certificate of the mesh CA is refused.
    let now = std::time::SystemTime::now();
    let expired = ca
        .issue_valid(
            &id("cluster.local", "client"),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    assert!(
        tunnel(&c, &expired, server_id.clone(), app).await.is_err(),
        "expired certificate admitted"
    );

    // The client refuses a server whose identity is not the one expected for the destination.
    let err = tunnel(&c, &good, id("cluster.local", "someone-else"), app)
        .await
        .err()
        .expect("wrong server identity accepted");
    assert!(err.to_string().contains("is not one of"), "{err}");

    // ztunnel survived all of it.
    let mut t = tunnel(&c, &good, server_id, app)
        .await
        .expect("still serving");
    t.write_all(b"again").await.unwrap();
    t.shutdown().await.unwrap();
    let mut out = Vec::new();
    t.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_status_codes() {
    require_netns!();
    let c = cluster();
    let ca = CertificateAuthority::load_or_create(&c.ca_dir(), "cluster.local").unwrap();
    let good = ca
        .issue(&id("cluster.local", "client"), Duration::from_secs(600))
        .unwrap();
    let server_id = id("cluster.local", "server");
    let status = |r: Result<_, HboneError>| match r {
        Err(HboneError::Status { status, .. }) => status.as_u16(),
        Err(e) => panic!("expected an HTTP status, got {e}"),
        Ok(_) => 200,
    };
    // :authority naming a pod that is not behind this listener: 400.
    let elsewhere = SocketAddr::new(c.pod("client").ip, 8080);
    assert_eq!(
        status(tunnel(&c, &good, server_id.clone(), elsewhere).await),
        400
    );
    // Nothing listening on that port of the pod: 503.
    let closed = SocketAddr::new(c.pod("server").ip, 9);
    assert_eq!(
        status(tunnel(&c, &good, server_id.clone(), closed).await),
        503
    );
    let open = SocketAddr::new(c.pod("server").ip, 8080);
    assert_eq!(status(tunnel(&c, &good, server_id, open).await), 200);
}

/// Deterministic, fast pseudo-random bytes (xorshift64*).
fn fill(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

#[test]
fn one_gib_arrives_intact_through_the_tunnel() {
    require_netns!();
    let c = cluster();
    const TOTAL: usize = 1 << 30;
    let mut s = connect_in(
        &c.pod("client").netns,
        SocketAddr::new(c.pod("server").ip, 8082),
        Duration::from_secs(5),
    )
    .unwrap();
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let start = Instant::now();
    for _ in 0..TOTAL / buf.len() {
        fill(&mut buf, &mut state);
        hash.update(&buf);
        s.write_all(&buf).unwrap();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "1 GiB through HBONE in {secs:.1}s ({:.0} MiB/s incl. hashing)",
        1024.0 / secs
    );
    let expected = format!("{TOTAL} {}", hex::encode(hash.finalize()));
    assert_eq!(line.trim(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_all_complete() {
    require_netns!();
    mesh_core::socket::raise_fd_limit();
    let c = cluster();
    const N: usize = 1000;
    let ns = Arc::new(NetNs::named(&c.pod("client").netns).unwrap());
    let dst = SocketAddr::new(c.pod("server").ip, 8080);
    let all_open = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for i in 0..N {
        let (ns, all_open) = (ns.clone(), all_open.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = connect_in_async(&ns, dst).await?;
            // Every connection is established before any sends: all N are open at once.
            all_open.wait().await;
            let msg = format!("connection {i} ").repeat(256);
            s.write_all(msg.as_bytes()).await?;
            s.shutdown().await?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await?;
            anyhow::ensure!(
                out == msg.as_bytes(),
                "connection {i} got {} bytes back",
                out.len()
            );
            Ok::<_, anyhow::Error>(())
        }));
    }
    let results = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(tasks))
        .await
        .expect("all connections finish within 2 minutes");
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|r| match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {N} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    let dump = c.config_dump(0).unwrap();
    let conns = dump["pods"][0]["hboneConnections"].as_u64().unwrap_or(0);
    // Multiplexed, up to 100 streams per HBONE connection: about 10 connections, never one per TCP connection.
    // The client side holds all 1000 open at once, but ztunnel may finish early streams before it accepts the
    // last ones, so fewer is possible (seen: 9); the stream cap itself is tested exactly in
    // core/tests/hbone_loopback.rs. More than 12 would mean connections opened while others had room.
    assert!(
        (1..=12).contains(&conns),
        "1000 streams should share about 10 HBONE connections, saw {conns}"
    );
}

#[test]
fn an_independent_hbone_client_interoperates() {
    require_netns!();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the interop test: {} missing",
            python.display()
        );
        eprintln!(
            "SKIPPED: {} missing (scripts/deps.sh creates it with the h2 package)",
            python.display()
        );
        return;
    }
    let c = cluster();
    let ca = CertificateAuthority::load_or_create(&c.ca_dir(), "cluster.local").unwrap();
    let cert = ca
        .issue(&id("cluster.local", "client"), Duration::from_secs(600))
        .unwrap();
    let pem_of = |tag: &str, der: &[u8]| pem::encode(&pem::Pem::new(tag, der.to_vec()));
    let files = [
        (
            "chain.pem",
            cert.chain()
                .iter()
                .map(|c| pem_of("CERTIFICATE", c))
                .collect::<String>(),
        ),
        ("key.pem", pem_of("PRIVATE KEY", cert.key().secret_der())),
        ("root.pem", pem_of("CERTIFICATE", &ca.roots()[0])),
    ];
    for (name, body) in &files {
        std::fs::write(c.dir.join(name), body).unwrap();
    }
    let server = c.pod("server").ip;
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &c.pod("outside").netns])
        .arg(&python)
        .arg(root.join("tests/interop/hbone_client.py"))
        .args(["chain.pem", "key.pem", "root.pem"].map(|f| c.dir.join(f)))
        .arg(format!("{server}:15008"))
        .arg(format!("{server}:8080"))
        .arg("spiffe://cluster.local/ns/default/sa/server")
        .arg("bytes from an independent HTTP/2 stack")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "interop client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "bytes from an independent HTTP/2 stack"
    );
}
