//! The L4 data path across two nodes: HBONE between ztunnels, passthrough, enrollment, restart, drain.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::net::{connect_in, contains, count_packets, exchange, whoami};
use mesh_tests::{poll, require_netns, Cluster, PodSpec};

const MARKER: &[u8] = b"MARKER-7f3a9c-plaintext-must-not-appear";

fn two_nodes() -> Cluster {
    Cluster::start(
        2,
        vec![
            PodSpec::mesh("client", 0),
            PodSpec::mesh("neighbour", 0),
            PodSpec::mesh("server", 1),
            PodSpec::plain("outside", 1),
        ],
    )
    .expect("cluster starts")
}

fn metric_value(metrics: &str, name: &str, must_contain: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && must_contain.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn pod_to_pod_traffic_crosses_nodes_over_mtls_hbone() {
    require_netns!();
    let c = two_nodes();
    let (client, server) = (c.pod("client"), c.pod("server"));
    let cap = c.capture().unwrap();
    let pcap_file = cap.file().to_path_buf();
    let echoed = exchange(&client.netns, SocketAddr::new(server.ip, 8080), MARKER).unwrap();
    assert_eq!(echoed, MARKER);
    // The app saw the connection come from its node's ztunnel inside the pod, not from the client directly.
    let seen = whoami(&client.netns, server.ip).unwrap();
    assert_eq!(
        seen.ip(),
        server.ip,
        "server should see ztunnel (its own pod address), saw {seen}"
    );
    let pcap = cap.finish().unwrap();
    assert!(
        !contains(&pcap, MARKER),
        "the marker crossed the node link in plaintext"
    );
    let hbone_packets = count_packets(&pcap_file, "tcp port 15008").unwrap();
    assert!(hbone_packets > 0, "no HBONE packets on the node link");
    let to_app_port = count_packets(&pcap_file, "tcp port 8080").unwrap();
    assert_eq!(
        to_app_port, 0,
        "traffic to the app port crossed the link outside the tunnel"
    );

    let m = c.metrics(1).unwrap();
    let opened = metric_value(
        &m,
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"destination\"",
            "source_workload=\"client\"",
            "destination_workload=\"server\"",
            "connection_security_policy=\"mutual_tls\"",
            "source_principal=\"spiffe://cluster.local/ns/default/sa/client\"",
        ],
    );
    assert!(
        opened >= 2.0,
        "destination ztunnel should count 2 mTLS connections:\n{m}"
    );
    // One access log line per connection, at the destination too: who, to whom, bytes.
    let line = poll("the access log line", Duration::from_secs(5), || {
        c.ztunnel_log(1)
            .lines()
            .find(|l| {
                l.contains("access: connection")
                    && l.contains("src_workload=default/client")
                    && l.contains(&format!("bytes_received={}", MARKER.len()))
            })
            .map(str::to_string)
    })
    .unwrap();
    assert!(
        line.contains("dst_workload=default/server") && line.contains("mutual_tls"),
        "{line}"
    );
    let received = poll("bytes metric", Duration::from_secs(5), || {
        let m = c.metrics(1).ok()?;
        let v = metric_value(
            &m,
            "istio_tcp_received_bytes_total",
            &["reporter=\"destination\""],
        );
        (v >= MARKER.len() as f64).then_some(v)
    })
    .unwrap();
    assert!(received >= MARKER.len() as f64);
}

#[test]
fn non_mesh_destination_passes_through_as_plain_tcp() {
    require_netns!();
    let c = two_nodes();
    let (client, outside) = (c.pod("client"), c.pod("outside"));
    let cap = c.capture().unwrap();
    let echoed = exchange(&client.netns, SocketAddr::new(outside.ip, 8080), MARKER).unwrap();
    assert_eq!(echoed, MARKER);
    let seen = whoami(&client.netns, outside.ip).unwrap();
    assert_eq!(
        seen.ip(),
        client.ip,
        "passthrough keeps the pod's own source address"
    );
    let pcap = cap.finish().unwrap();
    assert!(
        contains(&pcap, MARKER),
        "passthrough traffic should be plain TCP on the wire"
    );
}

