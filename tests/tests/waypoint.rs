//! The waypoint with the user's seed manifests, unchanged: real control plane, ztunnels, waypoint and apps in
//! network namespaces. ztunnel sends traffic for the waypoint-bound `order-service` to the waypoint, which
//! routes each request.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use mesh_tests::http::{load, request, Reply, Req};
use std::io::{Read, Write};

use mesh_tests::net::{connect_in, exchange};
use mesh_tests::{bin, poll, require_netns, Cluster, Mode, PodSpec};

const VIP: &str = "198.18.255.30";
const SERVICE: &str = "default/order-service.default.svc.cluster.local";
const SEED_VS: &str = include_str!("../../model/tests/seed/virtualservice-order-service.yaml");
const SEED_DR: &str = include_str!("../../model/tests/seed/destinationrule-order-service.yaml");
const SEED_TS: &str = include_str!("../../model/tests/seed/trafficsplit-order-canary.yaml");

fn order_pod(name: &str, node: usize, version: &str) -> PodSpec {
    PodSpec::mesh(name, node).with_labels(&[("app", "order-service"), ("version", version)])
}

fn service(name: &str, vip: &str, selector: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "name": name, "namespace": "default", "vip": vip, "selector": selector,
        "ports": [
            {"port": 80, "targetPort": 8090},
            {"port": 81, "targetPort": 8080},
            {"port": 9000, "targetPort": 8091},
        ],
    })
}

/// client on node1; order-service v1 on both nodes, v2 on node2; the namespace's waypoint on node2.
fn order_cluster() -> Cluster {
    let mut c = Cluster::start_with(
        2,
        vec![
            PodSpec::mesh("client", 0),
            order_pod("order-v1a", 1, "v1"),
            order_pod("order-v1b", 0, "v1"),
            order_pod("order-v2", 1, "v2"),
            PodSpec::waypoint("waypoint", 1),
        ],
        Mode::ControlPlane,
    )
    .expect("cluster starts");
    c.namespace_labels
        .push(("istio.io/use-waypoint".into(), "waypoint".into()));
    c.start_waypoint("waypoint").expect("waypoint starts");
    let app = |v: Option<&str>| match v {
        Some(v) => serde_json::json!({"app": "order-service", "version": v}),
        None => serde_json::json!({"app": "order-service"}),
    };
    c.add_service_spec(service("order-service", VIP, app(None)))
        .unwrap();
    c.add_service_spec(service(
        "order-service-stable",
        "198.18.255.31",
        app(Some("v1")),
    ))
    .unwrap();
    c.add_service_spec(service(
        "order-service-canary",
        "198.18.255.32",
        app(Some("v2")),
    ))
    .unwrap();
    c
}

fn vip(port: u16) -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), port)
}

fn versions(replies: &[anyhow::Result<Reply>]) -> (usize, usize, Vec<String>) {
    let mut v2 = 0;
    let mut errors = Vec::new();
    for r in replies {
        match r {
            Ok(r) if r.status == 200 => v2 += usize::from(r.header("x-version") == "v2"),
            Ok(r) => errors.push(format!("{} {}", r.status, r.body.trim())),
            Err(e) => errors.push(e.to_string()),
        }
    }
    (replies.len(), v2, errors)
}

/// Within 4.5 standard deviations of a binomial with `p`: fails for a real skew, not by chance.
fn assert_split(n: usize, hits: usize, p: f64, what: &str) {
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    let expected = n as f64 * p;
    assert!(
        (hits as f64 - expected).abs() < 4.5 * sd,
        "{what}: {hits} of {n}, expected {expected:.0} ± {:.0}",
        4.5 * sd
    );
}

