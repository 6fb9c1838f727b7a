//! One test per `analyze` rule, each with a case that must stay quiet.

use super::set_of;
use crate::model::{analyze, resolve_host, Diagnostic, Severity};

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

#[test]
fn use_waypoint_must_name_a_gateway() {
    let ns = |wp: &str| {
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient, istio.io/use-waypoint: {wp}}}}}\n---\n")
    };
    let gw = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n";
    assert!(analyze(&set_of(&format!("{}{gw}", ns("waypoint")))).is_empty());
    assert_eq!(
        texts(&analyze(&set_of(&format!("{}{gw}", ns("wp2"))))),
        vec!["warning: Namespace shop: metadata.labels.istio.io/use-waypoint: waypoint \"wp2\": no Gateway wp2 in namespace shop"]
    );
    assert!(analyze(&set_of(&format!("{}{gw}", ns("none")))).is_empty());
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
