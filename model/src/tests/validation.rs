//! One test per validation family: each shows a valid object accepted and a broken one rejected with the
//! field path and reason a user needs.

use std::time::Duration;

use super::{errors, parse, rejected, valid, warnings};
use crate::{
    AuthzAction, H2UpgradePolicy, HttpRouteFilterType, IntOrString, Kind, MtlsMode, Object,
    PathMatchType, Severity, SimpleLb,
};

const VS_HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec:\n  hosts: [x]\n";

fn vs(http: &str) -> String {
    format!("{VS_HEAD}  http:\n{http}")
}

#[test]
fn weight_out_of_range_names_kind_object_path_and_reason() {
    let diags = rejected(
        &vs("  - route:\n    - destination: {host: a}\n      weight: 50\n    - destination: {host: b}\n      weight: 150\n"),
        "spec.http[0].route[1].weight",
    );
    assert_eq!(
        errors(&diags),
        vec!["error: VirtualService default/x: spec.http[0].route[1].weight: must be between 0 and 100"]
    );
    let d = &diags[0];
    assert_eq!(
        (d.kind.as_str(), d.namespace.as_str(), d.name.as_str()),
        ("VirtualService", "default", "x")
    );
}

#[test]
fn type_errors_are_errors_with_their_path() {
    rejected(
        &vs("  - route:\n    - destination: {host: a}\n      weight: abc\n"),
        "spec.http[0].route[0].weight: invalid type",
    );
    rejected(
        &vs("  - route:\n    - destination: {host: a}\n      weight: -5\n"),
        "spec.http[0].route[0].weight",
    );
    rejected(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: not-an-ip}\n",
        "Pod default/p: status.podIP",
    );
}

#[test]
fn required_fields_and_route_shape() {
    rejected(
        &format!("{VS_HEAD}  http:\n  - route:\n    - destination: {{subset: v1}}\n"),
        "spec.http[0].route[0].destination.host: required",
    );
    rejected("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec:\n  http: [{route: [{destination: {host: a}}]}]\n", "spec.hosts: at least one host");
    rejected(
        &vs("  - timeout: 1s\n"),
        "spec.http[0]: one of route, redirect or directResponse is required",
    );
    rejected(
        &vs("  - route: [{destination: {host: a}}]\n    redirect: {uri: /x}\n"),
        "only one of route, redirect or directResponse",
    );
    rejected(
        &vs("  - route: [{destination: {host: a}, weight: 0}, {destination: {host: b}}]\n"),
        "add up to 0",
    );
    rejected("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {namespace: Bad_NS, name: x}\nspec: {hosts: [x], tcp: [{route: [{destination: {host: a}}]}]}\n", "metadata.namespace");
}