fn metric(text: &str, name: &str, must: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && must.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait_routed(c: &Cluster) {
    wait_ok(c, vip(80));
}

/// Polls until `addr` answers 200; on timeout, says what it answered last.
fn wait_ok(c: &Cluster, addr: SocketAddr) {
    let client = c.pod("client").netns.clone();
    let mut last = None;
    poll("a routed request", Duration::from_secs(20), || {
        let r = request(&client, addr, Req::get("/"));
        let ok = r.as_ref().is_ok_and(|r| r.status == 200);
        last = Some(r);
        ok.then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: last answer {last:?}\nwaypoint: {}",
            c.waypoint_log("waypoint")
        )
    });
}

#[test]
fn seed_routes_split_90_10_canary_header_wins_and_traffic_split_takes_over_without_loss() {
    require_netns!();
    let c = order_cluster();
    c.apply("vs.yaml", SEED_VS).unwrap();
    c.apply("dr.yaml", SEED_DR).unwrap();
    c.wait_l7("waypoint", SERVICE, |s| {
        s["routes"].as_array().is_some_and(|r| r.len() == 2)
    })
    .unwrap();
    wait_routed(&c);
    let client = c.pod("client").netns.clone();

    let replies = load(&client, vip(80), 10_000, 16, |_| Req::get("/")).unwrap();
    let (n, v2, errors) = versions(&replies);
    assert!(
        errors.is_empty(),
        "{} failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert_split(n, v2, 0.10, "VirtualService 90/10");

    let replies = load(&client, vip(80), 500, 8, |_| {
        Req::get("/").header("x-canary", "true")
    })
    .unwrap();
    let (n, v2, errors) = versions(&replies);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(v2, n, "every x-canary request reaches v2");
    // One access log line per request: method, path, status, flags, the upstream chosen.
    let log = c.waypoint_log("waypoint");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("access: request") && l.contains("status=200"))
        .collect();
    assert!(lines.len() >= 10_500, "{} access lines", lines.len());
    assert!(
        lines
            .iter()
            .any(|l| l.contains("method=GET") && l.contains("path=/") && l.contains("order-v2")),
        "{}",
        lines[0]
    );

    // Istio's waypoint metrics, by version.
    let m = c.waypoint_metrics("waypoint").unwrap();
    assert!(
        metric(
            &m,
            "istio_requests_total",
            &[
                "reporter=\"waypoint\"",
                "destination_version=\"v2\"",
                "response_code=\"200\""
            ]
        ) >= 1000.0,
        "{m}"
    );

    // Swap the VirtualService for the seed's TrafficSplit while requests are in flight: none is lost. The load
    // runs until the waypoint holds the new config, so the swap happens under it.
    let load_ns = client.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = stop.clone();
    let during = std::thread::spawn(move || {
        let mut all = Vec::new();
        while !running.load(std::sync::atomic::Ordering::Acquire) {
            all.extend(load(&load_ns, vip(80), 200, 8, |_| Req::get("/")).unwrap());
        }
        all
    });
    c.apply("ts.yaml", SEED_TS).unwrap();
    c.delete("vs.yaml").unwrap();
    c.wait_l7("waypoint", SERVICE, |s| {
        s["sources"].as_array().is_some_and(|src| {
            src.iter()
                .any(|x| x.as_str().unwrap_or("").contains("TrafficSplit"))
        })
    })
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (n, _, errors) = versions(&during.join().unwrap());
    assert!(
        n >= 200 && errors.is_empty(),
        "{n} requests, lost during the config change: {errors:?}"
    );
    let replies = load(&client, vip(80), 10_000, 16, |_| Req::get("/")).unwrap();
    let (n, v2, errors) = versions(&replies);
    assert!(errors.is_empty(), "{errors:?}");
    assert_split(n, v2, 0.10, "TrafficSplit 900/100");
}

