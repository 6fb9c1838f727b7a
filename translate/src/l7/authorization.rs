//! AuthorizationPolicies with `targetRefs` → the waypoint. A policy naming a Service applies to that Service; one
//! naming a waypoint's Gateway applies to every Service using that waypoint. Policies are passed as written
//! (the waypoint checks every attribute, L7 ones included); the names become `<namespace>/<name>`.

use mesh_proto::mesh::l7::v1 as pb;

use mesh_model::waypoint::service_waypoint;
use mesh_model::{
    AuthorizationPolicy, AuthzAction, ConfigSet, PolicyTargetReference, Rule, Service,
};

fn names(r: &PolicyTargetReference, policy_ns: &str, kind: &str, ns: &str, name: &str) -> bool {
    r.kind == kind && r.name == name && r.namespace.as_deref().unwrap_or(policy_ns) == ns
}

/// The policies the waypoint enforces for `svc`, sorted by name.
pub fn policies_for(set: &ConfigSet, svc: &Service) -> Vec<pb::AuthorizationPolicy> {
    let (ns, name) = (svc.metadata.namespace.as_str(), svc.metadata.name.as_str());
    let waypoint = service_waypoint(set, svc);
    let mut out: Vec<pb::AuthorizationPolicy> = set
        .authorization_policies()
        .filter(|ap| {
            let pns = ap.metadata.namespace.as_str();
            ap.spec.all_target_refs().any(|r| {
                names(r, pns, "Service", ns, name)
                    || waypoint
                        .as_ref()
                        .is_some_and(|w| names(r, pns, "Gateway", w.namespace, w.name))
            })
        })
        .filter_map(policy)
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn policy(ap: &AuthorizationPolicy) -> Option<pb::AuthorizationPolicy> {
    use pb::authorization_policy::Action;
    let action = match ap.spec.action {
        AuthzAction::Allow => Action::Allow,
        AuthzAction::Deny => Action::Deny,
        AuthzAction::Audit => Action::Audit,
        // Rejected by validation; never enforced as something else.
        AuthzAction::Custom => return None,
    };
    Some(pb::AuthorizationPolicy {
        name: format!("{}/{}", ap.metadata.namespace, ap.metadata.name),
        action: action as i32,
        rules: ap.spec.rules.iter().map(rule).collect(),
    })
}

fn rule(r: &Rule) -> pb::AuthzRule {
    pb::AuthzRule {
        from: r
            .from
            .iter()
            .map(|f| {
                let s = f.source.clone().unwrap_or_default();
                pb::AuthzSource {
                    principals: s.principals,
                    not_principals: s.not_principals,
                    request_principals: s.request_principals,
                    not_request_principals: s.not_request_principals,
                    namespaces: s.namespaces,
                    not_namespaces: s.not_namespaces,
                    ip_blocks: s.ip_blocks,
                    not_ip_blocks: s.not_ip_blocks,
                    remote_ip_blocks: s.remote_ip_blocks,
                    not_remote_ip_blocks: s.not_remote_ip_blocks,
                }
            })
            .collect(),
        to: r
            .to
            .iter()
            .map(|t| {
                let o = t.operation.clone().unwrap_or_default();
                pb::AuthzOperation {
                    hosts: o.hosts,
                    not_hosts: o.not_hosts,
                    ports: o.ports,
                    not_ports: o.not_ports,
                    methods: o.methods,
                    not_methods: o.not_methods,
                    paths: o.paths,
                    not_paths: o.not_paths,
                }
            })
            .collect(),
        when: r
            .when
            .iter()
            .map(|c| pb::AuthzCondition {
                key: c.key.clone(),
                values: c.values.clone(),
                not_values: c.not_values.clone(),
            })
            .collect(),
    }
}
