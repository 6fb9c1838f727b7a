//! AuthorizationPolicy at the waypoint: the full attribute set (L7 included), compiled once per config and
//! checked for every request before routing. Any matching DENY denies; if an ALLOW applies, one must match.
//! Values keep Istio's forms: `abc`, `abc*`, `*abc`, `*` (present). No JWT is validated here, so
//! `requestPrincipals` and `request.auth.*` never match (their `not*` forms always do).

use std::net::IpAddr;

use http::HeaderMap;
use mesh_primitives::cidr::IpNet;
use mesh_proto::mesh::l7::v1 as pb;

#[derive(Debug, Clone)]
enum Value {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Any,
}

impl Value {
    fn parse(v: &str, fold_case: bool) -> Self {
        let v = if fold_case {
            v.to_ascii_lowercase()
        } else {
            v.to_string()
        };
        if v == "*" {
            Self::Any
        } else if let Some(p) = v.strip_suffix('*') {
            Self::Prefix(p.to_string())
        } else if let Some(s) = v.strip_prefix('*') {
            Self::Suffix(s.to_string())
        } else {
            Self::Exact(v)
        }
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            Self::Exact(e) => v == e,
            Self::Prefix(p) => v.starts_with(p.as_str()),
            Self::Suffix(s) => v.ends_with(s.as_str()),
            Self::Any => !v.is_empty(),
        }
    }
}

/// A positive and a negative list: the value must match one of `any` (when set) and none of `none`.
#[derive(Debug, Clone, Default)]
struct Field {
    any: Vec<Value>,
    none: Vec<Value>,
}

impl Field {
    fn new(any: &[String], none: &[String], fold_case: bool) -> Self {
        let p = |l: &[String]| l.iter().map(|v| Value::parse(v, fold_case)).collect();
        Self {
            any: p(any),
            none: p(none),
        }
    }

    fn check(&self, v: Option<&str>) -> bool {
        let hit = |list: &[Value]| v.is_some_and(|v| list.iter().any(|m| m.matches(v)));
        (self.any.is_empty() || hit(&self.any)) && !hit(&self.none)
    }
}

#[derive(Debug, Clone, Default)]
struct Ips {
    any: Vec<IpNet>,
    none: Vec<IpNet>,
}

impl Ips {
    fn new(any: &[String], none: &[String]) -> Result<Self, String> {
        let p = |l: &[String]| {
            l.iter()
                .map(|v| mesh_primitives::cidr::parse(v).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            any: p(any)?,
            none: p(none)?,
        })
    }

    fn check(&self, ip: IpAddr) -> bool {
        (self.any.is_empty() || self.any.iter().any(|c| c.contains(&ip)))
            && !self.none.iter().any(|c| c.contains(&ip))
    }
}

#[derive(Debug, Clone, Default)]
struct Source {
    principals: Field,
    request_principals: Field,
    namespaces: Field,
    ips: Ips,
}

#[derive(Debug, Clone, Default)]
struct Operation {
    hosts: Field,
    ports: Field,
    methods: Field,
    paths: Field,
}

#[derive(Debug, Clone)]
enum Key {
    SourceIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationPort,
    Header(http::HeaderName),
    /// Attributes this waypoint never has (JWT claims, SNI): never equal to anything.
    Absent,
}

#[derive(Debug, Clone)]
struct Condition {
    key: Key,
    values: Field,
    ips: Option<Ips>,
}

#[derive(Debug, Clone, Default)]
struct Rule {
    from: Vec<Source>,
    to: Vec<Operation>,
    when: Vec<Condition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Audit,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub action: Action,
    rules: Vec<Rule>,
}

/// What a request is authorized on.
pub struct Request<'a> {
    /// `cluster.local/ns/<ns>/sa/<sa>` (Istio's principal form, no scheme).
    pub principal: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub source_ip: IpAddr,
    pub host: &'a str,
    pub port: u16,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

impl Source {
    fn matches(&self, r: &Request<'_>) -> bool {
        self.principals.check(r.principal)
            && self.request_principals.check(None)
            && self.namespaces.check(r.namespace)
            && self.ips.check(r.source_ip)
    }
}

impl Operation {
    fn matches(&self, r: &Request<'_>) -> bool {
        let host = r.host.to_ascii_lowercase();
        let path = r.path.split('?').next().unwrap_or(r.path);
        self.hosts.check(Some(&host))
            && self.ports.check(Some(&r.port.to_string()))
            && self.methods.check(Some(r.method))
            && self.paths.check(Some(path))
    }
}

