//! ztunnels fed by the control plane (file mode): certificates from its CA, workloads over delta xDS.

use std::net::SocketAddr;
use std::time::Duration;

use mesh_core::control::ControlPlane;
use mesh_core::netns::NetNs;
use mesh_primitives::identity::Identity;
use mesh_tests::net::{contains, exchange};
use mesh_tests::{poll, require_netns, Cluster, Mode, PodSpec};

const MARKER: &[u8] = b"MARKER-control-plane-9d1e";

fn cluster() -> Cluster {
    Cluster::start_with(
        2,
        vec![
            PodSpec::mesh("client", 0),
            PodSpec::mesh("server", 1),
            PodSpec::plain("outside", 1),
        ],
        Mode::ControlPlane,
    )
    .expect("cluster with control plane starts")
}

fn metric(text: &str, name: &str, must: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && must.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn ztunnels_get_certificates_and_workloads_from_the_control_plane() {
    require_netns!();
    let c = cluster();
    let server = c.pod("server").ip;
    let client_ns = c.pod("client").netns.clone();
    let cap = c.capture().unwrap();
    let echoed = poll("traffic over the mesh", Duration::from_secs(20), || {
        exchange(&client_ns, SocketAddr::new(server, 8080), MARKER)
            .ok()
            .filter(|o| o == MARKER)
    })
    .unwrap();
    assert_eq!(echoed, MARKER);
    assert!(
        !contains(&cap.finish().unwrap(), MARKER),
        "traffic must be tunnelled"
    );

    let dump = c.config_dump(0).unwrap();
    assert!(
        dump["config"]["devCaDir"].is_null() && dump["config"]["localStateFile"].is_null(),
        "{dump}"
    );
    let certs: Vec<&str> = dump["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["identity"].as_str())
        .collect();
    assert!(
        certs.contains(&"spiffe://cluster.local/ns/default/sa/client"),
        "{certs:?}"
    );
    let workloads = dump["state"]["workloads"].as_array().unwrap();
    assert_eq!(
        workloads.len(),
        3,
        "all pods arrive over xDS (the non-mesh one with protocol NONE): {dump}"
    );

    let (_, m) = c.control_get("/metrics").unwrap();
    assert!(
        metric(&m, "mesh_ca_csrs_total", &["outcome=\"issued\""]) >= 2.0,
        "{m}"
    );
    assert!(metric(&m, "pilot_xds_pushes", &[]) >= 2.0, "{m}");
    // Istio's own names for the CA's counts (istiod's `citadel_server_*_count`).
    assert!(metric(&m, "citadel_server_csr_count ", &[]) >= 2.0, "{m}");
    assert!(
        metric(&m, "citadel_server_success_cert_issuance_count ", &[]) >= 2.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "pilot_xds ", &[]),
        2.0,
        "two ztunnels connected: {m}"
    );
}

#[test]
fn a_config_change_reaches_the_ztunnels_and_changes_traffic() {
    require_netns!();
    let mut c = cluster();
    let client_ns = c.pod("client").netns.clone();
    let vip: SocketAddr = "198.18.255.20:80".parse().unwrap();
    // No such service yet: the VIP goes nowhere (nothing listens there: refused, reset or closed empty).
    if let Ok(out) = exchange(&client_ns, vip, b"") {
        assert!(out.is_empty(), "nothing serves the VIP yet: {out:?}");
    }
    let (_, m) = c.control_get("/metrics").unwrap();
    let converged_before = metric(&m, "pilot_proxy_convergence_time_count", &[]);
    c.add_service("echo", "198.18.255.20", 80, 8081, "server")
        .unwrap();
    let out = poll("the new service", Duration::from_secs(20), || {
        exchange(&client_ns, vip, b"")
            .ok()
            .filter(|o| !o.is_empty())
    })
    .unwrap();
    let seen: SocketAddr = String::from_utf8(out).unwrap().trim().parse().unwrap();
    assert_eq!(seen.ip(), c.pod("server").ip);
    let (_, m) = c.control_get("/metrics").unwrap();
    // Each of the two ztunnels ACKed the push that carried the new service.
    assert!(
        metric(&m, "pilot_proxy_convergence_time_count", &[]) >= converged_before + 2.0,
        "convergence observed for both ztunnels (before: {converged_before}): {m}"
    );
}

#[test]
fn traffic_survives_a_control_plane_outage_and_proxies_resync() {
    require_netns!();
    let mut c = cluster();
    let (client_ns, server) = (c.pod("client").netns.clone(), c.pod("server").ip);
    let dst = SocketAddr::new(server, 8080);
    poll("traffic", Duration::from_secs(20), || {
        exchange(&client_ns, dst, b"up").ok().filter(|o| o == b"up")
    })
    .unwrap();
    c.kill_control().unwrap();
    for _ in 0..5 {
        assert_eq!(
            exchange(&client_ns, dst, b"still").unwrap(),
            b"still",
            "last config keeps serving"
        );
    }
    // A change made while the control plane is down arrives once it is back.
    c.add_service("late", "198.18.255.21", 80, 8080, "server")
        .unwrap();
    c.start_control().unwrap();
    let vip: SocketAddr = "198.18.255.21:80".parse().unwrap();
    let out = poll("resync after restart", Duration::from_secs(30), || {
        exchange(&client_ns, vip, b"resynced")
            .ok()
            .filter(|o| o == b"resynced")
    })
    .unwrap();
    assert_eq!(out, b"resynced");
}

#[test]
fn a_ztunnel_cannot_obtain_a_foreign_nodes_pod_identity() {
    require_netns!();
    let c = cluster();
    let cp = ControlPlane {
        address: "https://198.19.0.254:15012".into(),
        root_cert: c.ca_dir().join("root-cert.pem"),
        tls_name: "istiod.istio-system.svc".into(),
        token_file: c.token_file(1),
    };
    let node1 = NetNs::named(&c.nodes[0].netns).unwrap();
    // Everything on a current-thread runtime inside node 1's namespace, where its ztunnel would call from.
    let (own, foreign, bad_token) = node1
        .run(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let ch = cp.channel().unwrap();
                let ttl = Duration::from_secs(3600);
                let own = cp
                    .fetch_certificate(
                        ch.clone(),
                        &Identity::new("cluster.local", "default", "client"),
                        ttl,
                    )
                    .await;
                let foreign = cp
                    .fetch_certificate(
                        ch.clone(),
                        &Identity::new("cluster.local", "default", "server"),
                        ttl,
                    )
                    .await;
                std::fs::write(c.dir.join("bogus-token"), "not-a-token").unwrap();
                let bogus = ControlPlane {
                    token_file: c.dir.join("bogus-token"),
                    ..cp.clone()
                };
                let bad = bogus
                    .fetch_certificate(
                        ch,
                        &Identity::new("cluster.local", "default", "client"),
                        ttl,
                    )
                    .await;
                (own, foreign, bad)
            })
        })
        .unwrap();
    let own = own.expect("node1's ztunnel may obtain its own pod's identity");
    assert_eq!(
        own.identity().to_string(),
        "spiffe://cluster.local/ns/default/sa/client"
    );
    let err = foreign
        .expect_err("a foreign node's pod identity must be refused")
        .to_string();
    assert!(
        err.contains("no pod with that identity is scheduled on node1"),
        "{err}"
    );
    let err = bad_token
        .expect_err("an unknown token must be refused")
        .to_string();
    assert!(err.contains("unknown bootstrap token"), "{err}");
    let (_, m) = c.control_get("/metrics").unwrap();
    assert!(
        metric(&m, "mesh_ca_csrs_total", &["outcome=\"denied\""]) >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "mesh_ca_csrs_total", &["outcome=\"unauthenticated\""]) >= 1.0,
        "{m}"
    );
}