#[test]
fn full_virtual_service_parses() {
    let objects = valid(&vs(r#"  - name: canary
    match:
    - uri: {prefix: /api}
      authority: {exact: shop}
      method: {regex: "GET|HEAD"}
      headers: {x-canary: {exact: "true"}, x-present: {}}
      queryParams: {debug: {exact: "1"}}
      withoutHeaders: {x-skip: {prefix: y}}
      sourceLabels: {app: web}
      port: 8080
      ignoreUriCase: true
    route:
    - destination: {host: order.shop.svc.cluster.local, subset: v2, port: {number: 8080}}
      weight: 100
      headers: {request: {set: {x-a: b}, add: {x-c: d}, remove: [x-e]}}
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,connect-failure,503"}
    fault:
      delay: {percentage: {value: 10}, fixedDelay: 5s}
      abort: {percentage: {value: 0.5}, httpStatus: 503}
    mirror: {host: shadow}
    mirrorPercentage: {value: 25.5}
    headers: {response: {set: {x-served-by: mesh}}}
    rewrite: {uri: /v2, authority: new}
  - redirect: {uri: /moved, authority: elsewhere, redirectCode: 308}
  - directResponse: {status: 418, body: {string: teapot}}
  tcp:
  - route: [{destination: {host: db}, weight: 100}]
"#));
    let Object::VirtualService(v) = &objects[0] else {
        panic!("not a VirtualService")
    };
    let r = &v.spec.http[0];
    assert_eq!(
        r.timeout.map(|d| d.get()),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(
        r.retries
            .as_ref()
            .and_then(|x| x.per_try_timeout)
            .map(|d| d.get()),
        Some(Duration::from_millis(500))
    );
    assert_eq!(
        r.matches[0].headers["x-canary"].exact.as_deref(),
        Some("true")
    );
    assert!(r.matches[0].headers["x-present"].kind().is_none());
    assert_eq!(r.route[0].destination.port.map(|p| p.number), Some(8080));
    assert_eq!(
        r.fault
            .as_ref()
            .and_then(|f| f.abort.as_ref())
            .and_then(|a| a.http_status),
        Some(503)
    );
    assert_eq!(
        v.spec.http[2].direct_response.as_ref().map(|d| d.status),
        Some(418)
    );
    assert_eq!(v.spec.tcp[0].route[0].destination.host, "db");
}

#[test]
fn durations_are_parsed_and_bad_ones_reported() {
    rejected(
        &vs("  - route: [{destination: {host: a}}]\n    timeout: 3x\n"),
        "spec.http[0].timeout: invalid duration \"3x\"",
    );
    rejected(
        &vs("  - route: [{destination: {host: a}}]\n    timeout: 30\n"),
        "spec.http[0].timeout",
    );
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: a\n  trafficPolicy:\n    outlierDetection: {interval: 0s}\n";
    rejected(
        dr,
        "spec.trafficPolicy.outlierDetection.interval: must be at least 1ms",
    );
}

#[test]
fn regexes_must_compile() {
    rejected(
        &vs("  - match: [{uri: {regex: \"(\"}}]\n    route: [{destination: {host: a}}]\n"),
        "spec.http[0].match[0].uri.regex: invalid regex",
    );
    rejected(
        &vs("  - match: [{headers: {h: {regex: \"[\"}}}]\n    route: [{destination: {host: a}}]\n"),
        "spec.http[0].match[0].headers.h.regex",
    );
    rejected(
        &vs("  - match: [{uri: {exact: /a, prefix: /b}}]\n    route: [{destination: {host: a}}]\n"),
        "only one of exact, prefix or regex",
    );
}

#[test]
fn percentages_statuses_and_codes() {
    let fault = |f: &str| {
        vs(&format!(
            "  - route: [{{destination: {{host: a}}}}]\n    fault: {f}\n"
        ))
    };
    rejected(
        &fault("{abort: {percentage: {value: 150}, httpStatus: 503}}"),
        "spec.http[0].fault.abort.percentage.value: must be between 0 and 100",
    );
    rejected(
        &fault("{abort: {httpStatus: 600}}"),
        "spec.http[0].fault.abort.httpStatus: must be between 200 and 599",
    );
    rejected(
        &fault("{delay: {percentage: {value: 5}}}"),
        "fault.delay.fixedDelay: required",
    );
    rejected(&vs("  - route: [{destination: {host: a}}]\n    mirror: {host: m}\n    mirrorPercentage: {value: -1}\n"), "mirrorPercentage.value");
    rejected(
        &vs("  - redirect: {uri: /x, redirectCode: 200}\n"),
        "redirectCode",
    );
    rejected(
        &vs("  - directResponse: {status: 99}\n"),
        "directResponse.status",
    );
    rejected(&vs("  - route: [{destination: {host: a}}]\n    retries: {attempts: 2, retryOn: \"sometimes\"}\n"), "unknown retry condition");
    rejected(&vs("  - route: [{destination: {host: a}}]\n    mirrors: [{destination: {host: m}, percentage: {value: 101}}]\n"), "spec.http[0].mirrors[0].percentage.value");
    rejected(
        &vs("  - route: [{destination: {host: a}}]\n    mirror: {host: m}\n    mirrors: [{destination: {host: n}}]\n"),
        "spec.http[0].mirrors: cannot be combined with mirror",
    );
    rejected(
        &vs("  - redirect: {redirectCode: 302}\n"),
        "one of uri, authority, scheme or port is required",
    );
    rejected(
        &vs("  - redirect: {scheme: https, port: 0}\n"),
        "redirect.port",
    );
    rejected(
        &vs("  - directResponse: {status: 200, body: {bytes: \"not base64!\"}}\n"),
        "directResponse.body.bytes: invalid base64",
    );
    valid(&vs("  - redirect: {scheme: https, port: 8443}\n  - directResponse: {status: 200, body: {bytes: aGk=}}\n"));
}

const DR_HEAD: &str = "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: d, namespace: shop}\nspec:\n  host: order\n";

#[test]
fn destination_rule_fields_and_enums() {
    let objects = valid(&format!(
        "{DR_HEAD}  trafficPolicy:
    loadBalancer: {{simple: LEAST_REQUEST}}
    connectionPool:
      tcp: {{maxConnections: 10, connectTimeout: 250ms}}
      http: {{http1MaxPendingRequests: 1, http2MaxRequests: 2, maxRequestsPerConnection: 3, maxRetries: 4, idleTimeout: 1m, h2UpgradePolicy: UPGRADE}}
    outlierDetection: {{consecutive5xxErrors: 5, consecutiveGatewayErrors: 2, interval: 10s, baseEjectionTime: 1h, maxEjectionPercent: 50}}
    portLevelSettings:
    - port: {{number: 8080}}
      loadBalancer: {{simple: RANDOM}}
  subsets:
  - name: v1
    labels: {{version: v1}}
    trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}
"
    ));
    let Object::DestinationRule(dr) = &objects[0] else {
        panic!("not a DestinationRule")
    };
    let tp = dr.spec.traffic_policy.as_ref().expect("trafficPolicy");
    assert_eq!(
        tp.load_balancer.as_ref().and_then(|l| l.simple),
        Some(SimpleLb::LeastRequest)
    );
    let http = tp
        .connection_pool
        .as_ref()
        .and_then(|c| c.http.as_ref())
        .expect("http pool");
    assert_eq!(http.h2_upgrade_policy, Some(H2UpgradePolicy::Upgrade));
    assert_eq!(http.http2_max_requests, Some(2));
    assert_eq!(
        http.idle_timeout.map(|d| d.get()),
        Some(Duration::from_secs(60))
    );
    let od = tp.outlier_detection.as_ref().expect("outlierDetection");
    assert_eq!(
        (
            od.consecutive_5xx_errors,
            od.base_ejection_time.map(|d| d.get())
        ),
        (Some(5), Some(Duration::from_secs(3600)))
    );
    assert_eq!(
        dr.spec.subset("v1").map(|s| s.labels["version"].as_str()),
        Some("v1")
    );

    let tp = |p: &str| format!("{DR_HEAD}  trafficPolicy: {p}\n");
    rejected(
        &tp("{connectionPool: {http: {h2UpgradePolicy: SOMETIMES}}}"),
        "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy: unknown variant `SOMETIMES`",
    );
    rejected(
        &tp("{loadBalancer: {simple: FASTEST}}"),
        "spec.trafficPolicy.loadBalancer.simple: unknown variant",
    );
    rejected(
        &tp("{outlierDetection: {consecutive5xxErrors: -1}}"),
        "spec.trafficPolicy.outlierDetection.consecutive5xxErrors",
    );
    rejected(
        &tp("{outlierDetection: {maxEjectionPercent: 101}}"),
        "maxEjectionPercent: must be between 0 and 100",
    );
    rejected(
        &tp("{portLevelSettings: [{port: {number: 70000}}]}"),
        "spec.trafficPolicy.portLevelSettings[0].port.number: must be between 1 and 65535",
    );
    rejected(
        &tp("{portLevelSettings: [{loadBalancer: {simple: RANDOM}}]}"),
        "portLevelSettings[0].port: required",
    );
}

#[test]
fn label_syntax_everywhere() {
    rejected(
        &format!("{DR_HEAD}  subsets: [{{name: v1, labels: {{\"bad key!\": v1}}}}]\n"),
        "spec.subsets[0].labels.bad key!: invalid label key",
    );
    rejected(
        &format!("{DR_HEAD}  subsets: [{{name: v1, labels: {{version: \"-v1\"}}}}]\n"),
        "invalid label value",
    );
    rejected(
        &format!("{DR_HEAD}  subsets: [{{name: V1}}]\n"),
        "spec.subsets[0].name",
    );
    rejected(
        &format!("{DR_HEAD}  subsets: [{{name: a}}, {{name: a}}]\n"),
        "spec.subsets[1].name: duplicate",
    );
    rejected(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {\"a/b/c\": x}}\n",
        "error: Namespace shop: metadata.labels.a/b/c",
    );
}

#[test]
fn core_kinds_minimal_and_ports() {
    let objects = valid("apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {app: a}}\nspec: {nodeName: node1}\nstatus: {podIP: 198.18.0.5, podIPs: [{ip: 198.18.0.5}, {ip: \"fd00::5\"}]}\n");
    let Object::Pod(p) = &objects[0] else {
        panic!("not a Pod")
    };
    assert_eq!(
        (
            p.metadata.namespace.as_str(),
            p.service_account(),
            p.node_name()
        ),
        ("default", "default", "node1")
    );
    assert_eq!(p.ips().len(), 2);

    let objects = valid("apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: shop, labels: {istio.io/use-waypoint: wp}}\nspec:\n  clusterIP: 198.19.96.10\n  selector: {app: a}\n  ports:\n  - {name: http, port: 80, targetPort: 8080, appProtocol: http}\n  - {name: grpc, port: 9090, targetPort: grpc-port, protocol: TCP}\n");
    let Object::Service(s) = &objects[0] else {
        panic!("not a Service")
    };
    assert_eq!(s.ports(), vec![(80, Some(8080)), (9090, None)]);
    assert_eq!(
        s.spec.ports[1].target_port,
        Some(IntOrString::String("grpc-port".into()))
    );
    assert_eq!(s.use_waypoint(), Some("wp"));
    assert_eq!(s.cluster_ip(), Some("198.19.96.10".parse().expect("ip")));

    let svc = |ports: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n  ports: {ports}\n")
    };
    rejected(
        &svc("[{port: 70000}]"),
        "spec.ports[0].port: must be between 1 and 65535",
    );
    rejected(
        &svc("[{port: 80, targetPort: 0}]"),
        "spec.ports[0].targetPort: must be between 1 and 65535",
    );
    rejected(
        &svc("[{name: a, port: 80}, {port: 81}]"),
        "spec.ports[1].name: required",
    );
    rejected(
        &svc("[{port: 80, protocol: ICMP}]"),
        "spec.ports[0].protocol: unknown variant",
    );
    rejected(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: 198.18.0.300}\n",
        "spec.clusterIP: invalid IP",
    );
    rejected(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm}\nspec: {address: 198.18.0.9, ports: {http: 0}}\n",
        "spec.ports.http: must be between 1 and 65535",
    );
    let objects = valid("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm, annotations: {mesh.io/node: node2}}\nspec: {address: 198.18.0.9, labels: {app: a}, serviceAccount: vm-sa}\n");
    let Object::WorkloadEntry(w) = &objects[0] else {
        panic!("not a WorkloadEntry")
    };
    assert_eq!(
        (w.node(), w.service_account(), w.ip()),
        (
            Some("node2"),
            "vm-sa",
            Some("198.18.0.9".parse().expect("ip"))
        )
    );
}