impl Condition {
    fn matches(&self, r: &Request<'_>) -> bool {
        match &self.key {
            Key::SourceIp => self.ips.as_ref().is_some_and(|i| i.check(r.source_ip)),
            Key::SourceNamespace => self.values.check(r.namespace),
            Key::SourcePrincipal => self.values.check(r.principal),
            Key::DestinationPort => self.values.check(Some(&r.port.to_string())),
            Key::Header(h) => self
                .values
                .check(r.headers.get(h).and_then(|v| v.to_str().ok())),
            Key::Absent => self.values.check(None),
        }
    }
}

impl Rule {
    fn matches(&self, r: &Request<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(r)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(r)))
            && self.when.iter().all(|c| c.matches(r))
    }
}

impl Policy {
    fn matches(&self, r: &Request<'_>) -> bool {
        self.rules.iter().any(|rule| rule.matches(r))
    }
}

/// `Some(policy name)` when the request is denied (for "no ALLOW matched": the first ALLOW policy).
pub fn check(policies: &[Policy], r: &Request<'_>) -> Option<(String, &'static str)> {
    for p in policies.iter().filter(|p| p.matches(r)) {
        match p.action {
            Action::Deny => return Some((p.name.clone(), "denied_by_policy")),
            Action::Audit => {
                tracing::info!(policy = %p.name, path = r.path, "AUDIT policy matched")
            }
            Action::Allow => {}
        }
    }
    let mut allows = policies
        .iter()
        .filter(|p| p.action == Action::Allow)
        .peekable();
    let first = allows.peek().map(|p| p.name.clone())?;
    if allows.any(|p| p.matches(r)) {
        None
    } else {
        Some((first, "no_allow_policy_matched"))
    }
}

pub fn compile(p: &pb::AuthorizationPolicy) -> Result<Policy, String> {
    use pb::authorization_policy::Action as A;
    let action = match A::try_from(p.action) {
        Ok(A::Allow) => Action::Allow,
        Ok(A::Deny) => Action::Deny,
        Ok(A::Audit) => Action::Audit,
        Err(_) => {
            return Err(format!(
                "authorization {}: unknown action {}",
                p.name, p.action
            ))
        }
    };
    let rules = p
        .rules
        .iter()
        .map(|r| rule(r).map_err(|e| format!("authorization {}: {e}", p.name)))
        .collect::<Result<_, _>>()?;
    Ok(Policy {
        name: p.name.clone(),
        action,
        rules,
    })
}