#[test]
fn service_vip_is_balanced_over_endpoints() {
    require_netns!();
    let mut c = Cluster::start(
        2,
        vec![
            PodSpec::mesh("client", 0),
            PodSpec {
                labels: vec![("app".into(), "echo".into())],
                ..PodSpec::mesh("echo-1", 0)
            },
            PodSpec {
                labels: vec![("app".into(), "echo".into())],
                ..PodSpec::mesh("echo-2", 1)
            },
        ],
    )
    .unwrap();
    c.add_service("echo", "198.18.255.10", 80, 8081, "echo")
        .unwrap();
    let client = c.pod("client").netns.clone();
    let vip: SocketAddr = "198.18.255.10:80".parse().unwrap();
    // Wait for ztunnel to pick the new service up from the watched file.
    poll("service to resolve", Duration::from_secs(10), || {
        exchange(&client, vip, b"").ok().filter(|o| !o.is_empty())
    })
    .unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        let out = String::from_utf8(exchange(&client, vip, b"").unwrap()).unwrap();
        seen.insert(out.trim().parse::<SocketAddr>().unwrap().ip());
    }
    let expected: std::collections::HashSet<_> = [c.pod("echo-1").ip, c.pod("echo-2").ip]
        .into_iter()
        .collect();
    assert_eq!(seen, expected, "round robin should reach both endpoints");
    let m = c.metrics(1).unwrap();
    let to_service = metric_value(
        &m,
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"destination\"",
            "destination_service=\"echo.default.svc.cluster.local\"",
        ],
    );
    assert!(
        to_service >= 1.0,
        "destination telemetry names the service:\n{m}\n{}",
        c.config_dump(1).unwrap()["state"]
    );
}

#[test]
fn unenrolling_a_pod_restores_direct_networking() {
    require_netns!();
    let mut c = two_nodes();
    let server_ip = c.pod("server").ip;
    let client_ns = c.pod("client").netns.clone();
    let rules = mesh_tests::sh(
        "ip",
        &["netns", "exec", &client_ns, "iptables", "-t", "nat", "-S"],
    )
    .unwrap();
    assert!(
        rules.contains("MESH_OUTPUT"),
        "enrolled pod should have redirection rules:\n{rules}"
    );

    c.unenroll(c.pod_index("client")).unwrap();
    let rules = mesh_tests::sh(
        "ip",
        &["netns", "exec", &client_ns, "iptables", "-t", "nat", "-S"],
    )
    .unwrap();
    assert!(!rules.contains("MESH"), "rules should be gone:\n{rules}");
    let dump = c.config_dump(0).unwrap();
    let pods: Vec<&str> = dump["pods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        pods,
        ["neighbour"],
        "only the unenrolled pod leaves ztunnel"
    );
    // Its neighbour on the same node is undisturbed: still captured, still over HBONE.
    let cap = c.capture().unwrap();
    let echoed = exchange(
        &c.pod("neighbour").netns,
        SocketAddr::new(server_ip, 8080),
        MARKER,
    )
    .unwrap();
    assert_eq!(echoed, MARKER);
    assert!(
        !contains(&cap.finish().unwrap(), MARKER),
        "the neighbour must still be tunnelled"
    );
    assert!(
        dump["pods"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != "client"),
        "{dump}"
    );

    let cap = c.capture().unwrap();
    let echoed = exchange(&client_ns, SocketAddr::new(server_ip, 8080), MARKER).unwrap();
    assert_eq!(echoed, MARKER);
    let pcap = cap.finish().unwrap();
    assert!(
        contains(&pcap, MARKER),
        "an unenrolled pod's traffic is direct (plain) again"
    );

    // And it no longer depends on its node's ztunnel at all.
    c.signal_ztunnel(0, nix::sys::signal::Signal::SIGKILL)
        .unwrap()
        .wait()
        .unwrap();
    let echoed = exchange(&client_ns, SocketAddr::new(server_ip, 8080), b"still-here").unwrap();
    assert_eq!(echoed, b"still-here");
}

#[test]
fn ztunnel_restart_reestablishes_service() {
    require_netns!();
    let mut c = two_nodes();
    let (client_ns, server_ip) = (c.pod("client").netns.clone(), c.pod("server").ip);
    let dst = SocketAddr::new(server_ip, 8080);
    assert_eq!(exchange(&client_ns, dst, b"before").unwrap(), b"before");
    c.signal_ztunnel(0, nix::sys::signal::Signal::SIGKILL)
        .unwrap()
        .wait()
        .unwrap();
    assert!(
        exchange(&client_ns, dst, b"during").is_err(),
        "captured traffic has nowhere to go while ztunnel is down"
    );
    c.start_ztunnel(0).unwrap();
    let echoed = poll("service after restart", Duration::from_secs(15), || {
        exchange(&client_ns, dst, b"after").ok()
    })
    .unwrap();
    assert_eq!(echoed, b"after");
}

#[test]
fn sigterm_drains_open_connections_then_exits() {
    require_netns!();
    let mut c = two_nodes();
    let (client_ns, server_ip) = (c.pod("client").netns.clone(), c.pod("server").ip);
    let mut open = connect_in(
        &client_ns,
        SocketAddr::new(server_ip, 8080),
        Duration::from_secs(5),
    )
    .unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    open.write_all(b"one").unwrap();
    let mut buf = [0u8; 3];
    open.read_exact(&mut buf).unwrap();
    let mut zt = c
        .signal_ztunnel(0, nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    // New connections are refused once draining...
    poll("listener to close", Duration::from_secs(5), || {
        exchange(&client_ns, SocketAddr::new(server_ip, 8080), b"x")
            .is_err()
            .then_some(())
    })
    .unwrap();
    // ...while the open one keeps working until it finishes.
    open.write_all(b"two").unwrap();
    open.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"two");
    assert!(
        zt.try_wait().unwrap().is_none(),
        "ztunnel must wait for the open connection"
    );
    drop(open);
    let status = poll("ztunnel to exit", Duration::from_secs(10), || {
        zt.try_wait().ok().flatten()
    })
    .unwrap();
    assert!(
        status.success(),
        "ztunnel exits cleanly after draining: {status}"
    );
}