const AP_HEAD: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ap, namespace: shop}\nspec:\n";

#[test]
fn authorization_policy_rules_and_bindings() {
    let objects = valid(&format!(
        "{AP_HEAD}  action: DENY
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: wp}}]
  rules:
  - from:
    - source: {{principals: [\"cluster.local/ns/shop/sa/*\"], notNamespaces: [kube-system], ipBlocks: [198.18.0.0/8, 10.1.2.3], notRemoteIpBlocks: [\"2001:db8::/32\"]}}
    to:
    - operation: {{ports: [\"8080\", 9090], methods: [GET], paths: [\"/api/*\"], hosts: [shop]}}
    when:
    - {{key: \"request.headers[x-user]\", values: [admin]}}
    - {{key: source.ip, notValues: [10.9.0.0/16]}}
    - {{key: destination.port, values: [8080]}}
"
    ));
    let Object::AuthorizationPolicy(ap) = &objects[0] else {
        panic!("not an AuthorizationPolicy")
    };
    assert_eq!(ap.spec.action, AuthzAction::Deny);
    assert_eq!(
        ap.spec.rules[0].to[0]
            .operation
            .as_ref()
            .map(|o| o.ports.clone()),
        Some(vec!["8080".to_string(), "9090".to_string()])
    );
    assert_eq!(ap.spec.l7_attributes().len(), 4);

    rejected(
        &format!("{AP_HEAD}  action: CUSTOM\n  provider: {{name: ext}}\n"),
        "spec.action: CUSTOM is unsupported",
    );
    rejected(
        &format!("{AP_HEAD}  selector: {{matchLabels: {{app: a}}}}\n  targetRef: {{kind: Service, group: \"\", name: s}}\n"),
        "spec.selector: selector and targetRef(s) cannot both be set",
    );
    rejected(
        &format!("{AP_HEAD}  targetRefs: [{{kind: Pod, name: p}}]\n"),
        "spec.targetRefs[0].kind",
    );
    let rule = |r: &str| format!("{AP_HEAD}  rules:\n  - {r}\n");
    rejected(
        &rule("from: [{source: {ipBlocks: [198.18.0.0/33]}}]"),
        "spec.rules[0].from[0].source.ipBlocks[0]: invalid CIDR",
    );
    rejected(
        &rule("from: [{source: {remoteIpBlocks: [not-an-ip]}}]"),
        "remoteIpBlocks[0]: invalid CIDR",
    );
    rejected(
        &rule("to: [{operation: {ports: [\"http\"]}}]"),
        "spec.rules[0].to[0].operation.ports[0]: invalid port",
    );
    rejected(
        &rule("to: [{operation: {paths: [\"/a*b\"]}}]"),
        "only allowed at the start or the end",
    );
    rejected(
        &rule("from: [{source: {}}]"),
        "at least one field must be set",
    );
    rejected(
        &rule("when: [{key: request.body, values: [x]}]"),
        "unknown condition key",
    );
    rejected(
        &rule("when: [{key: source.ip}]"),
        "one of values or notValues is required",
    );
    rejected(
        &format!("{AP_HEAD}  action: MAYBE\n"),
        "spec.action: unknown variant `MAYBE`",
    );
}

#[test]
fn peer_authentication_modes_and_ports() {
    let objects = valid("apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: pa}\nspec:\n  selector: {matchLabels: {app: a}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    8080: {mode: PERMISSIVE}\n    \"9090\": {mode: DISABLE}\n");
    let Object::PeerAuthentication(pa) = &objects[0] else {
        panic!("not a PeerAuthentication")
    };
    assert_eq!(pa.spec.mode_for_port(8080), MtlsMode::Permissive);
    assert_eq!(pa.spec.mode_for_port(9090), MtlsMode::Disable);
    assert_eq!(pa.spec.mode_for_port(1), MtlsMode::Strict);

    let pa = |spec: &str| {
        format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: pa}}\nspec: {spec}\n")
    };
    rejected(
        &pa("{mtls: {mode: STRICTEST}}"),
        "spec.mtls.mode: unknown variant `STRICTEST`",
    );
    rejected(
        &pa("{portLevelMtls: {8080: {mode: STRICT}}}"),
        "spec.portLevelMtls: requires a workload selector",
    );
    rejected(
        &pa("{selector: {matchLabels: {app: a}}, portLevelMtls: {0: {mode: STRICT}}}"),
        "spec.portLevelMtls.0: must be between 1 and 65535",
    );
    rejected(
        &pa("{selector: {matchLabels: {app: a}}, portLevelMtls: {http: {mode: STRICT}}}"),
        "invalid port number",
    );
}

#[test]
fn traffic_split_versions_and_weights() {
    let ts = |v: &str, backends: &str| {
        format!("apiVersion: split.smi-spec.io/{v}\nkind: TrafficSplit\nmetadata: {{name: t}}\nspec:\n  service: root\n  backends: {backends}\n")
    };
    for v in ["v1alpha2", "v1alpha3", "v1alpha4"] {
        valid(&ts(v, "[{service: a, weight: 1}]"));
    }
    let objects = valid(&ts(
        "v1alpha1",
        "[{service: a, weight: 500m}, {service: b, weight: \"1\"}]",
    ));
    let Object::TrafficSplit(t) = &objects[0] else {
        panic!("not a TrafficSplit")
    };
    assert_eq!(
        t.spec.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        vec![500, 1000]
    );
    rejected(
        &ts(
            "v1alpha2",
            "[{service: a, weight: -1}, {service: b, weight: 5}]",
        ),
        "spec.backends[0].weight: must not be negative",
    );
    rejected(
        &ts("v1alpha2", "[{service: a, weight: abc}]"),
        "spec.backends[0].weight: invalid weight",
    );
    rejected(&ts("v1alpha2", "[]"), "spec.backends: at least one backend");
    rejected(
        &ts("v1beta9", "[{service: a, weight: 1}]"),
        "apiVersion: unsupported version \"v1beta9\"",
    );
}

const ROUTE_HEAD: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: s, port: 80}]\n";

#[test]
fn gateway_api_routes() {
    let objects = valid("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp, namespace: shop}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n");
    let Object::Gateway(g) = &objects[0] else {
        panic!("not a Gateway")
    };
    assert!(g.is_waypoint());

    let objects = valid(&format!(
        "{ROUTE_HEAD}  hostnames: [shop.example.com]
  rules:
  - matches:
    - path: {{type: Exact, value: /cart}}
      headers: [{{name: x-v, value: \"2\"}}, {{type: RegularExpression, name: x-r, value: \"^a.*\"}}]
      queryParams: [{{name: q, value: x}}]
      method: POST
    - headers: [{{name: x-only, value: y}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-a, value: b}}], remove: [x-c]}}
    - type: URLRewrite
      urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: /new}}}}
    - type: RequestMirror
      requestMirror: {{backendRef: {{name: shadow, port: 80}}}}
    backendRefs: [{{name: v1, port: 8080, weight: 90}}, {{name: v2, port: 8080}}]
    timeouts: {{request: 10s, backendRequest: 2s}}