#[test]
fn grpc_upgrades_and_opaque_tcp_pass_through_the_waypoint() {
    require_netns!();
    let c = order_cluster();
    wait_routed(&c);
    let client = c.pod("client").netns.clone();
    let out = Command::new("ip")
        .args(["netns", "exec", &client])
        .arg(bin("mesh-testapp").unwrap())
        .args(["grpc-check", &vip(9000).to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Serving"),
        "gRPC health check through the waypoint: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let m = c.waypoint_metrics("waypoint").unwrap();
    assert!(
        metric(
            &m,
            "istio_requests_total",
            &["request_protocol=\"grpc\"", "response_code=\"200\""]
        ) >= 1.0,
        "{m}"
    );
    // An HTTP/1.1 upgrade (as WebSocket does): 101 from the app, then one byte stream end to end.
    let mut s = connect_in(&client, vip(80), Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /upgrade HTTP/1.1\r\nHost: order-service\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(
        head.starts_with("http/1.1 101") && head.contains("upgrade: websocket"),
        "{head}"
    );
    s.write_all(b"frames after the upgrade").unwrap();
    let mut echoed = [0u8; 24];
    s.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"frames after the upgrade");

    // Not HTTP: forwarded as bytes to an endpoint.
    let echoed = exchange(&client, vip(81), b"opaque bytes \x00\x01").unwrap();
    assert_eq!(echoed, b"opaque bytes \x00\x01");
    // Behind a waypoint, the destination ztunnel reports the waypoint as the source (as Istio does).
    let m = c.metrics(0).unwrap() + &c.metrics(1).unwrap();
    assert!(
        m.lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total")
                && l.contains("source_workload=\"waypoint\"")
                && l.contains(
                    "source_principal=\"spiffe://cluster.local/ns/default/sa/waypoint\""
                )),
        "{m}"
    );
    poll(
        "opaque TCP counted by the waypoint",
        Duration::from_secs(10),
        || {
            let m = c.waypoint_metrics("waypoint").ok()?;
            let must = [
                "reporter=\"waypoint\"",
                "destination_service=\"order-service.default.svc.cluster.local\"",
            ];
            (metric(&m, "istio_tcp_received_bytes_total", &must) >= 15.0).then_some(())
        },
    )
    .unwrap();
}

fn served(c: &Cluster, pod: &str) -> u64 {
    let client = c.pod("client").netns.clone();
    let ip = c.pod(pod).ip;
    let r = request(
        &client,
        SocketAddr::new(ip, 8090),
        Req::get("/control/stats"),
    )
    .unwrap();
    r.body
        .trim()
        .strip_prefix("served=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad stats: {}", r.body))
}

fn set_failing(c: &Cluster, pod: &str, count: i64) {
    c.set_failing("client", pod, count).unwrap();
}

