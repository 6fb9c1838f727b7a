//! One test per `analyze` rule, each with a case that must stay quiet.

use super::set_of;
use crate::{analyze, resolve_host, Diagnostic, Severity};

fn texts(diags: &[Diagnostic]) -> Vec<String> {
    diags.iter().map(ToString::to_string).collect()
}

const SHOP: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: order, namespace: shop}\nspec: {clusterIP: 198.19.96.1, selector: {app: order}, ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: order-1, namespace: shop, labels: {app: order, version: v1}}\nstatus: {podIP: 198.18.0.1}\n---\n";

#[test]
fn resolve_host_forms() {
    let r = |h: &str| resolve_host(h, "shop");
    assert_eq!(r("order"), ("order".into(), "shop".into()));
    assert_eq!(
        r("order.prod.svc.cluster.local"),
        ("order".into(), "prod".into())
    );
    assert_eq!(r("order.prod.svc"), ("order".into(), "prod".into()));
    assert_eq!(
        r("api.example.com"),
        ("api.example.com".into(), String::new())
    );
    assert_eq!(
        r("*.prod.svc.cluster.local"),
        ("*.prod.svc.cluster.local".into(), String::new())
    );
    assert_eq!(r("*"), ("*".into(), String::new()));
}

#[test]
fn subset_labels_matching_no_workload() {
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: order, namespace: shop}\nspec:\n  host: order\n  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]\n";
    let diags = analyze(&set_of(&format!("{SHOP}{dr}")));
    assert_eq!(
        texts(&diags),
        vec!["warning: DestinationRule shop/order: spec.subsets[1].labels: subset \"v2\" selects no Pod or WorkloadEntry of Service order in namespace shop"]
    );
    // A WorkloadEntry with the labels counts as well.
    let we = "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm, namespace: shop}\nspec: {address: 198.18.0.2, labels: {app: order, version: v2}}\n";
    assert!(analyze(&set_of(&format!("{SHOP}{dr}{we}"))).is_empty());
}

const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: order, namespace: shop}\nspec:\n";

#[test]
fn route_weights_not_summing_to_100() {
    let split = |a: u32, b: u32| {
        format!("{SHOP}{VS}  hosts: [order]\n  http:\n  - route:\n    - {{destination: {{host: order}}, weight: {a}}}\n    - {{destination: {{host: order.shop.svc.cluster.local}}, weight: {b}}}\n")
    };
    assert_eq!(
        texts(&analyze(&set_of(&split(90, 20)))),
        vec!["warning: VirtualService shop/order: spec.http[0].route: route weights add up to 110, not 100; Istio normalizes them"]
    );
    assert!(analyze(&set_of(&split(90, 10))).is_empty());
}

#[test]
fn hosts_without_a_service() {
    let set = set_of(&format!(
        "{SHOP}{VS}  hosts: [order, cart, order.shop.svc.cluster.local, api.example.com]\n  http:\n  - route: [{{destination: {{host: pay.billing.svc.cluster.local}}}}]\n"
    ));
    assert_eq!(
        texts(&analyze(&set)),
        vec![
            "warning: VirtualService shop/order: spec.hosts[1]: host \"cart\": no Service cart in namespace shop",
            "warning: VirtualService shop/order: spec.http[0].route[0].destination.host: host \"pay.billing.svc.cluster.local\": no Service pay in namespace billing",
        ]
    );
}

#[test]
fn name_dot_namespace_hosts_name_no_service() {
    let set = set_of(&format!(
        "{SHOP}{VS}  hosts: [order.shop]\n  http:\n  - route: [{{destination: {{host: order.shop}}}}]\n"
    ));
    assert_eq!(
        texts(&analyze(&set)),
        vec![
            "warning: VirtualService shop/order: spec.hosts[0]: host \"order.shop\" does not name Service order in namespace shop (Istio reads it as an external host): write order.shop.svc.cluster.local",
            "warning: VirtualService shop/order: spec.http[0].route[0].destination.host: host \"order.shop\" does not name Service order in namespace shop (Istio reads it as an external host): write order.shop.svc.cluster.local",
        ]
    );
}

#[test]
fn subset_without_destination_rule_is_an_error() {
    let dr = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: order, namespace: shop}\nspec: {host: order.shop.svc.cluster.local, subsets: [{name: v1, labels: {version: v1}}]}\n";
    let vs = format!("{VS}  hosts: [order]\n  http:\n  - route: [{{destination: {{host: order, subset: v1}}, weight: 50}}, {{destination: {{host: order, subset: v3}}, weight: 50}}]\n");
    let diags = analyze(&set_of(&format!("{SHOP}{vs}{dr}")));
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert_eq!(diags[0].severity, Severity::Error);
    assert_eq!(
        diags[0].to_string(),
        "error: VirtualService shop/order: spec.http[0].route[1].destination.subset: subset \"v3\" is not defined by any DestinationRule for host \"order\""
    );
}