"
    ));
    let Object::HttpRoute(r) = &objects[0] else {
        panic!("not an HTTPRoute")
    };
    valid(&ROUTE_HEAD.replace("group: \"\"", "group: core"));
    rejected(
        &ROUTE_HEAD.replace("group: \"\"", "group: apps"),
        "spec.parentRefs[0].kind: must be a Gateway",
    );
    let rule = &r.spec.rules[0];
    assert_eq!(
        rule.matches[0].path.as_ref().map(|p| p.type_),
        Some(PathMatchType::Exact)
    );
    assert_eq!(rule.matches[1].path, None);
    assert_eq!(rule.filters[1].type_, Some(HttpRouteFilterType::UrlRewrite));
    assert_eq!(
        rule.backend_refs
            .iter()
            .map(|b| b.weight)
            .collect::<Vec<_>>(),
        vec![90, 1]
    );
    assert_eq!(rule.backend_refs[1].kind, "Service");
    assert_eq!(r.spec.parent_refs[0].kind, "Service");

    let rule = |r: &str| format!("{ROUTE_HEAD}  rules:\n  - {r}\n");
    rejected(
        &rule("matches: [{path: {type: Prefix, value: /}}]"),
        "spec.rules[0].matches[0].path.type: unknown variant `Prefix`",
    );
    rejected(
        &rule("matches: [{path: {type: Exact, value: cart}}]"),
        "path.value: must start with '/'",
    );
    rejected(
        &rule("matches: [{path: {type: RegularExpression, value: \"(\"}}]"),
        "path.value: invalid regex",
    );
    rejected(
        &rule("filters: [{type: RequestRedirect, urlRewrite: {hostname: x}}]"),
        "spec.rules[0].filters[0].requestRedirect: required when type is RequestRedirect",
    );
    rejected(
        &rule("backendRefs: [{name: v1}]"),
        "spec.rules[0].backendRefs[0].port: required for a Service backend",
    );
    rejected(
        &rule("backendRefs: [{name: v1, port: 80, weight: 2000000}]"),
        "weight: must be between 0 and 1000000",
    );
    rejected(&rule("matches: [{method: FETCH}]"), "unknown method");

    valid("apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{method: {service: shop.Cart, method: Add}}]\n    backendRefs: [{name: cart, port: 9000}]\n");
    rejected("apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  rules:\n  - filters: [{type: URLRewrite, urlRewrite: {hostname: x}}]\n", "not allowed on a GRPCRoute");
}