#[test]
fn outlier_detection_ejects_a_failing_pod_for_the_base_ejection_time() {
    require_netns!();
    let c = order_cluster();
    // The seed's rule with a shorter ejection, so the test sees the host return.
    let dr = SEED_DR
        .replace("baseEjectionTime: 30s", "baseEjectionTime: 12s")
        .replace("interval: 30s", "interval: 1s");
    c.apply("dr.yaml", &dr).unwrap();
    c.apply("vs.yaml", SEED_VS).unwrap();
    c.wait_l7("waypoint", SERVICE, |s| {
        s["routes"].as_array().is_some_and(|r| r.len() == 2)
    })
    .unwrap();
    wait_routed(&c);
    let client = c.pod("client").netns.clone();
    let bad = c.pod("order-v1a").ip.to_string();
    set_failing(&c, "order-v1a", -1);
    // Five 503s in a row eject it; Istio's default retry hides them from the client.
    let ejected = poll("order-v1a ejected", Duration::from_secs(30), || {
        let replies = load(&client, vip(80), 20, 2, |_| Req::get("/")).ok()?;
        assert!(
            replies
                .iter()
                .all(|r| r.as_ref().is_ok_and(|r| r.status == 200)),
            "retries hide the failing pod"
        );
        let dump = c.waypoint_dump("waypoint").ok()?;
        dump["clusters"]
            .as_array()?
            .iter()
            .find(|cl| {
                cl["name"].as_str().unwrap_or("").contains("|stable|")
                    && cl["ejected"]
                        .as_array()
                        .is_some_and(|e| e.iter().any(|ip| ip == bad.as_str()))
            })
            .map(|_| Instant::now())
    })
    .unwrap();
    // Ejections as metrics: one enforced, one active, on the stable subset's cluster (refreshed each second).
    poll("the ejection gauges", Duration::from_secs(5), || {
        let m = c.waypoint_metrics("waypoint").ok()?;
        let on = |name: &str| metric(&m, name, &["cluster_name=\"outbound|80|stable|"]);
        (on("envoy_cluster_outlier_detection_ejections_active") == 1.0
            && on("envoy_cluster_outlier_detection_ejections_enforced_total") >= 1.0)
            .then_some(())
    })
    .unwrap();
    set_failing(&c, "order-v1a", 0);
    let before = served(&c, "order-v1a");
    let replies = load(&client, vip(80), 300, 4, |_| Req::get("/")).unwrap();
    assert!(replies
        .iter()
        .all(|r| r.as_ref().is_ok_and(|r| r.status == 200)));
    assert!(
        ejected.elapsed() < Duration::from_secs(12),
        "the check ran within the ejection"
    );
    assert_eq!(
        served(&c, "order-v1a"),
        before,
        "an ejected host receives no traffic"
    );
    // After the base ejection time it is back.
    poll(
        "order-v1a back in rotation",
        Duration::from_secs(30),
        || {
            load(&client, vip(80), 20, 2, |_| Req::get("/")).ok()?;
            (served(&c, "order-v1a") > before).then_some(())
        },
    )
    .unwrap();
    assert!(
        ejected.elapsed() >= Duration::from_secs(11),
        "came back after {:?}",
        ejected.elapsed()
    );
}

const SLOW_DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: order-service-stable}
spec:
  host: order-service-stable
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
";

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn circuit_breaker_overflow_fails_fast_with_503_uo_and_bounded_memory() {
    require_netns!();
    let c = order_cluster();
    c.apply("dr-stable.yaml", SLOW_DR).unwrap();
    c.wait_l7(
        "waypoint",
        "default/order-service-stable.default.svc.cluster.local",
        |_| true,
    )
    .unwrap();
    let client = c.pod("client").netns.clone();
    let stable: SocketAddr = "198.18.255.31:80".parse().unwrap();
    wait_ok(&c, stable);
    // 1 connection + 1 pending: of 20 concurrent slow requests, the rest overflow at once.
    let replies = load(&client, stable, 20, 20, |_| Req::get("/delay/1500")).unwrap();
    let ok = replies
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status == 200))
        .count();
    let fast_uo = replies
        .iter()
        .filter(|r| {
            r.as_ref().is_ok_and(|r| {
                r.status == 503
                    && r.body.contains("overflow")
                    && r.elapsed < Duration::from_millis(1000)
            })
        })
        .count();
    assert!(
        ok >= 1 && fast_uo >= 15,
        "ok {ok}, fast overflows {fast_uo}: {replies:?}"
    );
    let m = c.waypoint_metrics("waypoint").unwrap();
    assert!(
        metric(
            &m,
            "istio_requests_total",
            &["response_flags=\"UO\"", "response_code=\"503\""]
        ) >= 15.0,
        "{m}"
    );
    // The circuit breaker's own count, per cluster, under Envoy's name.
    assert!(
        metric(
            &m,
            "envoy_cluster_upstream_rq_pending_overflow",
            &["cluster_name=\"outbound|80||order-service-stable."]
        ) >= 15.0,
        "{m}"
    );

    // Overflowing does not queue without bound: memory stays flat over thousands of refused requests.
    let pid = c.child_pid("waypoint").unwrap();
    let warm = load(&client, stable, 500, 50, |_| Req::get("/delay/200")).unwrap();
    drop(warm);
    let before = rss_kib(pid);
    let replies = load(&client, stable, 4_000, 50, |_| Req::get("/delay/200")).unwrap();
    let after = rss_kib(pid);
    let uo = replies
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status == 503))
        .count();
    assert!(uo >= 3_000, "{uo} overflowed");
    assert!(
        after < before + 16 * 1024,
        "waypoint RSS grew from {before} KiB to {after} KiB"
    );
}