#[test]
fn traffic_split_backends_must_exist() {
    let ts = "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: t, namespace: shop}\nspec: {service: order, backends: [{service: order, weight: 1}, {service: order-v2, weight: 1}]}\n";
    assert_eq!(
        texts(&analyze(&set_of(&format!("{SHOP}{ts}")))),
        vec!["warning: TrafficSplit shop/t: spec.backends[1].service: no Service order-v2 in namespace shop"]
    );
}

const WAYPOINT_GW: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n---\n";
const WAYPOINT_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: waypoint-1, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}\nstatus: {podIP: 198.18.0.9}\n---\n";

#[test]
fn use_waypoint_must_name_a_gateway() {
    let ns = |wp: &str| {
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient, istio.io/use-waypoint: {wp}}}}}\n---\n")
    };
    let with = |wp: &str| set_of(&format!("{}{WAYPOINT_GW}{WAYPOINT_POD}", ns(wp)));
    assert!(analyze(&with("waypoint")).is_empty());
    assert_eq!(
        texts(&analyze(&with("wp2"))),
        vec!["warning: Namespace shop: metadata.labels.istio.io/use-waypoint: waypoint \"wp2\": no Gateway wp2 in namespace shop"]
    );
    assert!(analyze(&with("none")).is_empty());
    let ingress = WAYPOINT_GW.replace("istio-waypoint", "istio");
    assert_eq!(
        texts(&analyze(&set_of(&format!("{}{ingress}", ns("waypoint"))))),
        vec!["warning: Namespace shop: metadata.labels.istio.io/use-waypoint: Gateway shop/waypoint is not a waypoint (gatewayClassName \"istio\", expected \"istio-waypoint\")"]
    );
}

#[test]
fn a_waypoint_without_an_address_or_not_for_services() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: order, namespace: shop, labels: {istio.io/use-waypoint: waypoint}}\nspec: {clusterIP: 198.19.96.1, selector: {app: order}, ports: [{port: 80}]}\n---\n";
    assert_eq!(
        texts(&analyze(&set_of(&format!("{svc}{WAYPOINT_GW}")))),
        vec!["warning: Service shop/order: metadata.labels.istio.io/use-waypoint: waypoint Gateway shop/waypoint has no address yet (no Service with a cluster IP or Pod with an IP labelled gateway.networking.k8s.io/gateway-name: waypoint): traffic bypasses it"]
    );
    // A Service of the waypoint's (instead of a pod) gives it an address too.
    let gw_svc = "apiVersion: v1\nkind: Service\nmetadata: {name: waypoint, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}\nspec: {clusterIP: 198.19.96.9, ports: [{port: 15008}]}\n---\n";
    assert!(analyze(&set_of(&format!("{svc}{WAYPOINT_GW}{gw_svc}"))).is_empty());
    let workload_only = WAYPOINT_GW.replace(
        "name: waypoint, namespace: shop}",
        "name: waypoint, namespace: shop, labels: {istio.io/waypoint-for: workload}}",
    );
    assert_eq!(
        texts(&analyze(&set_of(&format!("{svc}{workload_only}{WAYPOINT_POD}")))),
        vec!["warning: Service shop/order: metadata.labels.istio.io/use-waypoint: waypoint Gateway shop/waypoint is for \"workload\" traffic, not services (label istio.io/waypoint-for): the Service's traffic bypasses it"]
    );
}