#[test]
fn an_invalid_object_is_rejected_and_its_last_good_version_keeps_serving() {
    require_netns!();
    let c = cluster();
    let client_ns = c.pod("client").netns.clone();
    let svc = |name: &str, vip: &str, port: u32| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{clusterIP: {vip}, selector: {{app: server}}, ports: [{{port: {port}, targetPort: 8081}}]}}\n"
        )
    };
    let works = |vip: &str| {
        let addr: SocketAddr = format!("{vip}:80").parse().unwrap();
        poll(&format!("{vip} to serve"), Duration::from_secs(20), || {
            exchange(&client_ns, addr, b"")
                .ok()
                .filter(|o| !o.is_empty())
        })
    };
    std::fs::write(
        c.config_dir().join("extra.yaml"),
        svc("extra", "198.18.255.30", 80),
    )
    .unwrap();
    works("198.18.255.30").unwrap();
    // Break `extra` (port out of range) and add `extra2` in the same change.
    std::fs::write(
        c.config_dir().join("extra.yaml"),
        svc("extra", "198.18.255.30", 70000),
    )
    .unwrap();
    std::fs::write(
        c.config_dir().join("extra2.yaml"),
        svc("extra2", "198.18.255.31", 80),
    )
    .unwrap();
    works("198.18.255.31").expect("the rest of the config is applied");
    works("198.18.255.30").expect("the last good version of the invalid object keeps serving");
    let (_, diag) = c.control_get("/debug/analyze").unwrap();
    assert!(
        diag.contains("error: Service default/extra: spec.ports[0].port"),
        "{diag}"
    );
    let (_, m) = c.control_get("/metrics").unwrap();
    assert_eq!(metric(&m, "mesh_config_rejected_objects", &[]), 1.0, "{m}");
}