const RETRY_VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: stable}
spec:
  hosts: [order-service-stable]
  http:
  - match: [{uri: {prefix: /delay}}]
    timeout: 300ms
    route: [{destination: {host: order-service-stable}}]
  - retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: order-service-stable}}]
";

#[test]
fn retries_and_timeouts_are_observable_from_the_client() {
    require_netns!();
    let c = order_cluster();
    c.apply("vs-stable.yaml", RETRY_VS).unwrap();
    c.wait_l7(
        "waypoint",
        "default/order-service-stable.default.svc.cluster.local",
        |s| s["routes"].as_array().is_some_and(|r| r.len() == 2),
    )
    .unwrap();
    let client = c.pod("client").netns.clone();
    let stable: SocketAddr = "198.18.255.31:80".parse().unwrap();
    wait_ok(&c, stable);
    // Three of the four attempts the route allows fail: the client still gets a 200.
    set_failing(&c, "order-v1a", 2);
    set_failing(&c, "order-v1b", 1);
    let before = served(&c, "order-v1a") + served(&c, "order-v1b");
    let r = request(&client, stable, Req::get("/")).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let attempts = served(&c, "order-v1a") + served(&c, "order-v1b") - before;
    // Three failures, then a success: 3 attempts when the load balancer's third pick is the pod that has
    // recovered, 4 when it is not; never fewer than the three failures.
    assert!(
        (3..=4).contains(&attempts),
        "the failed attempts reached the pods: {attempts}"
    );
    // Both pods failing: exactly 1 + 3 attempts, then the last 503 with Envoy's URX (retries exhausted).
    set_failing(&c, "order-v1a", -1);
    set_failing(&c, "order-v1b", -1);
    let before = served(&c, "order-v1a") + served(&c, "order-v1b");
    let r = request(&client, stable, Req::get("/")).unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    let attempts = served(&c, "order-v1a") + served(&c, "order-v1b") - before;
    assert_eq!(
        attempts, 4,
        "attempts: 3 retries are allowed, no more, no fewer"
    );
    let m = c.waypoint_metrics("waypoint").unwrap();
    assert!(
        metric(
            &m,
            "istio_requests_total",
            &["response_flags=\"URX\"", "response_code=\"503\""]
        ) >= 1.0,
        "{m}"
    );
    set_failing(&c, "order-v1a", 0);
    set_failing(&c, "order-v1b", 0);
    // The route's timeout cuts a slow answer short.
    let r = request(&client, stable, Req::get("/delay/3000")).unwrap();
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(r.elapsed < Duration::from_millis(2000), "{:?}", r.elapsed);
}

const FEATURES_VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: order-features}
spec:
  hosts: [order-service]
  http:
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: order-service}}]
  - match: [{uri: {prefix: /slow}}]
    fault: {delay: {fixedDelay: 400ms, percentage: {value: 100}}}
    route: [{destination: {host: order-service}}]
  - match: [{uri: {exact: /direct}}]
    directResponse: {status: 203, body: {string: made by the waypoint}}
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: shop.example}
  - match: [{uri: {prefix: /api/v1/}}]
    rewrite: {uri: /v2/, authority: orders.internal}
    headers:
      request: {set: {x-added: by-route}, remove: [x-secret]}
      response: {set: {x-served-by: waypoint}}
    route: [{destination: {host: order-service-stable}}]
  - match: [{uri: {prefix: /mirrored}}]
    mirror: {host: order-service-canary}
    mirrorPercentage: {value: 100}
    route: [{destination: {host: order-service-stable}}]
  - route: [{destination: {host: order-service}}]
";

