//! VirtualService and DestinationRule translation.

use std::collections::BTreeMap;

use mesh_proto::mesh::l7::v1 as pb;

use super::{dest, exact, prefix, regex, service, set_of, API, SHOP, WEB};
use crate::l7::translate;

#[test]
fn virtual_service_matches_actions_and_defaults() {
    let set = set_of(&format!(
        r#"{SHOP}
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: shop}}
spec:
  hosts: [web.shop.svc.cluster.local]
  http:
  - name: full
    match:
    - uri: {{prefix: /api}}
      method: {{exact: GET}}
      authority: {{regex: "shop.*"}}
      headers: {{X-Present: {{}}, x-v: {{prefix: "2"}}}}
      withoutHeaders: {{x-skip: {{exact: "1"}}}}
      queryParams: {{Debug: {{exact: "on"}}}}
      sourceLabels: {{tier: front}}
      sourceNamespace: shop
      port: 80
    - uri: {{exact: /health}}
    route:
    - destination: {{host: api, port: {{number: 9000}}}}
      weight: 70
      headers: {{request: {{set: {{X-To: api}}}}, response: {{remove: [X-Internal]}}}}
    - destination: {{host: web, subset: v2}}
    timeout: 1.5s
    retries: {{attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,503"}}
    fault:
      delay: {{fixedDelay: 2s, percentage: {{value: 12.5}}}}
      abort: {{httpStatus: 503}}
    mirror: {{host: api}}
    mirrors: []
    headers: {{request: {{add: {{x-a: b}}}}, response: {{set: {{x-served-by: mesh}}}}}}
    rewrite: {{uri: /v2, authority: api.shop}}
  - match: [{{uri: {{exact: /old}}}}]
    redirect: {{uri: /new, scheme: https, port: 8443}}
    retries: {{attempts: 0}}
  - match: [{{uri: {{exact: /teapot}}}}]
    directResponse: {{status: 418, body: {{bytes: dGVh}}}}
    retries: {{attempts: 1}}
  - route: [{{destination: {{host: api.example.com}}}}]
    mirrors: [{{destination: {{host: web}}}}, {{destination: {{host: api}}, percentage: {{value: 5}}}}]
"#
    ));
    let svc = service(&translate(&set), WEB);
    let [full, moved, teapot, external] = &svc.routes[..] else {
        panic!("four routes: {:#?}", svc.routes)
    };
    assert_eq!(full.name, "VirtualService shop/web#full");
    assert_eq!(moved.name, "VirtualService shop/web#1");
    let m = &full.matches[0];
    assert_eq!(
        (m.uri.clone(), m.method.clone(), m.authority.clone()),
        (prefix("/api"), exact("GET"), regex("shop.*"))
    );
    let header = |name: &str, value, invert| pb::HeaderMatch {
        name: name.into(),
        value,
        invert,
    };
    assert_eq!(
        m.headers,
        [
            header("x-present", None, false),
            header("x-v", prefix("2"), false),
            header("x-skip", exact("1"), true)
        ]
    );
    assert_eq!(
        m.query_params,
        [header("Debug", exact("on"), false)],
        "query names keep their case"
    );
    assert_eq!(
        m.source_labels,
        BTreeMap::from([("tier".into(), "front".into())])
    );
    assert_eq!((m.source_namespace.as_str(), m.port), ("shop", 80));
    assert_eq!(
        m.source_addresses,
        [vec![198, 18, 2, 1]],
        "only the pod in sourceNamespace"
    );
    assert_eq!(full.matches[1].uri, exact("/health"));

    let [to_api, to_web] = &full.destinations[..] else {
        panic!("two destinations")
    };
    assert_eq!(
        to_api
            .destination
            .as_ref()
            .map(|d| (d.service.as_str(), d.port)),
        Some((API, 9000))
    );
    assert_eq!(to_api.weight, 70);
    assert_eq!(
        to_api.request_headers.as_ref().map(|h| h.set.clone()),
        Some(BTreeMap::from([("x-to".into(), "api".into())]))
    );
    assert_eq!(
        to_api.response_headers.as_ref().map(|h| h.remove.clone()),
        Some(vec!["x-internal".to_string()])
    );
    assert_eq!(
        *to_web,
        dest(WEB, "v2", 0),
        "an omitted weight among several is 0"
    );

    assert_eq!(full.timeout_ms, 1500);
    assert_eq!(
        full.retry,
        Some(pb::Retry {
            attempts: 3,
            per_try_timeout_ms: 500,
            retry_on: ["5xx", "503", "retriable-status-codes"]
                .map(String::from)
                .to_vec(),
        })
    );
    assert_eq!(
        full.fault,
        Some(pb::Fault {
            delay_ms: 2000,
            delay_percent: 12.5,
            abort_status: 503,
            abort_percent: 0.0
        }),
        "an abort without percentage aborts nothing, as in Istio"
    );
    assert_eq!(full.mirrors.len(), 1);
    assert_eq!(full.mirrors[0].percent, 100.0);
    assert_eq!(
        full.request_headers.as_ref().map(|h| h.add.clone()),
        Some(BTreeMap::from([("x-a".into(), "b".into())]))
    );
    assert_eq!(
        full.rewrite,
        Some(pb::Rewrite {
            uri: "/v2".into(),
            replace_full_path: false,
            authority: "api.shop".into()
        })
    );

    assert_eq!(
        moved.redirect,
        Some(pb::Redirect {
            uri: "/new".into(),
            authority: String::new(),
            scheme: "https".into(),
            port: 8443,
            status: 301
        })
    );
    assert_eq!(
        moved.retry,
        Some(pb::Retry::default()),
        "attempts: 0 disables retries"
    );
    assert_eq!(
        teapot.direct_response,
        Some(pb::DirectResponse {
            status: 418,
            body: b"tea".to_vec()
        })
    );
    let one = teapot.retry.as_ref().expect("retry");
    assert_eq!(
        (one.attempts, one.retry_on.len()),
        (1, 6),
        "Istio's conditions when retryOn is unset"
    );

    assert_eq!(external.destinations, [dest("/api.example.com", "", 100)]);
    let mirrors: Vec<_> = external
        .mirrors
        .iter()
        .map(|m| (m.destination.as_ref().map(|d| d.service.clone()), m.percent))
        .collect();
    assert_eq!(
        mirrors,
        [(Some(WEB.to_string()), 100.0), (Some(API.to_string()), 5.0)]
    );
}

