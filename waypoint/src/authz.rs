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