#[test]
fn faults_direct_responses_redirects_rewrites_header_ops_and_mirrors() {
    require_netns!();
    let c = order_cluster();
    c.apply("vs.yaml", FEATURES_VS).unwrap();
    c.apply(
        "dr-stable.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: stable}\nspec:\n  host: order-service-stable\n  trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}\n",
    )
    .unwrap();
    c.wait_l7(
        "waypoint",
        "default/order-service-stable.default.svc.cluster.local",
        |_| true,
    )
    .unwrap();
    c.wait_l7("waypoint", SERVICE, |s| {
        s["routes"].as_array().is_some_and(|r| r.len() == 7)
    })
    .unwrap();
    wait_routed(&c);
    let client = c.pod("client").netns.clone();
    let get = |req: Req| request(&client, vip(80), req).unwrap();

    assert_eq!(get(Req::get("/abort")).status, 418);
    let slow = get(Req::get("/slow"));
    assert_eq!(slow.status, 200);
    assert!(
        slow.elapsed >= Duration::from_millis(400),
        "{:?}",
        slow.elapsed
    );
    let direct = get(Req::get("/direct"));
    assert_eq!(
        (direct.status, direct.body.as_str()),
        (203, "made by the waypoint")
    );
    let moved = get(Req::get("/old/page?x=1"));
    assert_eq!(moved.status, 301);
    assert_eq!(moved.header("location"), "http://shop.example/new?x=1");

    let r = get(Req::get("/api/v1/orders").header("x-secret", "s3cret"));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-seen-version"),
        "HTTP/2.0",
        "h2UpgradePolicy: UPGRADE"
    );
    assert_eq!(r.header("x-version"), "v1", "routed to the stable service");
    assert_eq!(r.header("x-seen-path"), "/v2/orders", "prefix rewritten");
    assert_eq!(
        r.header("x-seen-host"),
        "orders.internal",
        "authority rewritten"
    );
    assert!(r.body.contains("seen-x-added: by-route"), "{}", r.body);
    assert!(
        !r.body.contains("s3cret"),
        "removed header must not arrive: {}",
        r.body
    );
    assert_eq!(r.header("x-served-by"), "waypoint");

    // Every mirrored request also reaches the canary, whose answers are dropped.
    let before = served(&c, "order-v2");
    let replies = load(&client, vip(80), 20, 2, |_| Req::get("/mirrored")).unwrap();
    assert!(replies.iter().all(|r| r
        .as_ref()
        .is_ok_and(|r| r.status == 200 && r.header("x-version") == "v1")));
    poll(
        "mirrored copies at the canary",
        Duration::from_secs(10),
        || (served(&c, "order-v2") >= before + 20).then_some(()),
    )
    .unwrap();
}

const GAMMA_ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: order-gamma}
spec:
  parentRefs: [{group: \"\", kind: Service, name: order-service, port: 80}]
  rules:
  - backendRefs: [{name: order-service-stable, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /canary}}]
    filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-route, value: canary}]}}]
    backendRefs: [{name: order-service-canary, port: 80}]
";

#[test]
fn gateway_api_httproute_on_a_service_ranks_rules_by_precedence() {
    require_netns!();
    let c = order_cluster();
    c.apply("route.yaml", GAMMA_ROUTE).unwrap();
    c.wait_l7("waypoint", SERVICE, |s| {
        s["sources"].as_array().is_some_and(|src| {
            src.iter()
                .any(|x| x.as_str().unwrap_or("").contains("HTTPRoute"))
        })
    })
    .unwrap();
    wait_routed(&c);
    let client = c.pod("client").netns.clone();
    // The longer prefix wins although its rule comes second; `/canaryx` is not under `/canary`.
    for (path, version, header) in [
        ("/canary", "v2", "canary"),
        ("/canary/a", "v2", "canary"),
        ("/canaryx", "v1", ""),
        ("/", "v1", ""),
    ] {
        let r = request(&client, vip(80), Req::get(path)).unwrap();
        assert_eq!(
            (r.status, r.header("x-version"), r.header("x-route")),
            (200, version, header),
            "{path}"
        );
    }
}