/// Istio's root rotation, in three control-plane restarts, under continuous traffic: (1) the new root B is
/// trusted while A still signs; (2) B signs, A is still trusted; (3) A is retired. Certificates live 8 s (renewed
/// at half-life) so each phase reaches every workload quickly. No connection may fail, and one opened before the
/// rotation must survive it.
#[test]
fn root_rotation_under_traffic_drops_nothing() {
    require_netns!();
    let mut c = Cluster::start_configured(
        2,
        vec![PodSpec::mesh("client", 0), PodSpec::mesh("server", 1)],
        Mode::ControlPlane,
        "certificateTtl: 8s\n",
    )
    .unwrap();
    let (client_ns, server) = (c.pod("client").netns.clone(), c.pod("server").ip);
    let dst = SocketAddr::new(server, 8080);
    poll("traffic", Duration::from_secs(20), || {
        exchange(&client_ns, dst, b"up").ok().filter(|o| o == b"up")
    })
    .unwrap();
    let mut long_lived =
        mesh_tests::net::connect_in(&client_ns, dst, Duration::from_secs(5)).unwrap();
    long_lived
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let echo = |s: &mut std::net::TcpStream, msg: &[u8]| {
        use std::io::{Read, Write};
        s.write_all(msg).unwrap();
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).unwrap();
        buf
    };
    assert_eq!(echo(&mut long_lived, b"before"), b"before");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (running, ns) = (stop.clone(), client_ns.clone());
    let traffic = std::thread::spawn(move || {
        let (mut ok, mut failed) = (0, Vec::new());
        while !running.load(std::sync::atomic::Ordering::Acquire) {
            match exchange(&ns, dst, b"rotating") {
                Ok(o) if o == b"rotating" => ok += 1,
                other => failed.push(format!("{other:?}")),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (ok, failed)
    });

    let root_a = c.ca_dir().join("ca-cert.pem");
    let b_dir = c.dir.join("ca-b");
    mesh_core::ca::CertificateAuthority::load_or_create(&b_dir, "cluster.local").unwrap();
    let base = std::fs::read_to_string(c.dir.join("control.yaml")).unwrap();
    let plugin_b = format!(
        "pluginCa: {{certChain: {}, key: {}}}\n",
        b_dir.join("ca-cert.pem").display(),
        b_dir.join("ca-key.pem").display()
    );
    let phases = [
        format!("trustedRoots: [{}]\n", b_dir.join("ca-cert.pem").display()),
        format!("{plugin_b}trustedRoots: [{}]\n", root_a.display()),
        plugin_b.clone(),
    ];
    let handshakes = |c: &Cluster| {
        metric(
            &c.metrics(1).unwrap(),
            "mesh_hbone_connections_opened_total",
            &["direction=\"inbound\""],
        )
    };
    let a_client = a_signed_client(&c, &b_dir);
    for (i, extra) in phases.iter().enumerate() {
        let before = handshakes(&c);
        std::fs::write(c.dir.join("control.yaml"), format!("{base}{extra}")).unwrap();
        c.kill_control().unwrap();
        c.start_control().unwrap();
        // Both workloads renewed under this phase's CA (the log starts afresh with each control plane).
        poll(
            &format!("phase {} certificates", i + 1),
            Duration::from_secs(30),
            || {
                let log = c.control_log();
                let issued = |sa: &str| {
                    log.lines().any(|l| {
                        l.contains("certificate issued") && l.contains(&format!("/sa/{sa}"))
                    })
                };
                (issued("client") && issued("server")).then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", c.control_log()));
        // New connections handshake under this phase's certificates: a renewed certificate never rides a
        // connection the old one opened, so the server's ztunnel sees fresh mTLS handshakes.
        poll(
            &format!("phase {} handshakes", i + 1),
            Duration::from_secs(20),
            || (handshakes(&c) > before).then_some(()),
        )
        .unwrap();
        if i == 1 {
            // Both roots trusted: a certificate of the old root A is still admitted (the control for below).
            assert!(
                hbone_from_client(&c, &a_client).is_ok(),
                "A still trusted in phase 2"
            );
        }
    }
    // A retired: the server's ztunnel refuses a certificate of A, and says why.
    let refused = hbone_from_client(&c, &a_client);
    assert!(
        refused.is_err(),
        "a certificate of the retired root is refused"
    );
    poll("untrusted_issuer counted", Duration::from_secs(5), || {
        (metric(
            &c.metrics(1).unwrap(),
            "mesh_tls_handshake_failures_total",
            &["direction=\"inbound\"", "reason=\"untrusted_issuer\""],
        ) >= 1.0)
            .then_some(())
    })
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (ok, failed) = traffic.join().unwrap();
    assert!(
        ok > 20 && failed.is_empty(),
        "{ok} connections succeeded, failed: {failed:?}"
    );
    assert_eq!(
        echo(&mut long_lived, b"after"),
        b"after",
        "established connections survive rotation"
    );
    let root_file = std::fs::read_to_string(c.ca_dir().join("root-cert.pem")).unwrap();
    let b_root = std::fs::read_to_string(b_dir.join("ca-cert.pem")).unwrap();
    let pem = |s: &str| s.replace('\r', "").trim().to_string();
    assert_eq!(
        pem(&root_file),
        pem(&b_root),
        "clients now bootstrap from B alone"
    );
}

/// A certificate for the client's identity signed by the original root A (the control plane's generated CA), that
/// itself trusts B, so any refusal comes from the server's side.
fn a_signed_client(c: &Cluster, b_dir: &std::path::Path) -> mesh_core::tls::WorkloadCert {
    let a =
        mesh_core::ca::CertificateAuthority::load_or_create(&c.ca_dir(), "cluster.local").unwrap();
    let b = mesh_core::ca::CertificateAuthority::load_or_create(b_dir, "cluster.local").unwrap();
    let leaf = a
        .issue(
            &Identity::new("cluster.local", "default", "client"),
            Duration::from_secs(600),
        )
        .unwrap();
    mesh_core::tls::WorkloadCert::new(
        leaf.identity().clone(),
        leaf.chain().to_vec(),
        leaf.key().clone_key(),
        [a.roots(), b.roots()].concat(),
        leaf.not_after(),
    )
}

/// One HBONE CONNECT from the client pod (a marked socket, so not redirected) to the server's 15008, echoing.
fn hbone_from_client(c: &Cluster, cert: &mesh_core::tls::WorkloadCert) -> anyhow::Result<()> {
    use mesh_core::hbone::{ConnectRequest, H2Settings, Pool, PoolKey, PoolSettings};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ns = std::sync::Arc::new(NetNs::named(&c.pod("client").netns)?);
    let server = c.pod("server").ip;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let pool = Pool::new(
            PoolSettings::default(),
            H2Settings::default(),
            std::sync::Arc::new(move |addr| {
                ns.run(|| mesh_core::socket::marked_tcp_socket(addr))?
            }),
            mesh_core::metrics::HboneMetrics::default(),
        );
        let key = PoolKey {
            src: cert.identity().clone(),
            dst: Identity::new("cluster.local", "default", "server"),
            dst_addr: SocketAddr::new(server, 15008),
        };
        let req = ConnectRequest {
            authority: SocketAddr::new(server, 8080),
            forwarded_for: SocketAddr::new(c.pod("client").ip, 1234),
            baggage: None,
            traceparent: None,
        };
        let mut t = pool.connect(key, cert, req).await?;
        t.write_all(b"root").await?;
        t.shutdown().await?;
        let mut out = Vec::new();
        t.read_to_end(&mut out).await?;
        anyhow::ensure!(out == b"root", "echo: {out:?}");
        Ok(())
    })
}
