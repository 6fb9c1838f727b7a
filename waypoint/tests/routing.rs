//! The waypoint's routing, outlier detection and circuit breakers, on their own (no network).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};
use mesh_core::workload::state::Workload;
use mesh_proto::mesh::l7::v1 as pb;
use waypoint::cluster::{ClusterKey, Clusters, Outcome};
use waypoint::routes::{compile, Action, Limits, Outlier, Policy, RequestView};
use waypoint::upstream::h1::{Checkout, H1Pool, PoolError};

fn exact(v: &str) -> Option<pb::StringMatch> {
    Some(pb::StringMatch {
        kind: Some(pb::string_match::Kind::Exact(v.into())),
    })
}

fn prefix(v: &str) -> Option<pb::StringMatch> {
    Some(pb::StringMatch {
        kind: Some(pb::string_match::Kind::Prefix(v.into())),
    })
}

fn regex(v: &str) -> Option<pb::StringMatch> {
    Some(pb::StringMatch {
        kind: Some(pb::string_match::Kind::Regex(v.into())),
    })
}

fn dest(subset: &str, weight: u32) -> pb::WeightedDestination {
    pb::WeightedDestination {
        destination: Some(pb::Destination {
            service: "default/order-service.default.svc.cluster.local".into(),
            subset: subset.into(),
            port: 0,
        }),
        weight,
        ..Default::default()
    }
}

