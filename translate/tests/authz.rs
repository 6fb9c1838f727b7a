//! PeerAuthentication and AuthorizationPolicy → ztunnel's `istio.security.Authorization`, and the bindings each
//! workload carries.

mod common;

use common::set_of;
use mesh_proto::istio::security::{string_match::MatchType, Action, Authorization, Scope};
use mesh_proto::istio::workload::{address, Address};
use mesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use mesh_translate::{translate, Translated};

const SEED_PA: &str = include_str!("../../model/tests/seed/peerauthentication-default.yaml");

const PODS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: production, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: orders, namespace: production, labels: {app: orders}}
spec: {nodeName: node1, serviceAccountName: orders}
status: {podIP: 198.18.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy-api, namespace: production, labels: {app: legacy-api}}
spec: {nodeName: node1, serviceAccountName: legacy}
status: {podIP: 198.18.1.2}
---
";

fn policies(out: &Translated) -> Vec<(String, Authorization)> {
    out.resources[AUTHORIZATION_TYPE_URL]
        .iter()
        .map(|(k, r)| (k.clone(), r.body.to_msg().unwrap()))
        .collect()
}

fn bound(out: &Translated, pod: &str) -> Vec<String> {
    let uid = format!("Kubernetes//Pod/production/{pod}");
    let a: Address = out.resources[ADDRESS_TYPE_URL][&uid].body.to_msg().unwrap();
    match a.r#type {
        Some(address::Type::Workload(w)) => w.authorization_policies,
        other => panic!("{other:?}"),
    }
}

#[test]
fn seed_strict_becomes_a_deny_of_plaintext_bound_to_each_production_workload() {
    let out = translate(&set_of(&format!("{PODS}{SEED_PA}")), "cluster.local");
    let ps = policies(&out);
    assert_eq!(ps.len(), 1, "{ps:#?}");
    let (name, p) = &ps[0];
    assert_eq!(name, "production/converted_peer_authentication_strict");
    assert_eq!(p.action, Action::Deny as i32);
    assert_eq!(p.scope, Scope::WorkloadSelector as i32);
    let m = &p.rules[0].clauses[0].matches[0];
    assert!(matches!(
        m.not_principals[0].match_type,
        Some(MatchType::Presence(()))
    ));
    assert_eq!(bound(&out, "orders"), vec![name.clone()]);
    assert_eq!(bound(&out, "legacy-api"), vec![name.clone()]);
}

#[test]
fn the_most_specific_peer_authentication_wins_per_port() {
    let override_pa = "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: legacy, namespace: production}
spec:
  selector: {matchLabels: {app: legacy-api}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls: {8443: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mesh, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
";
    // The namespace policy is UNSET: it inherits the mesh-wide STRICT.
    let ns_unset = SEED_PA.replace("STRICT", "UNSET");
    let out = translate(
        &set_of(&format!("{PODS}{ns_unset}---{override_pa}")),
        "cluster.local",
    );
    assert_eq!(
        bound(&out, "orders"),
        vec!["production/converted_peer_authentication_strict".to_string()]
    );
    let legacy = bound(&out, "legacy-api");
    assert_eq!(
        legacy,
        vec!["production/converted_peer_authentication_strict-8443".to_string()]
    );
    let p = policies(&out)
        .into_iter()
        .find(|(k, _)| *k == legacy[0])
        .unwrap()
        .1;
    assert_eq!(
        p.rules[0].clauses[1].matches[0].destination_ports,
        vec![8443]
    );
}

#[test]
fn authorization_policies_keep_their_scope_and_l7_attributes_fail_closed() {
    let aps = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {ipBlocks: [198.51.100.0/24]}}]}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: ns-allow, namespace: production}
spec:
  rules:
  - from: [{source: {principals: [cluster.local/ns/production/sa/orders]}}]
  - to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: orders-deny, namespace: production}
spec:
  selector: {matchLabels: {app: orders}}
  action: DENY
  rules: [{from: [{source: {namespaces: [dev]}}], to: [{operation: {paths: [/admin]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: production}
spec: {action: AUDIT, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: at-waypoint, namespace: production}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
";
    let out = translate(&set_of(&format!("{PODS}{aps}")), "cluster.local");
    let ps: std::collections::BTreeMap<String, Authorization> =
        policies(&out).into_iter().collect();
    assert_eq!(
        ps.keys().cloned().collect::<Vec<_>>(),
        vec![
            "istio-system/mesh-deny",
            "production/ns-allow",
            "production/orders-deny"
        ],
        "AUDIT has no effect and waypoint policies are not ztunnel's"
    );
    assert_eq!(ps["istio-system/mesh-deny"].scope, Scope::Global as i32);
    assert_eq!(
        ps["istio-system/mesh-deny"].rules[0].clauses[0].matches[0].source_ips[0].length,
        24
    );
    let allow = &ps["production/ns-allow"];
    assert_eq!(allow.scope, Scope::Namespace as i32);
    assert_eq!(
        allow.rules.len(),
        1,
        "the ALLOW rule needing a method can never match at L4"
    );
    let deny = &ps["production/orders-deny"];
    assert_eq!(
        deny.rules[0].clauses.len(),
        2,
        "the DENY keeps its L4 part: from + a match-all for the path"
    );
    assert_eq!(
        bound(&out, "orders"),
        vec!["production/orders-deny".to_string()]
    );
    assert!(bound(&out, "legacy-api").is_empty());
}