fn rule(r: &pb::AuthzRule) -> Result<Rule, String> {
    let from = r
        .from
        .iter()
        .map(|s| {
            let mut ips = Ips::new(&s.ip_blocks, &s.not_ip_blocks)?;
            let remote = Ips::new(&s.remote_ip_blocks, &s.not_remote_ip_blocks)?;
            // Without a trusted proxy in front, the remote address is the source address.
            ips.any.extend(remote.any);
            ips.none.extend(remote.none);
            Ok(Source {
                principals: Field::new(&s.principals, &s.not_principals, false),
                request_principals: Field::new(
                    &s.request_principals,
                    &s.not_request_principals,
                    false,
                ),
                namespaces: Field::new(&s.namespaces, &s.not_namespaces, false),
                ips,
            })
        })
        .collect::<Result<_, String>>()?;
    let to =
        r.to.iter()
            .map(|o| Operation {
                hosts: Field::new(&o.hosts, &o.not_hosts, true),
                ports: Field::new(&o.ports, &o.not_ports, false),
                methods: Field::new(&o.methods, &o.not_methods, false),
                paths: Field::new(&o.paths, &o.not_paths, false),
            })
            .collect();
    let when = r
        .when
        .iter()
        .map(|c| {
            let key = match c.key.as_str() {
                "source.ip" | "remote.ip" => Key::SourceIp,
                "source.namespace" => Key::SourceNamespace,
                "source.principal" => Key::SourcePrincipal,
                "destination.port" => Key::DestinationPort,
                k => match k
                    .strip_prefix("request.headers[")
                    .and_then(|h| h.strip_suffix(']'))
                {
                    Some(h) => Key::Header(
                        http::HeaderName::try_from(h)
                            .map_err(|e| format!("when key {k:?}: {e}"))?,
                    ),
                    None => Key::Absent,
                },
            };
            let ips = matches!(key, Key::SourceIp)
                .then(|| Ips::new(&c.values, &c.not_values))
                .transpose()?;
            Ok(Condition {
                key,
                values: Field::new(&c.values, &c.not_values, false),
                ips,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Rule { from, to, when })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn policy(action: pb::authorization_policy::Action, rules: Vec<pb::AuthzRule>) -> Policy {
        compile(&pb::AuthorizationPolicy {
            name: "ns/p".into(),
            action: action as i32,
            rules,
        })
        .expect("compiles")
    }

    fn allow(rule: pb::AuthzRule) -> Vec<Policy> {
        vec![policy(pb::authorization_policy::Action::Allow, vec![rule])]
    }

    struct Req {
        principal: Option<&'static str>,
        ip: &'static str,
        host: &'static str,
        port: u16,
        method: &'static str,
        path: &'static str,
        headers: HeaderMap,
    }

    fn req() -> Req {
        Req {
            principal: Some("cluster.local/ns/shop/sa/web"),
            ip: "198.18.1.7",
            host: "Orders.shop.svc.cluster.local:80",
            port: 80,
            method: "GET",
            path: "/api/v1/orders?limit=3",
            headers: HeaderMap::new(),
        }
    }

    fn allowed(policies: &[Policy], r: &Req) -> bool {
        let request = Request {
            principal: r.principal,
            namespace: r.principal.and_then(|p| p.split('/').nth(2)),
            source_ip: r.ip.parse().expect("ip"),
            host: r.host,
            port: r.port,
            method: r.method,
            path: r.path,
            headers: &r.headers,
        };
        check(policies, &request).is_none()
    }

    fn to(op: pb::AuthzOperation) -> pb::AuthzRule {
        pb::AuthzRule {
            to: vec![op],
            ..Default::default()
        }
    }

    fn from(src: pb::AuthzSource) -> pb::AuthzRule {
        pb::AuthzRule {
            from: vec![src],
            ..Default::default()
        }
    }

    fn when(key: &str, values: &[&str], not_values: &[&str]) -> pb::AuthzRule {
        pb::AuthzRule {
            when: vec![pb::AuthzCondition {
                key: key.into(),
                values: s(values),
                not_values: s(not_values),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn hosts_match_case_insensitively_with_istio_wildcards() {
        let p = allow(to(pb::AuthzOperation {
            hosts: s(&["orders.shop.svc.cluster.local:80"]),
            ..Default::default()
        }));
        assert!(allowed(&p, &req()));
        let p = allow(to(pb::AuthzOperation {
            hosts: s(&["*.svc.cluster.local:80"]),
            not_hosts: s(&["payments*"]),
            ..Default::default()
        }));
        assert!(allowed(&p, &req()));
        let mut r = req();
        r.host = "payments.shop.svc.cluster.local:80";
        assert!(!allowed(&p, &r), "notHosts wins over hosts");
    }

    #[test]
    fn ports_methods_and_paths_without_the_query() {
        let p = allow(to(pb::AuthzOperation {
            ports: s(&["80"]),
            methods: s(&["GET"]),
            paths: s(&["/api/*"]),
            not_paths: s(&["/api/admin*"]),
            ..Default::default()
        }));
        assert!(
            allowed(&p, &req()),
            "the query string is not part of the path"
        );
        let mut r = req();
        r.port = 8080;
        assert!(!allowed(&p, &r));
        let mut r = req();
        r.method = "POST";
        assert!(!allowed(&p, &r));
        let mut r = req();
        r.path = "/api/admin/users";
        assert!(!allowed(&p, &r), "notPaths");
        let p = allow(to(pb::AuthzOperation {
            not_methods: s(&["DELETE"]),
            not_ports: s(&["9090"]),
            ..Default::default()
        }));
        assert!(allowed(&p, &req()));
        let mut r = req();
        r.method = "DELETE";
        assert!(!allowed(&p, &r));
    }

    #[test]
    fn ip_blocks_and_their_negations() {
        let p = allow(from(pb::AuthzSource {
            ip_blocks: s(&["198.18.0.0/15"]),
            not_ip_blocks: s(&["198.18.1.7"]),
            ..Default::default()
        }));
        assert!(!allowed(&p, &req()), "a host in notIpBlocks is excluded");
        let mut r = req();
        r.ip = "198.18.1.8";
        assert!(allowed(&p, &r));
        r.ip = "203.0.113.1";
        assert!(!allowed(&p, &r), "outside every block");
        let p = allow(from(pb::AuthzSource {
            remote_ip_blocks: s(&["198.18.1.0/24"]),
            ..Default::default()
        }));
        assert!(
            allowed(&p, &req()),
            "remoteIpBlocks: the source address without a trusted proxy"
        );
        let bad = pb::AuthorizationPolicy {
            name: "ns/bad".into(),
            action: 0,
            rules: vec![from(pb::AuthzSource {
                ip_blocks: s(&["198.18.0.0/+8"]),
                ..Default::default()
            })],
        };
        assert!(
            compile(&bad).is_err(),
            "a malformed CIDR is rejected, not ignored"
        );
    }

    #[test]
    fn principals_namespaces_and_not_forms() {
        let p = allow(from(pb::AuthzSource {
            principals: s(&["cluster.local/ns/shop/*"]),
            not_namespaces: s(&["kube-system"]),
            ..Default::default()
        }));
        assert!(allowed(&p, &req()));
        let mut r = req();
        r.principal = None;
        assert!(!allowed(&p, &r), "no peer identity matches no principal");
        let p = allow(from(pb::AuthzSource {
            not_principals: s(&["*"]),
            ..Default::default()
        }));
        assert!(!allowed(&p, &req()));
        assert!(
            allowed(&p, &r),
            "notPrincipals [*] admits only unauthenticated callers"
        );
        // No JWT here: requestPrincipals never match, their not-form always does.
        let p = allow(from(pb::AuthzSource {
            request_principals: s(&["*"]),
            ..Default::default()
        }));
        assert!(!allowed(&p, &req()));
        let p = allow(from(pb::AuthzSource {
            not_request_principals: s(&["*"]),
            ..Default::default()
        }));
        assert!(allowed(&p, &req()));
    }

    #[test]
    fn when_conditions_known_and_unknown_keys() {
        let mut r = req();
        r.headers.insert("x-tenant", "blue".parse().unwrap());
        assert!(allowed(
            &allow(when("request.headers[x-tenant]", &["blue"], &[])),
            &r
        ));
        assert!(!allowed(
            &allow(when("request.headers[x-tenant]", &["red"], &[])),
            &r
        ));
        assert!(!allowed(
            &allow(when("request.headers[x-tenant]", &[], &["bl*"])),
            &r
        ));
        assert!(allowed(
            &allow(when("source.ip", &["198.18.1.0/24"], &[])),
            &r
        ));
        assert!(allowed(
            &allow(when("source.namespace", &["shop"], &[])),
            &r
        ));
        assert!(allowed(&allow(when("destination.port", &["80"], &[])), &r));
        assert!(!allowed(
            &allow(when("destination.port", &["443"], &[])),
            &r
        ));
        // Attributes the waypoint never has (JWT claims, SNI): a positive condition fails, a negative one holds.
        assert!(!allowed(
            &allow(when("request.auth.claims[iss]", &["*"], &[])),
            &r
        ));
        assert!(allowed(&allow(when("connection.sni", &[], &["*"])), &r));
    }

    #[test]
    fn deny_wins_an_allow_must_match_and_audit_changes_nothing() {
        use pb::authorization_policy::Action as A;
        let deny_admin = policy(
            A::Deny,
            vec![to(pb::AuthzOperation {
                paths: s(&["/admin*"]),
                ..Default::default()
            })],
        );
        let allow_all = policy(A::Allow, vec![pb::AuthzRule::default()]);
        let audit = policy(A::Audit, vec![pb::AuthzRule::default()]);
        let mut r = req();
        assert!(allowed(&[allow_all.clone(), audit.clone()], &r));
        assert!(
            allowed(std::slice::from_ref(&audit), &r),
            "AUDIT alone allows"
        );
        r.path = "/admin";
        let set = [allow_all, deny_admin, audit];
        let request = Request {
            principal: r.principal,
            namespace: Some("shop"),
            source_ip: r.ip.parse().unwrap(),
            host: r.host,
            port: r.port,
            method: r.method,
            path: r.path,
            headers: &r.headers,
        };
        assert_eq!(
            check(&set, &request),
            Some(("ns/p".into(), "denied_by_policy"))
        );
        let no_rules = policy(A::Allow, vec![]);
        assert!(
            !allowed(&[no_rules], &req()),
            "an ALLOW without rules allows nothing"
        );
    }
}