#[test]
fn connection_to_ztunnel_own_port_is_refused() {
    require_netns!();
    let c = two_nodes();
    let client = c.pod("client");
    // The pod reaching its own 15001 directly must not loop back into ztunnel.
    match exchange(&client.netns, SocketAddr::new(client.ip, 15001), b"loop?") {
        Ok(out) => assert!(out.is_empty(), "closed without data, got {out:?}"),
        // Closed with a reset is as good; a timeout (a loop holding the connection) is not.
        Err(e) => {
            let kind = e.downcast_ref::<std::io::Error>().map(std::io::Error::kind);
            assert!(
                // NotConnected: the reset arrived before our half-close.
                matches!(
                    kind,
                    Some(
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::BrokenPipe
                            | std::io::ErrorKind::NotConnected
                    )
                ),
                "a connection to 15001 must be closed at once: {e:#}"
            );
        }
    }
    // ztunnel is unharmed: the pod's next connection is proxied as usual (the app sees ztunnel connecting from
    // inside its own pod, so its own address).
    let server = c.pod("server").ip;
    let seen = whoami(&client.netns, server).expect("proxied after the loop attempt");
    assert_eq!(seen.ip(), server);
}

#[test]
fn hostile_bytes_on_every_port_do_not_crash_ztunnel() {
    require_netns!();
    let mut c = two_nodes();
    let (outside, server_ip) = (c.pod("outside").netns.clone(), c.pod("server").ip);
    let garbage: Vec<Vec<u8>> = vec![
        b"\x16\x03\x01\xff\xff garbage handshake".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00".to_vec(),
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect(),
        b"GET /config_dump HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n".to_vec(),
    ];
    // Pod ports from a non-mesh neighbour, node ports from inside the node.
    for port in [15008u16, 15006, 15001] {
        for g in &garbage {
            let _ = exchange(&outside, SocketAddr::new(server_ip, port), g);
        }
    }
    let node = c.nodes[1].netns.clone();
    for port in [15000u16, 15020, 15021] {
        for g in &garbage {
            let _ = exchange(
                &node,
                SocketAddr::new("127.0.0.1".parse().unwrap(), port),
                g,
            );
        }
    }
    let client = c.pod("client").netns.clone();
    assert_eq!(
        exchange(&client, SocketAddr::new(server_ip, 8080), b"alive").unwrap(),
        b"alive"
    );
    let zt = c
        .signal_ztunnel(1, nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let out = zt.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ztunnel on node 2 must still be running and exit cleanly: {}",
        out.status
    );
}

#[test]
fn agent_restart_replays_its_pods_and_drops_only_what_it_no_longer_holds() {
    require_netns!();
    let mut c = two_nodes();
    let (client_ns, dst) = (
        c.pod("client").netns.clone(),
        SocketAddr::new(c.pod("server").ip, 8080),
    );
    assert_eq!(exchange(&client_ns, dst, b"before").unwrap(), b"before");
    let zt_before = c.ztunnel_log(0).len();
    c.signal_agent(0, nix::sys::signal::Signal::SIGKILL)
        .unwrap()
        .wait()
        .unwrap();
    // Enrolled pods do not depend on the agent being up.
    assert_eq!(
        exchange(&client_ns, dst, b"agent-down").unwrap(),
        b"agent-down"
    );
    // The neighbour's record disappears while the agent is down, as for a pod deleted meanwhile.
    let record = c.nodes[0]
        .run_dir
        .join("pods")
        .join(format!("{}.json", c.pod("neighbour").uid()));
    std::fs::remove_file(&record).unwrap();
    c.start_agent(0).unwrap();
    let names = |c: &Cluster| -> Vec<String> {
        c.config_dump(0).unwrap()["pods"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str().map(String::from))
            .collect()
    };
    poll(
        "ztunnel to drop the pod missing from the snapshot",
        Duration::from_secs(20),
        || (names(&c) == ["client"]).then_some(()),
    )
    .unwrap();
    assert_eq!(exchange(&client_ns, dst, b"after").unwrap(), b"after");
    let log = c.ztunnel_log(0);
    assert!(
        !log[zt_before..].contains("pod enrolled"),
        "the snapshot re-enrolled a pod ztunnel already served:\n{log}"
    );
}
