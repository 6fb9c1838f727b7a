//! L4 authorization as Istio's ztunnel applies it: `istio.security.Authorization` policies compiled once per
//! config and evaluated for every inbound connection (and again for established ones when policy changes).
//!
//! A policy applies to a workload when it is GLOBAL, NAMESPACE-scoped to the workload's namespace, or a
//! WORKLOAD_SELECTOR policy the workload names in its `authorization_policies`. Any matching DENY denies; with no
//! ALLOW policy the connection is allowed; otherwise one ALLOW must match. Within a policy, rules are OR-ed, a
//! rule's clauses AND-ed, a clause's matches OR-ed; within a match every set field must hold (values OR-ed), and a
//! `not_*` field holds when none of its values match.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use mesh_primitives::cidr::{from_parts, IpNet};
use mesh_proto::istio::security as pb;

use crate::workload::ip_from_bytes as ip;
use crate::workload::state::Workload;
use mesh_primitives::identity::Identity;

#[derive(Debug, Clone, PartialEq)]
enum StrMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

impl StrMatch {
    fn matches(&self, v: Option<&str>) -> bool {
        let Some(v) = v else { return false };
        match self {
            Self::Exact(e) => v == e,
            Self::Prefix(p) => v.starts_with(p.as_str()),
            Self::Suffix(s) => v.ends_with(s.as_str()),
            Self::Presence => !v.is_empty(),
        }
    }
}

#[derive(Debug, Default, Clone)]
struct MatchSet {
    namespaces: Vec<StrMatch>,
    not_namespaces: Vec<StrMatch>,
    principals: Vec<StrMatch>,
    not_principals: Vec<StrMatch>,
    source_ips: Vec<IpNet>,
    not_source_ips: Vec<IpNet>,
    destination_ips: Vec<IpNet>,
    not_destination_ips: Vec<IpNet>,
    destination_ports: Vec<u32>,
    not_destination_ports: Vec<u32>,
}

/// What is known of a connection when it is authorized.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's verified identity; `None` for plaintext.
    pub principal: Option<Identity>,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
}

impl MatchSet {
    fn matches(&self, c: &ConnInfo) -> bool {
        // Istio principals have no scheme: `cluster.local/ns/default/sa/sleep`.
        let principal = c.principal.as_ref().map(|p| {
            format!(
                "{}/ns/{}/sa/{}",
                p.trust_domain, p.namespace, p.service_account
            )
        });
        let ns = c.principal.as_ref().map(|p| p.namespace.as_str());
        let strs = |pos: &[StrMatch], neg: &[StrMatch], v: Option<&str>| {
            (pos.is_empty() || pos.iter().any(|m| m.matches(v)))
                && !neg.iter().any(|m| m.matches(v))
        };
        let ips = |pos: &[IpNet], neg: &[IpNet], ip: IpAddr| {
            (pos.is_empty() || pos.iter().any(|n| n.contains(&ip)))
                && !neg.iter().any(|n| n.contains(&ip))
        };
        let port = u32::from(c.dst_port);
        strs(&self.namespaces, &self.not_namespaces, ns)
            && strs(&self.principals, &self.not_principals, principal.as_deref())
            && ips(&self.source_ips, &self.not_source_ips, c.src_ip)
            && ips(&self.destination_ips, &self.not_destination_ips, c.dst_ip)
            && (self.destination_ports.is_empty() || self.destination_ports.contains(&port))
            && !self.not_destination_ports.contains(&port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug)]
pub struct Policy {
    /// `<namespace>/<name>`.
    pub key: String,
    pub namespace: String,
    scope: pb::Scope,
    pub action: Action,
    /// Rules → clauses → matches.
    rules: Vec<Vec<Vec<MatchSet>>>,
}

impl Policy {
    fn matches(&self, c: &ConnInfo) -> bool {
        self.rules.iter().any(|clauses| {
            clauses
                .iter()
                .all(|matches| matches.iter().any(|m| m.matches(c)))
        })
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// A DENY policy matched.
    Denied,
    /// ALLOW policies apply and none matched.
    NotAllowed,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Denied => "denied_by_policy",
            Self::NotAllowed => "no_allow_policy_matched",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// The policy that decided (for NotAllowed: the first ALLOW policy that applied).
    Deny {
        policy: String,
        reason: DenyReason,
    },
}

/// Every policy, indexed by how it applies.
#[derive(Debug, Default)]
pub struct Policies {
    by_key: HashMap<String, Arc<Policy>>,
    global: Vec<Arc<Policy>>,
    by_namespace: HashMap<String, Vec<Arc<Policy>>>,
}

fn str_matches(list: &[pb::StringMatch]) -> Vec<StrMatch> {
    use pb::string_match::MatchType;
    list.iter()
        .filter_map(|m| {
            Some(match m.match_type.as_ref()? {
                MatchType::Exact(e) => StrMatch::Exact(e.clone()),
                MatchType::Prefix(p) => StrMatch::Prefix(p.clone()),
                MatchType::Suffix(s) => StrMatch::Suffix(s.clone()),
                MatchType::Presence(()) => StrMatch::Presence,
            })
        })
        .collect()
}

fn cidrs(list: &[pb::Address], what: &str) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|a| {
            let ip = ip(&a.address)
                .ok_or_else(|| format!("{what}: address of {} bytes", a.address.len()))?;
            from_parts(ip, a.length).map_err(|e| format!("{what}: {e}"))
        })
        .collect()
}

