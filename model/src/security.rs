//! `security.istio.io`: PeerAuthentication and AuthorizationPolicy, as Istio defines them.

use std::collections::BTreeMap;
use std::fmt;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::meta::ObjectMeta;
use super::validate::{check_port, parse_cidr, Findings};

/// `selector: { matchLabels: ... }` on a policy; absent means the whole namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkloadSelector {
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerAuthentication {
    pub metadata: ObjectMeta,
    pub spec: PeerAuthenticationSpec,
}

#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource,
)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    doc = "Istio mutual TLS mode for workloads, per port if needed",
    plural = "peerauthentications",
    namespaced,
    root = "PeerAuthenticationResource"
)]
#[serde(default, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    pub selector: Option<WorkloadSelector>,
    pub mtls: Option<PeerMtls>,
    /// Port → mode; YAML keys may be numbers or quoted numbers (Istio's JSON form).
    #[serde(deserialize_with = "port_map")]
    // JSON (and so the apiserver) only has string keys: a YAML `8080:` key arrives as "8080".
    #[schemars(with = "BTreeMap<String, PeerMtls>")]
    pub port_level_mtls: BTreeMap<u32, PeerMtls>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct PeerMtls {
    pub mode: MtlsMode,
}

/// `UNSET` inherits from the parent scope (workload → namespace → mesh); the mesh default is PERMISSIVE.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl PeerAuthenticationSpec {
    /// The mode this policy sets for `port`: its port-level mode if one is set (and not UNSET), else its own.
    pub fn mode_for_port(&self, port: u32) -> MtlsMode {
        match self.port_level_mtls.get(&port) {
            Some(p) if p.mode != MtlsMode::Unset => p.mode,
            _ => self.mtls.map(|m| m.mode).unwrap_or_default(),
        }
    }
}