#[test]
fn first_virtual_service_by_name_wins_and_gateway_only_ones_do_not_apply() {
    let vs = |name: &str, host: &str, gateways: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  hosts: [{host}]\n  gateways: {gateways}\n  http: [{{route: [{{destination: {{host: web, subset: {name}}}}}]}}]\n---\n")
    };
    let set = set_of(&format!(
        "{SHOP}{}{}{}",
        vs("b", "web", "[mesh]"),
        vs("a", "web.shop.svc.cluster.local", "[]"),
        vs("0-ingress", "web", "[istio-system/ingress]"),
    ));
    let svc = service(&translate(&set), WEB);
    assert_eq!(svc.sources, ["VirtualService shop/a"]);
    assert_eq!(svc.routes[0].destinations, [dest(WEB, "a", 100)]);
}

const DR_POLICIES: &str = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: shop}
spec:
  host: api
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 2s}
      http: {http2MaxRequests: 7, maxRequestsPerConnection: 3, maxRetries: 4, idleTimeout: 30s, h2UpgradePolicy: UPGRADE}
    outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 3}
    portLevelSettings:
    - port: {number: 9000}
      connectionPool: {tcp: {maxConnections: 5}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {simple: LEAST_CONN}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      connectionPool: {http: {http1MaxPendingRequests: 1}}
      portLevelSettings:
      - port: {number: 80}
        loadBalancer: {simple: RANDOM}
";

#[test]
fn destination_rule_defaults_port_levels_and_subset_merging() {
    let set = set_of(&format!("{SHOP}{DR_POLICIES}"));
    let svc = service(&translate(&set), API);
    assert!(
        svc.routes.is_empty(),
        "a DestinationRule alone routes nothing"
    );
    let top = svc.policy.expect("policy");
    assert_eq!(top.load_balancer, pb::LoadBalancer::RoundRobin as i32);
    assert_eq!(
        top.connection_pool,
        Some(pb::ConnectionPool {
            max_connections: 10,
            connect_timeout_ms: 2000,
            http1_max_pending_requests: 0,
            http2_max_requests: 7,
            max_requests_per_connection: 3,
            max_retries: 4,
            idle_timeout_ms: 30_000,
            h2_upgrade_policy: pb::H2Upgrade::H2Upgrade as i32,
        })
    );
    let od = top.outlier_detection.expect("outlier detection");
    assert_eq!(
        (od.consecutive_5xx_errors, od.consecutive_gateway_errors),
        (0, 3),
        "0 disables the 5xx detector"
    );
    assert_eq!(
        (
            od.interval_ms,
            od.base_ejection_time_ms,
            od.max_ejection_percent
        ),
        (10_000, 30_000, 10)
    );

    // Port 9000's settings replace the whole policy: what they leave out takes the defaults, not the host's.
    let [p9000] = &top.port_level[..] else {
        panic!("one port-level policy: {:#?}", top.port_level)
    };
    let port = p9000.policy.clone().expect("port policy");
    assert_eq!(p9000.port, 9000);
    assert_eq!(port.load_balancer, pb::LoadBalancer::LeastRequest as i32);
    assert_eq!(port.outlier_detection, None);
    let pool = port.connection_pool.expect("pool");
    assert_eq!(
        (
            pool.max_connections,
            pool.connect_timeout_ms,
            pool.http2_max_requests
        ),
        (5, 10_000, 0)
    );

    let subset = |name: &str| {
        svc.subsets
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.policy.clone())
            .expect("subset policy")
    };
    // v1 replaces only the load balancer block (LEAST_CONN is LEAST_REQUEST's alias).
    let v1 = subset("v1");
    assert_eq!(v1.load_balancer, pb::LoadBalancer::LeastRequest as i32);
    assert_eq!(v1.connection_pool, top.connection_pool);
    assert_eq!(v1.outlier_detection, top.outlier_detection);
    assert_eq!(v1.port_level.len(), 1);
    // v2 replaces the whole connectionPool block (block by block, as Istio merges), and on port 80 its own
    // port-level entry replaces everything.
    let v2 = subset("v2");
    let v2_pool = v2.connection_pool.expect("pool");
    assert_eq!(
        (v2_pool.http1_max_pending_requests, v2_pool.max_connections),
        (1, 0)
    );
    assert_eq!(v2.load_balancer, pb::LoadBalancer::RoundRobin as i32);
    let ports: Vec<_> = v2.port_level.iter().map(|p| p.port).collect();
    assert_eq!(ports, [80, 9000]);
    let p80 = v2.port_level[0].policy.clone().expect("policy");
    assert_eq!(p80.load_balancer, pb::LoadBalancer::Random as i32);
    assert_eq!(p80.outlier_detection, None);
    let p9000 = v2.port_level[1].policy.clone().expect("policy");
    let p9000_pool = p9000.connection_pool.expect("pool");
    assert_eq!(
        (
            p9000_pool.http1_max_pending_requests,
            p9000_pool.max_connections
        ),
        (1, 0),
        "subset block over the host's port-level policy"
    );
}