/// The seed VirtualService as the control plane sends it.
fn seed() -> pb::L7Service {
    pb::L7Service {
        namespace: "default".into(),
        hostname: "order-service.default.svc.cluster.local".into(),
        routes: vec![
            pb::HttpRoute {
                name: "canary".into(),
                matches: vec![pb::RouteMatch {
                    headers: vec![pb::HeaderMatch {
                        name: "x-canary".into(),
                        value: exact("true"),
                        invert: false,
                    }],
                    ..Default::default()
                }],
                destinations: vec![dest("canary", 100)],
                ..Default::default()
            },
            pb::HttpRoute {
                name: "split".into(),
                destinations: vec![dest("stable", 90), dest("canary", 10)],
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

fn view<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
    RequestView {
        method,
        path,
        authority: "order-service",
        headers,
        port: 80,
        source_ip: Some("198.18.1.2".parse().unwrap()),
        source_namespace: Some("default"),
    }
}

#[test]
fn first_matching_route_wins() {
    let routes = compile(&seed()).unwrap();
    let get = Method::GET;
    let mut h = HeaderMap::new();
    let (r, m) = routes.route(&view(&get, "/", &h)).unwrap();
    assert_eq!(r.name, "split");
    assert!(m.is_none());
    let Action::Forward { total_weight, .. } = &r.action else {
        panic!("forward")
    };
    assert_eq!(*total_weight, 100);
    h.insert("x-canary", "true".parse().unwrap());
    assert_eq!(routes.route(&view(&get, "/", &h)).unwrap().0.name, "canary");
    h.insert("x-canary", "TRUE".parse().unwrap());
    assert_eq!(
        routes.route(&view(&get, "/", &h)).unwrap().0.name,
        "split",
        "exact is case-sensitive"
    );
}

#[test]
fn matches_combine_and_within_a_block_or_across_blocks() {
    let mut svc = seed();
    svc.routes = vec![pb::HttpRoute {
        name: "api".into(),
        matches: vec![
            pb::RouteMatch {
                uri: prefix("/api"),
                method: exact("POST"),
                query_params: vec![pb::HeaderMatch {
                    name: "v".into(),
                    value: regex("[0-9]+"),
                    invert: false,
                }],
                headers: vec![pb::HeaderMatch {
                    name: "x-debug".into(),
                    value: None,
                    invert: true,
                }],
                ..Default::default()
            },
            pb::RouteMatch {
                uri: exact("/health"),
                ..Default::default()
            },
        ],
        destinations: vec![dest("", 0), dest("stable", 1)],
        ..Default::default()
    }];
    let routes = compile(&svc).unwrap();
    let (post, get) = (Method::POST, Method::GET);
    let mut h = HeaderMap::new();
    assert!(routes.route(&view(&post, "/api/x?v=12", &h)).is_some());
    assert!(
        routes.route(&view(&post, "/api/x?v=1a", &h)).is_none(),
        "regex is anchored"
    );
    assert!(
        routes.route(&view(&get, "/api/x?v=12", &h)).is_none(),
        "method must match too"
    );
    assert!(
        routes.route(&view(&get, "/health?probe=1", &h)).is_some(),
        "exact ignores the query"
    );
    assert!(routes.route(&view(&get, "/healthz", &h)).is_none());
    h.insert("x-debug", "1".parse().unwrap());
    assert!(
        routes.route(&view(&post, "/api/x?v=12", &h)).is_none(),
        "withoutHeaders"
    );
}

#[test]
fn invalid_config_names_the_field() {
    let mut svc = seed();
    svc.routes[0].matches[0].headers[0].value = regex("(unclosed");
    let e = compile(&svc).unwrap_err().to_string();
    assert!(
        e.contains("order-service") && e.contains("routes[0].matches[0].headers[0]"),
        "{e}"
    );
    let mut svc = seed();
    svc.routes[1].destinations.clear();
    let e = compile(&svc).unwrap_err().to_string();
    assert!(e.contains("routes[1].destinations"), "{e}");
}

fn workload(ip: &str) -> Arc<Workload> {
    Arc::new(
        mesh_primitives::yaml::from_str(&format!(
            "{{name: w{ip}, namespace: default, ip: '{ip}', node: node1}}"
        ))
        .unwrap(),
    )
}

fn outlier_policy(base: Duration, max_percent: u32) -> Policy {
    Policy {
        outlier: Some(Outlier {
            consecutive_5xx: 5,
            consecutive_gateway: 0,
            interval: Duration::from_secs(10),
            base_ejection: base,
            max_ejection_percent: max_percent,
        }),
        ..Default::default()
    }
}

fn key() -> ClusterKey {
    ClusterKey {
        service: "default/order-service.default.svc.cluster.local".into(),
        subset: Some("stable".into()),
        port: 80,
    }
}

#[test]
fn five_consecutive_5xx_eject_a_host_which_returns_after_the_base_time() {
    let clusters = Clusters::default();
    let c = clusters.get(key(), &outlier_policy(Duration::from_millis(300), 10), 1);
    assert_eq!(
        key().to_string(),
        "outbound|80|stable|order-service.default.svc.cluster.local"
    );
    let eps = vec![workload("198.18.1.10"), workload("198.18.1.11")];
    let bad: IpAddr = "198.18.1.10".parse().unwrap();
    // Time is stepped, not slept: `t(ms)` is that long after the start.
    let t0 = std::time::Instant::now();
    let t = |ms: u64| t0 + Duration::from_millis(ms);
    for _ in 0..4 {
        assert!(!c.record_at(bad, Outcome::Status(503), 2, t(0)));
    }
    assert!(
        !c.record_at(bad, Outcome::Status(200), 2, t(0)),
        "a success resets the count"
    );
    for _ in 0..4 {
        assert!(!c.record_at(bad, Outcome::Status(500), 2, t(0)));
    }
    assert!(
        c.record_at(bad, Outcome::LocalFailure, 2, t(0)),
        "connect failures count as 5xx"
    );
    for _ in 0..50 {
        let (w, _) = c.pick(&eps, &[]).unwrap();
        assert_ne!(w.ip, bad, "ejected hosts get no traffic");
    }
    // 10% of 2 hosts rounds to 0, yet one host may be ejected; not a second one.
    let good: IpAddr = "198.18.1.11".parse().unwrap();
    for _ in 0..5 {
        assert!(!c.record_at(good, Outcome::Status(503), 2, t(10)));
    }
    assert_eq!(c.ejected_at(t(290)), vec![bad], "ejected for the base time");
    assert!(
        c.ejected_at(t(310)).is_empty(),
        "back after the base ejection time"
    );
    // Ejected again (within one interval, so the multiplier has not decayed): twice as long.
    for _ in 0..5 {
        c.record_at(bad, Outcome::Status(503), 2, t(400));
    }
    assert_eq!(
        c.ejected_at(t(990)),
        vec![bad],
        "second ejection lasts 2 × base"
    );
    assert!(c.ejected_at(t(1010)).is_empty());
}

#[test]
fn gateway_errors_only_count_502_503_504() {
    let clusters = Clusters::default();
    let mut p = outlier_policy(Duration::from_secs(30), 100);
    if let Some(o) = p.outlier.as_mut() {
        o.consecutive_5xx = 0;
        o.consecutive_gateway = 2;
    }
    let c = clusters.get(key(), &p, 1);
    let ip: IpAddr = "198.18.1.10".parse().unwrap();
    assert!(!c.record(ip, Outcome::Status(500), 1));
    assert!(!c.record(ip, Outcome::Status(500), 1));
    assert!(!c.record(ip, Outcome::Status(502), 1));
    assert!(c.record(ip, Outcome::Status(504), 1));
    assert!(
        c.pick(&[workload("198.18.1.10")], &[]).is_none(),
        "no healthy host"
    );
}

#[test]
fn a_new_policy_reaches_an_existing_cluster() {
    let clusters = Clusters::default();
    let c = clusters.get(key(), &Policy::default(), 1);
    let ip: IpAddr = "198.18.1.10".parse().unwrap();
    for _ in 0..10 {
        assert!(
            !c.record(ip, Outcome::Status(503), 1),
            "no outlier detection yet"
        );
    }
    let c2 = clusters.get(key(), &outlier_policy(Duration::from_secs(30), 100), 2);
    assert!(Arc::ptr_eq(&c, &c2), "state survives a config swap");
    let ejected = (0..5).any(|_| c.record(ip, Outcome::Status(503), 1));
    assert!(ejected);
}

#[tokio::test]
async fn connection_pool_overflows_instead_of_queueing_without_bound() {
    let pool = H1Pool::default();
    let limits = Limits {
        max_connections: Some(1),
        max_pending: Some(1),
        connect_timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    };
    let host: IpAddr = "198.18.1.10".parse().unwrap();
    let Ok(Checkout::Dial(slot)) = pool.checkout(host, &limits).await else {
        panic!("the first request may dial");
    };
    let (p, l) = (pool.clone(), limits.clone());
    let pending = tokio::spawn(async move {
        p.checkout(host, &l)
            .await
            .map(|c| matches!(c, Checkout::Dial(_)))
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pool.pending() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second request never queued"
        );
        tokio::task::yield_now().await;
    }
    assert!(matches!(
        pool.checkout(host, &limits).await,
        Err(PoolError::Overflow)
    ));
    drop(slot);
    assert!(
        pending.await.unwrap().unwrap(),
        "the pending request gets the freed slot"
    );
    assert_eq!(pool.connections(), 0);
}