/// A map key that is a port number, written either as a YAML integer or as a string.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct PortKey(u32);

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortKey, E> {
                u32::try_from(v)
                    .map(PortKey)
                    .map_err(|_| E::custom("port number too large"))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortKey, E> {
                u32::try_from(v)
                    .map(PortKey)
                    .map_err(|_| E::custom("port number out of range"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortKey, E> {
                v.parse()
                    .map(PortKey)
                    .map_err(|_| E::custom(format!("invalid port number {v:?}")))
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn port_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u32, PeerMtls>, D::Error> {
    let raw = BTreeMap::<PortKey, PeerMtls>::deserialize(d)?;
    Ok(raw.into_iter().map(|(k, v)| (k.0, v)).collect())
}

/// A list of strings where numbers are accepted too (`ports: [8080]` as well as `["8080"]`).
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        S(String),
        N(u64),
    }
    let items = Option::<Vec<Item>>::deserialize(d)?.unwrap_or_default();
    Ok(items
        .into_iter()
        .map(|i| match i {
            Item::S(s) => s,
            Item::N(n) => n.to_string(),
        })
        .collect())
}

impl PeerAuthentication {
    pub(crate) fn validate(&self, f: &mut Findings) {
        let s = &self.spec;
        if let Some(sel) = &s.selector {
            f.labels("spec.selector.matchLabels", &sel.match_labels);
        }
        if !s.port_level_mtls.is_empty()
            && s.selector
                .as_ref()
                .is_none_or(|sel| sel.match_labels.is_empty())
        {
            f.error(
                "spec.portLevelMtls",
                "requires a workload selector (ports are a workload's, not a namespace's)",
            );
        }
        for port in s.port_level_mtls.keys() {
            f.port(format!("spec.portLevelMtls.{port}"), *port);
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    pub spec: AuthorizationPolicySpec,
}

#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource,
)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "AuthorizationPolicy",
    doc = "Istio access control for workloads, Services or waypoints",
    plural = "authorizationpolicies",
    namespaced,
    root = "AuthorizationPolicyResource"
)]
#[serde(default, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Binds the policy to workloads (enforced by ztunnel: L4 only).
    pub selector: Option<WorkloadSelector>,
    /// Binds the policy to a waypoint `Gateway` or a `Service` (enforced by the waypoint: L7 too).
    pub target_ref: Option<PolicyTargetReference>,
    pub target_refs: Vec<PolicyTargetReference>,
    pub action: AuthzAction,
    pub provider: Option<ExtensionProvider>,
    /// ALLOW with no rules allows nothing; a request matches if any rule matches.
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthzAction {
    #[default]
    Allow,
    Deny,
    Audit,
    /// Rejected by validation: external authorization is not supported.
    Custom,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct PolicyTargetReference {
    pub group: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct ExtensionProvider {
    pub name: String,
}

/// All of `from`, `to` and `when` must match (each list matches if any entry does; empty matches all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Rule {
    pub from: Vec<RuleFrom>,
    pub to: Vec<RuleTo>,
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct RuleFrom {
    pub source: Option<Source>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct RuleTo {
    pub operation: Option<Operation>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct Source {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub request_principals: Vec<String>,
    pub not_request_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    pub ip_blocks: Vec<String>,
    pub not_ip_blocks: Vec<String>,
    pub remote_ip_blocks: Vec<String>,
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct Operation {
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    /// Port numbers as strings, as Istio has them; plain YAML numbers are accepted too.
    #[serde(deserialize_with = "string_list")]
    #[schemars(schema_with = "super::schema::int_or_string_list")]
    pub ports: Vec<String>,
    #[serde(deserialize_with = "string_list")]
    #[schemars(schema_with = "super::schema::int_or_string_list")]
    pub not_ports: Vec<String>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct Condition {
    pub key: String,
    #[serde(deserialize_with = "string_list")]
    #[schemars(schema_with = "super::schema::int_or_string_list")]
    pub values: Vec<String>,
    #[serde(deserialize_with = "string_list")]
    #[schemars(schema_with = "super::schema::int_or_string_list")]
    pub not_values: Vec<String>,
}

/// `when` keys with a fixed name; `request.headers[...]` and `request.auth.claims[...]` take a name.
const CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "source.namespace",
    "source.principal",
    "remote.ip",
    "destination.ip",
    "destination.port",
    "connection.sni",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
];

fn known_condition_key(key: &str) -> bool {
    let indexed = |prefix: &str| {
        key.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|n| !n.is_empty())
    };
    CONDITION_KEYS.contains(&key)
        || indexed("request.headers[")
        || indexed("request.auth.claims[")
        || key.starts_with("experimental.envoy.filters.")
}

fn wildcard_inside(v: &str) -> bool {
    let core = v.strip_prefix('*').unwrap_or(v);
    core.strip_suffix('*').unwrap_or(core).contains('*')
}

/// Istio matches strings exactly, by prefix (`abc*`), by suffix (`*abc`) or by presence (`*`).
fn check_match_values(f: &mut Findings, path: &str, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        if v.is_empty() {
            f.error(format!("{path}[{i}]"), "must not be empty");
        } else if wildcard_inside(v) {
            f.error(
                format!("{path}[{i}]"),
                "'*' is only allowed at the start or the end",
            );
        }
    }
}

fn check_cidrs(f: &mut Findings, path: &str, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        f.check(format!("{path}[{i}]"), parse_cidr(v).map(|_| ()));
    }
}

fn check_ports(f: &mut Findings, path: &str, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        match v.parse::<u32>() {
            Ok(p) => f.check(format!("{path}[{i}]"), check_port(p)),
            Err(_) => f.error(format!("{path}[{i}]"), format!("invalid port {v:?}")),
        }
    }
}

impl AuthorizationPolicySpec {
    /// `targetRef` and `targetRefs` together.
    pub fn all_target_refs(&self) -> impl Iterator<Item = &PolicyTargetReference> {
        self.target_ref.iter().chain(&self.target_refs)
    }

    /// Field paths (like `spec.rules[0].to[0].operation.methods`) of every attribute only an L7 proxy can
    /// check. ztunnel cannot, so a selector-bound policy with any of these fails closed.
    pub fn l7_attributes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            for (j, from) in rule.from.iter().enumerate() {
                let Some(s) = &from.source else { continue };
                for (field, v) in [
                    ("requestPrincipals", &s.request_principals),
                    ("notRequestPrincipals", &s.not_request_principals),
                ] {
                    if !v.is_empty() {
                        out.push(format!("spec.rules[{i}].from[{j}].source.{field}"));
                    }
                }
            }
            for (j, to) in rule.to.iter().enumerate() {
                let Some(o) = &to.operation else { continue };
                let l7 = [
                    ("hosts", &o.hosts),
                    ("notHosts", &o.not_hosts),
                    ("methods", &o.methods),
                    ("notMethods", &o.not_methods),
                    ("paths", &o.paths),
                    ("notPaths", &o.not_paths),
                ];
                for (field, v) in l7 {
                    if !v.is_empty() {
                        out.push(format!("spec.rules[{i}].to[{j}].operation.{field}"));
                    }
                }
            }
            for (j, c) in rule.when.iter().enumerate() {
                if c.key.starts_with("request.") {
                    out.push(format!("spec.rules[{i}].when[{j}]"));
                }
            }
        }
        out
    }
}

impl AuthorizationPolicy {
    pub(crate) fn validate(&self, f: &mut Findings) {
        let s = &self.spec;
        if s.action == AuthzAction::Custom {
            f.error(
                "spec.action",
                "CUSTOM is unsupported: this mesh has no external authorization",
            );
        } else if s.provider.is_some() {
            f.error("spec.provider", "only valid with action CUSTOM");
        }
        let has_refs = s.target_ref.is_some() || !s.target_refs.is_empty();
        if let Some(sel) = &s.selector {
            f.labels("spec.selector.matchLabels", &sel.match_labels);
            if has_refs {
                f.error(
                    "spec.selector",
                    "selector and targetRef(s) cannot both be set",
                );
            }
        }
        if s.target_ref.is_some() && !s.target_refs.is_empty() {
            f.error(
                "spec.targetRef",
                "targetRef and targetRefs cannot both be set",
            );
        }
        let refs = s
            .target_ref
            .iter()
            .map(|r| ("spec.targetRef".to_string(), r));
        let refs = refs.chain(
            s.target_refs
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)),
        );
        for (path, r) in refs {
            self.validate_target_ref(f, &path, r);
        }
        for (i, rule) in s.rules.iter().enumerate() {
            validate_rule(f, &format!("spec.rules[{i}]"), rule);
        }
    }

    fn validate_target_ref(&self, f: &mut Findings, path: &str, r: &PolicyTargetReference) {
        f.required(format!("{path}.name"), &r.name);
        let group = match r.kind.as_str() {
            "Gateway" | "GatewayClass" => "gateway.networking.k8s.io",
            "Service" => "",
            "ServiceEntry" => "networking.istio.io",
            _ => {
                f.error(
                    format!("{path}.kind"),
                    "must be Gateway, GatewayClass, Service or ServiceEntry",
                );
                return;
            }
        };
        if r.group != group {
            f.error(
                format!("{path}.group"),
                format!("must be {group:?} for kind {}", r.kind),
            );
        }
        if r.namespace
            .as_ref()
            .is_some_and(|ns| *ns != self.metadata.namespace)
        {
            f.error(
                format!("{path}.namespace"),
                "cross-namespace targets are not allowed",
            );
        }
    }
}

