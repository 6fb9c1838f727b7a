//! The mesh as Prometheus sees it: Debian's real `prometheus` scrapes both ztunnels, the waypoint and the control
//! plane of the seed's cluster (targets from a file the harness writes), and PromQL through its HTTP API must
//! agree with what the test sent and received: the seed's 90/10 canary split, `x-canary` traffic all on v2, the
//! exact TCP bytes, and the control plane's push and convergence metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::http::{load, Req};
use mesh_tests::net::exchange;
use mesh_tests::prometheus::{mesh_targets, Prometheus};
use mesh_tests::{poll, require_netns, seed};

const REQUESTS: &str = "sum by (destination_version) (istio_requests_total{reporter=\"waypoint\",destination_workload=~\"order-v.*\",response_code=\"200\"})";

/// Waits until a query's answer stops changing (Prometheus caught up with traffic that has ended).
fn settled(p: &Prometheus, q: &str) -> BTreeMap<String, f64> {
    let mut last = p.by(q, "destination_version").unwrap();
    poll("the query to settle", Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(1500)); // more than one scrape interval between looks
        let now = p.by(q, "destination_version").ok()?;
        let same = now == last;
        last = now.clone();
        same.then_some(now)
    })
    .unwrap()
}

fn get(m: &BTreeMap<String, f64>, k: &str) -> f64 {
    m.get(k).copied().unwrap_or(0.0)
}