fn compile_match(m: &pb::Match, what: &str) -> Result<MatchSet, String> {
    Ok(MatchSet {
        namespaces: str_matches(&m.namespaces),
        not_namespaces: str_matches(&m.not_namespaces),
        principals: str_matches(&m.principals),
        not_principals: str_matches(&m.not_principals),
        source_ips: cidrs(&m.source_ips, what)?,
        not_source_ips: cidrs(&m.not_source_ips, what)?,
        destination_ips: cidrs(&m.destination_ips, what)?,
        not_destination_ips: cidrs(&m.not_destination_ips, what)?,
        destination_ports: m.destination_ports.clone(),
        not_destination_ports: m.not_destination_ports.clone(),
    })
}

impl Policies {
    /// Compiles every policy; an invalid one fails the whole set (the previous set keeps applying).
    pub fn compile<'a>(
        list: impl IntoIterator<Item = &'a pb::Authorization>,
    ) -> Result<Self, String> {
        let mut out = Self::default();
        for a in list {
            let key = format!("{}/{}", a.namespace, a.name);
            let what = format!("Authorization {key}");
            let rules = a
                .rules
                .iter()
                .map(|r| {
                    r.clauses
                        .iter()
                        .map(|c| c.matches.iter().map(|m| compile_match(m, &what)).collect())
                        .collect::<Result<Vec<Vec<MatchSet>>, String>>()
                })
                .collect::<Result<_, _>>()?;
            let scope = pb::Scope::try_from(a.scope)
                .map_err(|_| format!("{what}: unknown scope {}", a.scope))?;
            let action = match pb::Action::try_from(a.action) {
                Ok(pb::Action::Allow) => Action::Allow,
                Ok(pb::Action::Deny) => Action::Deny,
                Err(_) => return Err(format!("{what}: unknown action {}", a.action)),
            };
            // Dry-run policies are evaluated by Istio only for logging; they never change a decision.
            if a.dry_run {
                continue;
            }
            let p = Arc::new(Policy {
                key: key.clone(),
                namespace: a.namespace.clone(),
                scope,
                action,
                rules,
            });
            match scope {
                pb::Scope::Global => out.global.push(p.clone()),
                pb::Scope::Namespace => out
                    .by_namespace
                    .entry(a.namespace.clone())
                    .or_default()
                    .push(p.clone()),
                pb::Scope::WorkloadSelector => {}
            }
            out.by_key.insert(key, p);
        }
        Ok(out)
    }

    /// Policy names, sorted (for `/config_dump`).
    pub fn keys(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.by_key.keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Decides a connection to workload `dst`.
    pub fn check(&self, dst: &Workload, c: &ConnInfo) -> Verdict {
        let selected = dst.authorization_policies.iter().filter_map(|k| {
            self.by_key
                .get(k)
                .filter(|p| p.scope == pb::Scope::WorkloadSelector && p.namespace == dst.namespace)
        });
        let applicable: Vec<&Arc<Policy>> = self
            .global
            .iter()
            .chain(self.by_namespace.get(&dst.namespace).into_iter().flatten())
            .chain(selected)
            .collect();
        if let Some(p) = applicable
            .iter()
            .find(|p| p.action == Action::Deny && p.matches(c))
        {
            return Verdict::Deny {
                policy: p.key.clone(),
                reason: DenyReason::Denied,
            };
        }
        let mut allows = applicable
            .iter()
            .filter(|p| p.action == Action::Allow)
            .peekable();
        let Some(first) = allows.peek().map(|p| p.key.clone()) else {
            return Verdict::Allow;
        };
        if allows.any(|p| p.matches(c)) {
            Verdict::Allow
        } else {
            Verdict::Deny {
                policy: first,
                reason: DenyReason::NotAllowed,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::string_match::MatchType;

    fn sm(t: MatchType) -> pb::StringMatch {
        pb::StringMatch {
            match_type: Some(t),
        }
    }

    fn policy(
        name: &str,
        ns: &str,
        scope: pb::Scope,
        action: pb::Action,
        rules: Vec<pb::Rule>,
    ) -> pb::Authorization {
        pb::Authorization {
            name: name.into(),
            namespace: ns.into(),
            scope: scope as i32,
            action: action as i32,
            rules,
            dry_run: false,
        }
    }

    fn rule(matches: Vec<pb::Match>) -> pb::Rule {
        pb::Rule {
            clauses: vec![pb::Clause { matches }],
        }
    }

    fn workload(ns: &str, bound: &[&str]) -> Workload {
        let mut w: Workload = mesh_primitives::yaml::from_str(&format!(
            "{{name: server, namespace: {ns}, ip: 198.18.2.2, node: node2}}"
        ))
        .expect("workload");
        w.authorization_policies = bound.iter().map(|s| s.to_string()).collect();
        w
    }

    fn conn(ns: Option<&str>, src: &str, port: u16) -> ConnInfo {
        ConnInfo {
            principal: ns.map(|ns| Identity::new("cluster.local", ns, "client")),
            src_ip: src.parse().expect("ip"),
            dst_ip: "198.18.2.2".parse().expect("ip"),
            dst_port: port,
        }
    }

    #[test]
    fn cidrs_match_by_prefix() {
        let c = cidrs(
            &[pb::Address {
                address: vec![198, 18, 1, 0],
                length: 23,
            }],
            "test",
        )
        .unwrap()[0];
        assert!(c.contains(&"198.18.1.200".parse::<IpAddr>().unwrap()));
        assert!(c.contains(&"198.18.0.1".parse::<IpAddr>().unwrap()));
        assert!(!c.contains(&"198.18.2.1".parse::<IpAddr>().unwrap()));
        assert!(!c.contains(&"::1".parse::<IpAddr>().unwrap()));
        let too_long = pb::Address {
            address: vec![198, 18, 1, 0],
            length: 33,
        };
        assert!(cidrs(&[too_long], "test").is_err());
    }

    #[test]
    fn deny_wins_allow_must_match_and_scope_decides_what_applies() {
        let only_ns_a = rule(vec![pb::Match {
            namespaces: vec![sm(MatchType::Exact("a".into()))],
            ..Default::default()
        }]);
        let deny_port = rule(vec![pb::Match {
            destination_ports: vec![9090],
            ..Default::default()
        }]);
        let list = vec![
            policy(
                "allow-a",
                "prod",
                pb::Scope::Namespace,
                pb::Action::Allow,
                vec![only_ns_a],
            ),
            policy(
                "deny-9090",
                "prod",
                pb::Scope::WorkloadSelector,
                pb::Action::Deny,
                vec![deny_port],
            ),
            policy(
                "elsewhere",
                "other",
                pb::Scope::Namespace,
                pb::Action::Allow,
                vec![],
            ),
        ];
        let p = Policies::compile(&list).unwrap();
        let w = workload("prod", &["prod/deny-9090"]);
        assert_eq!(
            p.check(&w, &conn(Some("a"), "198.18.1.2", 8080)),
            Verdict::Allow
        );
        assert_eq!(
            p.check(&w, &conn(Some("b"), "198.18.1.2", 8080)),
            Verdict::Deny {
                policy: "prod/allow-a".into(),
                reason: DenyReason::NotAllowed
            }
        );
        assert_eq!(
            p.check(&w, &conn(Some("a"), "198.18.1.2", 9090)),
            Verdict::Deny {
                policy: "prod/deny-9090".into(),
                reason: DenyReason::Denied
            }
        );
        // Not bound: the selector policy does not apply; another namespace's policy never does.
        let unbound = workload("prod", &[]);
        assert_eq!(
            p.check(&unbound, &conn(Some("a"), "198.18.1.2", 9090)),
            Verdict::Allow
        );
        assert_eq!(
            p.check(&workload("third", &[]), &conn(None, "198.18.1.2", 1)),
            Verdict::Allow
        );
        // ALLOW with no rules applies and allows nothing.
        let w_other = workload("other", &[]);
        assert!(matches!(
            p.check(&w_other, &conn(Some("a"), "198.18.1.2", 80)),
            Verdict::Deny { .. }
        ));
    }

    #[test]
    fn strict_is_a_deny_of_connections_without_a_principal() {
        let strict = rule(vec![pb::Match {
            not_principals: vec![sm(MatchType::Presence(()))],
            ..Default::default()
        }]);
        let p = Policies::compile(&[policy(
            "strict",
            "prod",
            pb::Scope::Global,
            pb::Action::Deny,
            vec![strict],
        )])
        .unwrap();
        let w = workload("prod", &[]);
        assert_eq!(
            p.check(&w, &conn(Some("a"), "198.18.1.2", 80)),
            Verdict::Allow
        );
        assert!(matches!(
            p.check(&w, &conn(None, "198.18.1.2", 80)),
            Verdict::Deny { .. }
        ));
    }

    #[test]
    fn empty_rule_matches_everything_and_bad_addresses_are_rejected() {
        let p = Policies::compile(&[policy(
            "all",
            "prod",
            pb::Scope::Namespace,
            pb::Action::Allow,
            vec![pb::Rule { clauses: vec![] }],
        )])
        .unwrap();
        assert_eq!(
            p.check(&workload("prod", &[]), &conn(None, "198.18.1.2", 80)),
            Verdict::Allow
        );
        let bad = rule(vec![pb::Match {
            source_ips: vec![pb::Address {
                address: vec![1, 2, 3],
                length: 8,
            }],
            ..Default::default()
        }]);
        let e = Policies::compile(&[policy(
            "bad",
            "prod",
            pb::Scope::Namespace,
            pb::Action::Allow,
            vec![bad],
        )])
        .unwrap_err();
        assert!(e.contains("prod/bad") && e.contains("3 bytes"), "{e}");
    }
}