#[test]
fn routing_objects_overridden_for_a_service() {
    let vs = |name: &str, host: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  hosts: [{host}]\n  http: [{{route: [{{destination: {{host: order}}}}]}}]\n---\n")
    };
    let two = format!(
        "{SHOP}{}{}",
        vs("b", "order"),
        vs("a", "order.shop.svc.cluster.local")
    );
    assert_eq!(
        texts(&analyze(&set_of(&two))),
        vec!["warning: VirtualService shop/b: spec.hosts[0]: Service shop/order is also a host of VirtualService shop/a, which applies instead (of several VirtualServices for one host, the first by namespace/name wins)"]
    );
    let ts = "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: t, namespace: shop}\nspec: {service: order, backends: [{service: order, weight: 1}]}\n---\n";
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n  parentRefs: [{group: core, kind: Service, name: order}]\n  rules: [{backendRefs: [{name: order, port: 80}]}]\n---\n";
    assert_eq!(
        texts(&analyze(&set_of(&format!("{SHOP}{}{ts}{route}", vs("a", "order"))))),
        vec![
            "warning: VirtualService shop/a: spec.hosts[0]: Service shop/order has HTTPRoute/GRPCRoute routes, which take precedence: this VirtualService is ignored for it",
            "warning: TrafficSplit shop/t: spec.service: Service shop/order is routed by HTTPRoute/GRPCRoute routes, which takes precedence: this TrafficSplit is ignored",
        ]
    );
    assert_eq!(
        texts(&analyze(&set_of(&format!("{SHOP}{}{ts}", vs("a", "order"))))),
        vec!["warning: TrafficSplit shop/t: spec.service: Service shop/order is routed by VirtualService shop/a, which takes precedence: this TrafficSplit is ignored"]
    );
    let dr = |name: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{host: order}}\n---\n")
    };
    assert_eq!(
        texts(&analyze(&set_of(&format!("{SHOP}{}{}", dr("y"), dr("x"))))),
        vec!["warning: DestinationRule shop/y: spec.host: Service shop/order already has DestinationRule shop/x (of several DestinationRules for one host, the first by namespace/name applies): this one is ignored"]
    );
}

#[test]
fn fields_the_waypoint_does_not_apply() {
    let vs = format!("{SHOP}{VS}  hosts: [order]\n  http:\n  - match: [{{scheme: {{exact: https}}, ignoreUriCase: true, uri: {{prefix: /a}}}}]\n    fault: {{abort: {{httpStatus: 503}}, delay: {{fixedDelay: 1s, percentage: {{value: 5}}}}}}\n    route: [{{destination: {{host: order}}}}]\n  tcp: [{{route: [{{destination: {{host: order}}}}]}}]\n");
    assert_eq!(
        texts(&analyze(&set_of(&vs))),
        vec![
            "warning: VirtualService shop/order: spec.tcp: TCP routes are not applied by this mesh (ztunnel and the waypoint route by Service only): ignored",
            "warning: VirtualService shop/order: spec.http[0].match[0].scheme: scheme matches are not supported by the waypoint: ignored",
            "warning: VirtualService shop/order: spec.http[0].match[0].ignoreUriCase: case-insensitive uri matches are not supported by the waypoint: the match is case-sensitive",
            "warning: VirtualService shop/order: spec.http[0].fault.abort.percentage: no percentage: as in Istio, the abort is injected into 0% of requests; set percentage.value (100 for all)",
        ]
    );
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: order, namespace: shop}\nspec: {host: order, trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}}\n";
    assert_eq!(
        texts(&analyze(&set_of(&format!("{SHOP}{dr}")))),
        vec!["warning: DestinationRule shop/order: spec.trafficPolicy.loadBalancer.simple: PASSTHROUGH has no meaning behind a Service address at the waypoint: LEAST_REQUEST (Istio's default) is used"]
    );
}

#[test]
fn l7_rules_bound_to_ztunnel_fail_closed() {
    let ap = |binding: &str| {
        format!("{SHOP}apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: ap, namespace: shop}}\nspec:\n{binding}  rules:\n  - from: [{{source: {{principals: [a]}}}}]\n    to: [{{operation: {{methods: [GET], ports: [\"80\"]}}}}]\n    when: [{{key: \"request.headers[x]\", values: [y]}}]\n")
    };
    let selector = analyze(&set_of(&ap("  selector: {matchLabels: {app: order}}\n")));
    assert_eq!(
        texts(&selector),
        vec![
            "warning: AuthorizationPolicy shop/ap: spec.rules[0].to[0].operation.methods: L7 rule enforced by ztunnel fails closed: bind the policy to a waypoint with targetRefs",
            "warning: AuthorizationPolicy shop/ap: spec.rules[0].when[0]: L7 rule enforced by ztunnel fails closed: bind the policy to a waypoint with targetRefs",
        ]
    );
    assert_eq!(
        analyze(&set_of(&ap(""))).len(),
        2,
        "namespace-wide policies are enforced by ztunnel too"
    );
    assert!(analyze(&set_of(&ap(
        "  targetRefs: [{kind: Service, group: \"\", name: order}]\n"
    )))
    .is_empty());
}

#[test]
fn route_references() {
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: order}, {name: missing-gw}]\n  rules: [{backendRefs: [{name: order, port: 80}, {name: nope, port: 80}]}]\n";
    assert_eq!(
        texts(&analyze(&set_of(&format!("{SHOP}{route}")))),
        vec![
            "warning: HTTPRoute shop/r: spec.parentRefs[1].name: no Gateway missing-gw in namespace shop",
            "warning: HTTPRoute shop/r: spec.rules[0].backendRefs[1].name: no Service nope in namespace shop",
        ]
    );
}
