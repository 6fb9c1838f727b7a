//! The seed manifests (Istio VirtualService, DestinationRule, PeerAuthentication, SMI TrafficSplit) load
//! unchanged with no error and no warning. `tests/seed/` is the in-repo copy; the shared original is checked
//! too when it is present on this machine.

use std::path::Path;

use mesh_model::{analyze, load_dir, ConfigSet, H2UpgradePolicy, MtlsMode, Severity};

fn check_seed(dir: &Path) -> ConfigSet {
    let (set, diags) = load_dir(dir, None);
    assert!(
        diags.is_empty(),
        "{}: {:#?}",
        dir.display(),
        diags.iter().map(|d| format!("{d:#}")).collect::<Vec<_>>()
    );
    assert_eq!(set.len(), 4);

    let vs = set.virtual_services().next().expect("a VirtualService");
    assert_eq!(
        (vs.metadata.namespace.as_str(), vs.metadata.name.as_str()),
        ("default", "order-service")
    );
    assert_eq!(vs.spec.hosts, vec!["order-service"]);
    assert_eq!(vs.spec.http.len(), 2);
    assert_eq!(
        vs.spec.http[0].matches[0].headers["x-canary"]
            .exact
            .as_deref(),
        Some("true")
    );
    assert_eq!(
        vs.spec.http[0].route[0].destination.subset.as_deref(),
        Some("canary")
    );
    let weights: Vec<_> = vs.spec.http[1].route.iter().map(|r| r.weight).collect();
    assert_eq!(weights, vec![Some(90), Some(10)]);

    let dr = set.destination_rules().next().expect("a DestinationRule");
    assert_eq!(dr.spec.host, "order-service");
    let tp = dr.spec.traffic_policy.as_ref().expect("trafficPolicy");
    let pool = tp.connection_pool.as_ref().expect("connectionPool");
    assert_eq!(pool.tcp.as_ref().and_then(|t| t.max_connections), Some(100));
    let http = pool.http.as_ref().expect("http pool");
    assert_eq!(
        (http.h2_upgrade_policy, http.http1_max_pending_requests),
        (Some(H2UpgradePolicy::Default), Some(100))
    );
    let od = tp.outlier_detection.as_ref().expect("outlierDetection");
    assert_eq!(od.consecutive_5xx_errors, Some(5));
    assert_eq!(od.interval.map(|d| d.get().as_secs()), Some(30));
    assert_eq!(od.base_ejection_time.map(|d| d.get().as_secs()), Some(30));
    let subsets: Vec<_> = dr
        .spec
        .subsets
        .iter()
        .map(|s| (s.name.as_str(), s.labels["version"].as_str()))
        .collect();
    assert_eq!(subsets, vec![("stable", "v1"), ("canary", "v2")]);

    let pa = set
        .peer_authentications()
        .next()
        .expect("a PeerAuthentication");
    assert_eq!(
        (pa.metadata.namespace.as_str(), pa.metadata.name.as_str()),
        ("production", "default")
    );
    assert_eq!(pa.spec.mtls.map(|m| m.mode), Some(MtlsMode::Strict));

    let ts = set.traffic_splits().next().expect("a TrafficSplit");
    assert_eq!(ts.spec.service, "order-service");
    let backends: Vec<_> = ts
        .spec
        .backends
        .iter()
        .map(|b| (b.service.as_str(), b.weight))
        .collect();
    assert_eq!(
        backends,
        vec![("order-service-stable", 900), ("order-service-canary", 100)]
    );

    // Without Services and Pods the analysis has warnings to give, but the subsets all resolve.
    let analysis = analyze(&set);
    assert!(
        analysis.iter().all(|d| d.severity == Severity::Warning),
        "{analysis:#?}"
    );
    set
}

#[test]
fn seed_manifests_load_without_errors() {
    let copy = check_seed(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/seed"
    )));
    let shared = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/seed/manifests"
    ));
    if shared.is_dir() {
        let original = check_seed(shared);
        // Same objects; only the recorded source files differ.
        let objects = |s: &ConfigSet| {
            s.iter()
                .map(|(k, e)| (k.clone(), e.object.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(objects(&original), objects(&copy));
    }
}
