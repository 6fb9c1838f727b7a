//! The translation of each routing API, from YAML as a user writes it. The seed manifests load unchanged.

use std::collections::BTreeMap;
use std::path::Path;

use mesh_proto::mesh::l7::v1 as pb;

use super::translate;
use mesh_model::{load_dir, load_str, ConfigSet};

mod gateway_api;
mod istio;

const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../model/tests/seed");
const ORDER: &str = "default/order-service.default.svc.cluster.local";

/// The Services the seed manifests route between (the seed itself has none), with one pod per version.
const ORDER_SERVICES: &str = "
apiVersion: v1
kind: Service
metadata: {name: order-service}
spec: {clusterIP: 198.19.96.10, selector: {app: order}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: order-service-stable}
spec: {clusterIP: 198.19.96.11, selector: {app: order, version: v1}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: order-service-canary}
spec: {clusterIP: 198.19.96.12, selector: {app: order, version: v2}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: order-v1, labels: {app: order, version: v1}}
status: {podIP: 198.18.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: order-v2, labels: {app: order, version: v2}}
status: {podIP: 198.18.1.2}
";

/// `set` plus every object of `yaml`, which must be valid.
fn with(mut set: ConfigSet, yaml: &str) -> ConfigSet {
    let (objects, diags) = load_str(yaml, None);
    let errors: Vec<_> = diags.iter().filter(|d| d.is_error()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    for o in objects {
        set.insert(o, None);
    }
    set
}

fn set_of(yaml: &str) -> ConfigSet {
    with(ConfigSet::new(), yaml)
}

/// The seed manifests, unchanged, plus the Services they route between.
fn seed() -> ConfigSet {
    let (set, diags) = load_dir(Path::new(SEED), None);
    assert!(diags.is_empty(), "{diags:#?}");
    with(set, ORDER_SERVICES)
}

fn service(out: &BTreeMap<String, pb::L7Service>, key: &str) -> pb::L7Service {
    out.get(key)
        .unwrap_or_else(|| panic!("no resource {key} in {:?}", out.keys()))
        .clone()
}

fn dest(service: &str, subset: &str, weight: u32) -> pb::WeightedDestination {
    pb::WeightedDestination {
        destination: Some(pb::Destination {
            service: service.to_string(),
            subset: subset.to_string(),
            port: 0,
        }),
        weight,
        ..Default::default()
    }
}

fn exact(s: &str) -> Option<pb::StringMatch> {
    Some(super::exact(s))
}

fn prefix(s: &str) -> Option<pb::StringMatch> {
    Some(super::prefix(s))
}

fn regex(s: &str) -> Option<pb::StringMatch> {
    Some(super::regex(s))
}

fn uris(r: &pb::HttpRoute) -> Vec<Option<pb::StringMatch>> {
    r.matches.iter().map(|m| m.uri.clone()).collect()
}

const SHOP: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 198.19.97.1, selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {clusterIP: 198.19.97.2, selector: {app: api}, ports: [{name: http, port: 80}, {name: grpc, port: 9000}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client, tier: front}}
status: {podIP: 198.18.2.1}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: other, labels: {app: client, tier: front}}
status: {podIP: 198.18.2.2}
---
";
const WEB: &str = "shop/web.shop.svc.cluster.local";
const API: &str = "shop/api.shop.svc.cluster.local";

#[test]
fn seed_virtual_service_routes_canary_header_then_split() {
    let out = translate(&seed());
    let svc = service(&out, ORDER);
    assert_eq!(svc.namespace, "default");
    assert_eq!(svc.hostname, "order-service.default.svc.cluster.local");
    assert_eq!(
        svc.sources,
        [
            "VirtualService default/order-service",
            "DestinationRule default/order-service"
        ]
    );
    let [canary, split] = &svc.routes[..] else {
        panic!("two routes expected: {:#?}", svc.routes)
    };
    assert_eq!(canary.name, "VirtualService default/order-service#0");
    assert_eq!(
        canary.matches,
        [pb::RouteMatch {
            headers: vec![pb::HeaderMatch {
                name: "x-canary".into(),
                value: exact("true"),
                invert: false,
            }],
            ..Default::default()
        }]
    );
    assert_eq!(canary.destinations, [dest(ORDER, "canary", 100)]);
    assert!(split.matches.is_empty());
    assert_eq!(
        split.destinations,
        [dest(ORDER, "stable", 90), dest(ORDER, "canary", 10)]
    );
    let default_retry = pb::Retry {
        attempts: 2,
        per_try_timeout_ms: 0,
        retry_on: [
            "connect-failure",
            "refused-stream",
            "unavailable",
            "cancelled",
            "retriable-status-codes",
            "503",
        ]
        .map(String::from)
        .to_vec(),
    };
    for r in [canary, split] {
        assert_eq!(r.retry.as_ref(), Some(&default_retry), "{}", r.name);
        assert_eq!(r.timeout_ms, 0, "Istio sets no route timeout by default");
    }
}