#[test]
fn unknown_kinds_and_fields_are_errors_unsupported_ones_warnings() {
    // Other groups' kinds and Istio kinds the mesh does not implement are skipped with a warning.
    let (objects, diags) = parse("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\n");
    assert!(objects.is_empty());
    assert!(errors(&diags).is_empty(), "{diags:#?}");
    assert_eq!(warnings(&diags).len(), 2);
    assert!(warnings(&diags)[0].contains("unsupported kind apps/v1 Deployment: skipped"));
    // A kind no API has, in a group the mesh serves: an error with a suggestion.
    let (objects, diags) = parse("apiVersion: networking.istio.io/v1\nkind: VirtualServce\nmetadata: {name: v}\nspec: {hosts: [a]}\n");
    assert!(objects.is_empty());
    assert_eq!(errors(&diags).len(), 1, "{diags:#?}");
    assert!(
        errors(&diags)[0].contains(
            "unknown kind VirtualServce in networking.istio.io (did you mean VirtualService?)"
        ),
        "{diags:#?}"
    );

    // Istio features the mesh does not model load, with a warning naming the field; core kinds stay quiet.
    let (objects, diags) = parse(&format!(
        "{VS_HEAD}  http:\n  - route: [{{destination: {{host: a}}}}]\n    corsPolicy: {{allowOrigins: []}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, uid: x}}\nspec: {{containers: [{{name: c, image: i}}], someFutureField: 1}}\n"
    ));
    assert_eq!(objects.len(), 2);
    assert_eq!(warnings(&diags), vec!["warning: VirtualService default/x: spec.http[0].corsPolicy: corsPolicy is part of the VirtualService API but not supported by this mesh; ignored"]);
    assert!(diags.iter().all(|d| d.severity == Severity::Warning));

    // A misspelt field is no API's: the object is rejected, with a suggestion (STRICT is never silently dropped).
    rejected(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {mtls: {mod: STRICT}}\n",
        "spec.mtls.mod: unknown field mod (did you mean mode?)",
    );
    rejected(
        &format!("{VS_HEAD}  http:\n  - route: [{{destination: {{host: a}}, weigth: 90}}]\n"),
        "spec.http[0].route[0].weigth: unknown field weigth (did you mean weight?)",
    );
    // A right name in the wrong place is no API's either: rejected, saying where the field belongs.
    rejected(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {mode: STRICT}\n",
        "spec.mode: mode is not a field here; the PeerAuthentication API has it at spec.mtls.mode",
    );
    rejected(
        &format!("{VS_HEAD}  http:\n  - route: [{{destination: {{host: a, weight: 90}}}}]\n"),
        "spec.http[0].route[0].destination.weight: weight is not a field here; the VirtualService API has it at spec.http.route.weight",
    );
}

#[test]
fn lists_namespaces_and_documents() {
    let objects = valid("apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: shop, namespace: ignored, labels: {istio.io/dataplane-mode: ambient}}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s, namespace: shop}\n---\n---\n");
    assert_eq!(
        objects
            .iter()
            .map(|o| o.key().to_string())
            .collect::<Vec<_>>(),
        vec!["Namespace shop", "Service shop/s"]
    );
    let Object::Namespace(ns) = &objects[0] else {
        panic!("not a Namespace")
    };
    assert!(ns.is_ambient());
    assert_eq!(ns.metadata.namespace, "");
    let (_, diags) = parse("kind: Pod\nmetadata: {name: p}\n---\n- a list\n");
    assert_eq!(
        errors(&diags),
        vec![
            "error: document 0: apiVersion and kind are required",
            "error: document 1: not a mapping"
        ]
    );
    let (_, diags) = parse("apiVersion: v1\nkind: Pod\nmetadata: {}\n");
    assert_eq!(diags[0].path, "metadata.name");
    assert_eq!(
        Kind::from_group_kind("gateway.networking.k8s.io", "HTTPRoute"),
        Some(Kind::HttpRoute)
    );
}