#[test]
fn prometheus_sees_the_canary_split_and_the_bytes_sent() {
    require_netns!();
    if let Some(reason) = mesh_tests::prometheus::skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let c = seed::start().unwrap();
    seed::wait_for_routes(&c).unwrap();
    let prom = Prometheus::start(&c, mesh_targets(&c, &["waypoint"])).unwrap();
    let sleep = c.pod("sleep").netns.clone();
    let vip: SocketAddr = seed::ORDER_VIP.parse().unwrap();

    // x-canary: true goes to v2, every one of them, and Prometheus counts exactly those.
    let before = settled(&prom, REQUESTS);
    let replies = load(&sleep, vip, 100, 4, |_| {
        Req::get("/").header("x-canary", "true")
    })
    .unwrap();
    assert!(replies
        .iter()
        .all(|r| r.as_ref().is_ok_and(|r| r.header("x-version") == "v2")));
    let after_canary = settled(&prom, REQUESTS);
    assert_eq!(
        get(&after_canary, "v2") - get(&before, "v2"),
        100.0,
        "{after_canary:?}"
    );
    assert_eq!(
        get(&after_canary, "v1"),
        get(&before, "v1"),
        "canary traffic reached v1"
    );

    // The 90/10 split under steady traffic: what the dashboards' rate() query shows while it flows, and the
    // exact counts once it has stopped.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, sleep) = (stop.clone(), sleep.clone());
        std::thread::spawn(move || {
            let mut sent: BTreeMap<String, f64> = BTreeMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = mesh_tests::http::request(&sleep, vip, Req::get("/")).unwrap();
                *sent.entry(r.header("x-version").to_string()).or_default() += 1.0;
            }
            sent
        })
    };
    // Deliberately let traffic flow: the rate window must hold only steady traffic of series that exist.
    std::thread::sleep(Duration::from_secs(6));
    let rates = prom
        .by(
            "sum by (destination_version) (rate(istio_requests_total{reporter=\"waypoint\",destination_workload=~\"order-v.*\"}[4s]))",
            "destination_version",
        )
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = traffic.join().unwrap();
    let total: f64 = rates.values().sum();
    assert!(total > 0.0, "{rates:?}");
    assert!(
        (get(&rates, "v2") / total - 0.10).abs() < 0.06,
        "rate share of v2 {} vs the seed's 10%: {rates:?}",
        get(&rates, "v2") / total
    );
    let n: f64 = sent.values().sum();
    let v2_share = get(&sent, "v2") / n;
    assert!(
        n > 200.0 && (0.04..=0.16).contains(&v2_share),
        "the seed's 90/10 is off: {sent:?}"
    );
    let after = settled(&prom, REQUESTS);
    for v in ["v1", "v2"] {
        assert_eq!(
            get(&after, v) - get(&after_canary, v),
            get(&sent, v),
            "{v}: {after:?} vs {sent:?}"
        );
    }

    // L4: the bytes sleep sent to echo-v2 (across nodes, over HBONE), as the destination ztunnel counts them.
    let bytes = |name: &str| {
        format!("sum by (destination_version) ({name}{{reporter=\"destination\",source_workload=\"sleep\",destination_workload=\"echo-v2\"}})")
    };
    let (rx, tx) = (
        bytes("istio_tcp_received_bytes_total"),
        bytes("istio_tcp_sent_bytes_total"),
    );
    let (rx0, tx0) = (settled(&prom, &rx), settled(&prom, &tx));
    let payload = vec![b'x'; 100_000];
    let echoed = exchange(&sleep, SocketAddr::new(c.pod("echo-v2").ip, 8080), &payload).unwrap();
    assert_eq!(echoed.len(), payload.len());
    let (rx1, tx1) = (settled(&prom, &rx), settled(&prom, &tx));
    let sum = |m: &BTreeMap<String, f64>| m.values().sum::<f64>();
    assert_eq!(sum(&rx1) - sum(&rx0), 100_000.0, "received bytes");
    assert_eq!(sum(&tx1) - sum(&tx0), 100_000.0, "sent bytes");

    // The control plane's pushes and convergence are there.
    assert!(
        prom.scalar("sum({__name__=~\"pilot_xds_pushes(_total)?\"})")
            .unwrap()
            > 0.0
    );
    assert!(!prom
        .query("pilot_proxy_convergence_time_count")
        .unwrap()
        .is_empty());

    // Istio's names, spelt as Istio spells them (its dashboards query these), on the processes that emit them.
    for name in [
        "istio_requests_total",
        "istio_request_duration_milliseconds_bucket",
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
        "istio_tcp_sent_bytes_total",
        "istio_tcp_received_bytes_total",
        "pilot_xds",
        "pilot_xds_pushes",
        "pilot_proxy_convergence_time_bucket",
        "citadel_server_csr_count",
        "citadel_server_success_cert_issuance_count",
    ] {
        assert!(
            !prom.query(name).unwrap().is_empty(),
            "{name} is not scraped"
        );
    }
    // Process metrics on every process.
    for metric in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        let jobs = prom
            .by(&format!("count by (job) ({metric})"), "job")
            .unwrap();
        let jobs: Vec<(&str, f64)> = jobs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            jobs,
            [("control", 1.0), ("waypoint", 1.0), ("ztunnel", 2.0)],
            "{metric}"
        );
    }
    let rss = prom
        .scalar("process_resident_memory_bytes{job=\"ztunnel\"}")
        .unwrap();
    assert!(rss > 1e6 && rss < 1e9, "ztunnel RSS {rss}");
    // Bounded cardinality: no label grows with connections or requests (1,200 requests and a dozen connections
    // were made; a per-request or per-connection label would show here).
    let series = prom.scalar("count({__name__=~\"istio_.*\"})").unwrap();
    assert!(series < 200.0, "{series} istio_* series");

    // Every query of the dashboards the chart ships answers with data from this cluster (All selected; a window
    // that holds the traffic above).
    let queries = mesh_tests::prometheus::dashboard_queries("60s").unwrap();
    assert!(queries.len() > 60, "{} dashboard queries", queries.len());
    let empty: Vec<String> = queries
        .iter()
        .filter(|q| prom.query(&q.promql).map_or(true, |r| r.is_empty()))
        .map(|q| format!("{} / {}: {}", q.file, q.panel, q.promql))
        .collect();
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );
}