#[test]
fn seed_destination_rule_policy_and_subsets() {
    let svc = service(&translate(&seed()), ORDER);
    let policy = svc.policy.expect("policy");
    let pool = policy.connection_pool.expect("connection pool");
    assert_eq!(pool.max_connections, 100);
    assert_eq!(pool.http1_max_pending_requests, 100);
    assert_eq!(pool.connect_timeout_ms, 10_000, "Istio's default");
    assert_eq!(pool.idle_timeout_ms, 3_600_000, "Istio's default");
    assert_eq!(pool.h2_upgrade_policy, pb::H2Upgrade::H2Default as i32);
    assert_eq!(
        policy.load_balancer,
        pb::LoadBalancer::LeastRequest as i32,
        "Istio's default"
    );
    assert_eq!(
        policy.outlier_detection,
        Some(pb::OutlierDetection {
            consecutive_5xx_errors: 5,
            consecutive_gateway_errors: 0,
            interval_ms: 30_000,
            base_ejection_time_ms: 30_000,
            max_ejection_percent: 10,
        })
    );
    let subsets: Vec<_> = svc
        .subsets
        .iter()
        .map(|s| (s.name.as_str(), s.labels.clone(), s.addresses.clone()))
        .collect();
    let version = |v: &str| BTreeMap::from([("version".to_string(), v.to_string())]);
    assert_eq!(
        subsets,
        [
            ("stable", version("v1"), vec![vec![198, 18, 1, 1]]),
            ("canary", version("v2"), vec![vec![198, 18, 1, 2]]),
        ]
    );
    // Without their own policy, subsets get the host's.
    for s in &svc.subsets {
        assert_eq!(
            s.policy.as_ref().map(|p| p.connection_pool),
            Some(Some(pool))
        );
    }
}

#[test]
fn seed_traffic_split_when_no_virtual_service_names_the_root() {
    let mut set = seed();
    let vs =
        mesh_model::ObjectKey::new(mesh_model::Kind::VirtualService, "default", "order-service");
    set.remove(&vs);
    let svc = service(&translate(&set), ORDER);
    assert_eq!(
        svc.sources,
        [
            "TrafficSplit default/order-canary",
            "DestinationRule default/order-service"
        ]
    );
    let [root] = &svc.routes[..] else {
        panic!("one route expected: {:#?}", svc.routes)
    };
    assert!(root.matches.is_empty());
    assert_eq!(
        root.destinations,
        [
            dest(
                "default/order-service-stable.default.svc.cluster.local",
                "",
                900
            ),
            dest(
                "default/order-service-canary.default.svc.cluster.local",
                "",
                100
            ),
        ]
    );
}

#[test]
fn v1alpha1_quantity_weights_keep_their_proportion() {
    let set = with(
        set_of(ORDER_SERVICES),
        "apiVersion: split.smi-spec.io/v1alpha1\nkind: TrafficSplit\nmetadata: {name: t}\nspec: {service: order-service, backends: [{service: order-service-stable, weight: 900m}, {service: order-service-canary, weight: \"1\"}]}\n",
    );
    let weights: Vec<u32> = service(&translate(&set), ORDER).routes[0]
        .destinations
        .iter()
        .map(|d| d.weight)
        .collect();
    assert_eq!(weights, [900, 1000]);
}

#[test]
fn only_services_with_routing_config_get_a_resource() {
    let out = translate(&seed());
    // order-service-stable/canary have no config of their own; the seed's PeerAuthentication is not routing.
    assert_eq!(out.keys().collect::<Vec<_>>(), [ORDER]);
    // Without Services, the seed routes nothing.
    let (bare, _) = load_dir(Path::new(SEED), None);
    assert!(translate(&bare).is_empty());
}