fn validate_rule(f: &mut Findings, path: &str, rule: &Rule) {
    for (j, from) in rule.from.iter().enumerate() {
        let p = format!("{path}.from[{j}].source");
        let Some(s) = &from.source else {
            f.error(p, "required");
            continue;
        };
        if *s == Source::default() {
            f.error(&p, "at least one field must be set");
        }
        for (field, v) in [
            ("principals", &s.principals),
            ("notPrincipals", &s.not_principals),
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
            ("namespaces", &s.namespaces),
            ("notNamespaces", &s.not_namespaces),
        ] {
            check_match_values(f, &format!("{p}.{field}"), v);
        }
        for (field, v) in [
            ("ipBlocks", &s.ip_blocks),
            ("notIpBlocks", &s.not_ip_blocks),
            ("remoteIpBlocks", &s.remote_ip_blocks),
            ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ] {
            check_cidrs(f, &format!("{p}.{field}"), v);
        }
    }
    for (j, to) in rule.to.iter().enumerate() {
        let p = format!("{path}.to[{j}].operation");
        let Some(o) = &to.operation else {
            f.error(p, "required");
            continue;
        };
        if *o == Operation::default() {
            f.error(&p, "at least one field must be set");
        }
        check_ports(f, &format!("{p}.ports"), &o.ports);
        check_ports(f, &format!("{p}.notPorts"), &o.not_ports);
        for (field, v) in [
            ("hosts", &o.hosts),
            ("notHosts", &o.not_hosts),
            ("methods", &o.methods),
            ("notMethods", &o.not_methods),
            ("paths", &o.paths),
            ("notPaths", &o.not_paths),
        ] {
            check_match_values(f, &format!("{p}.{field}"), v);
        }
    }
    for (j, c) in rule.when.iter().enumerate() {
        let p = format!("{path}.when[{j}]");
        if c.key.is_empty() {
            f.error(format!("{p}.key"), "required");
        } else if !known_condition_key(&c.key) {
            f.error(
                format!("{p}.key"),
                format!("unknown condition key {:?}", c.key),
            );
        }
        if c.values.is_empty() && c.not_values.is_empty() {
            f.error(&p, "one of values or notValues is required");
        }
        match c.key.as_str() {
            "source.ip" | "remote.ip" | "destination.ip" => {
                check_cidrs(f, &format!("{p}.values"), &c.values);
                check_cidrs(f, &format!("{p}.notValues"), &c.not_values);
            }
            "destination.port" => {
                check_ports(f, &format!("{p}.values"), &c.values);
                check_ports(f, &format!("{p}.notValues"), &c.not_values);
            }
            _ => {}
        }
    }
}
