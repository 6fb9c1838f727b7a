//! `gateway.networking.k8s.io`: Gateway (a waypoint is a Gateway of class `istio-waypoint`), HTTPRoute and
//! GRPCRoute, with the Gateway API's defaults filled in while reading.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::meta::{MeshDuration, ObjectMeta, LABEL_WAYPOINT_FOR};
use super::validate::{check_host, check_regex, Findings};

/// The gateway class Istio gives waypoints.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gateway {
    pub metadata: ObjectMeta,
    pub spec: GatewaySpec,
}

#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource,
)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    doc = "Gateway API Gateway; of class istio-waypoint it declares a waypoint",
    plural = "gateways",
    namespaced,
    root = "GatewayResource"
)]
#[serde(default, rename_all = "camelCase")]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    pub listeners: Vec<Listener>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct Listener {
    pub name: String,
    pub hostname: Option<String>,
    pub port: u32,
    /// `HTTP`, `HTTPS`, `TLS`, `TCP`, `UDP`, or `HBONE` for waypoints.
    pub protocol: String,
    pub allowed_routes: Option<AllowedRoutes>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct AllowedRoutes {
    pub namespaces: Option<RouteNamespaces>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct RouteNamespaces {
    /// `Same` (default), `All` or `Selector`.
    pub from: Option<String>,
}

impl Gateway {
    pub fn is_waypoint(&self) -> bool {
        self.spec.gateway_class_name == WAYPOINT_CLASS
    }

    /// The traffic a waypoint handles, from its `istio.io/waypoint-for` label: `service` (Istio's default),
    /// `workload`, `all` or `none`.
    pub fn waypoint_for(&self) -> &str {
        self.metadata.label(LABEL_WAYPOINT_FOR).unwrap_or("service")
    }

    /// Whether Services that name this waypoint have their traffic sent through it.
    pub fn serves_services(&self) -> bool {
        matches!(self.waypoint_for(), "service" | "all")
    }

    pub(crate) fn validate(&self, f: &mut Findings) {
        let s = &self.spec;
        f.required("spec.gatewayClassName", &s.gateway_class_name);
        if s.listeners.is_empty() {
            f.error("spec.listeners", "at least one listener is required");
        }
        let mut names = BTreeMap::new();
        for (i, l) in s.listeners.iter().enumerate() {
            let path = format!("spec.listeners[{i}]");
            f.required(format!("{path}.name"), &l.name);
            if let Some(first) = names.insert(l.name.as_str(), i) {
                f.error(
                    format!("{path}.name"),
                    format!("duplicate of spec.listeners[{first}].name"),
                );
            }
            f.port(format!("{path}.port"), l.port);
            f.required(format!("{path}.protocol"), &l.protocol);
            if let Some(h) = &l.hostname {
                f.check(format!("{path}.hostname"), check_host(h));
            }
            if let Some(from) = l
                .allowed_routes
                .as_ref()
                .and_then(|a| a.namespaces.as_ref())
                .and_then(|n| n.from.as_ref())
            {
                if !matches!(from.as_str(), "Same" | "All" | "Selector") {
                    f.error(
                        format!("{path}.allowedRoutes.namespaces.from"),
                        "must be Same, All or Selector",
                    );
                }
            }
        }
    }
}

/// Where a route attaches: a Gateway (ingress or waypoint) or, for mesh routing (GAMMA), a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct ParentReference {
    /// Default `gateway.networking.k8s.io`; `""` (core) for a Service parent.
    pub group: String,
    /// Default `Gateway`.
    pub kind: String,
    /// Default: the route's namespace.
    pub namespace: Option<String>,
    pub name: String,
    pub section_name: Option<String>,
    pub port: Option<u32>,
}

impl ParentReference {
    /// A Service parent (GAMMA mesh routing): the core group, written `""` or `core`.
    pub fn is_service(&self) -> bool {
        self.kind == "Service" && (self.group.is_empty() || self.group == "core")
    }
}

impl Default for ParentReference {
    fn default() -> Self {
        ParentReference {
            group: GATEWAY_GROUP.to_string(),
            kind: "Gateway".to_string(),
            namespace: None,
            name: String::new(),
            section_name: None,
            port: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpRoute {
    pub metadata: ObjectMeta,
    pub spec: HttpRouteSpec,
}

#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource,
)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    doc = "Gateway API HTTP routing, attached to a Gateway or a Service",
    plural = "httproutes",
    namespaced,
    root = "HttpRouteResource"
)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    pub parent_refs: Vec<ParentReference>,
    pub hostnames: Vec<String>,
    pub rules: Vec<HttpRouteRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRouteRule {
    pub name: Option<String>,
    /// Any entry matching is enough; empty means "path prefix /".
    pub matches: Vec<HttpRouteMatch>,
    pub filters: Vec<HttpRouteFilter>,
    pub backend_refs: Vec<HttpBackendRef>,
    pub timeouts: Option<HttpRouteTimeouts>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRouteMatch {
    pub path: Option<HttpPathMatch>,
    pub headers: Vec<HttpHeaderMatch>,
    pub query_params: Vec<HttpHeaderMatch>,
    pub method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct HttpPathMatch {
    #[serde(rename = "type")]
    pub type_: PathMatchType,
    pub value: String,
}

impl Default for HttpPathMatch {
    /// The Gateway API default: prefix `/`.
    fn default() -> Self {
        HttpPathMatch {
            type_: PathMatchType::PathPrefix,
            value: "/".to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PathMatchType {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

/// A header or query-parameter match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct HttpHeaderMatch {
    #[serde(rename = "type")]
    pub type_: HeaderMatchType,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HeaderMatchType {
    #[default]
    Exact,
    RegularExpression,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HttpRouteFilterType {
    RequestHeaderModifier,
    ResponseHeaderModifier,
    RequestRedirect,
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
    RequestMirror,
}

impl HttpRouteFilterType {
    /// The name as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpRouteFilterType::RequestHeaderModifier => "RequestHeaderModifier",
            HttpRouteFilterType::ResponseHeaderModifier => "ResponseHeaderModifier",
            HttpRouteFilterType::RequestRedirect => "RequestRedirect",
            HttpRouteFilterType::UrlRewrite => "URLRewrite",
            HttpRouteFilterType::RequestMirror => "RequestMirror",
        }
    }
}

/// A filter: `type` says which one of the other fields holds its configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub type_: Option<HttpRouteFilterType>,
    pub request_header_modifier: Option<HttpHeaderFilter>,
    pub response_header_modifier: Option<HttpHeaderFilter>,
    pub request_redirect: Option<HttpRequestRedirectFilter>,
    #[serde(rename = "urlRewrite")]
    pub url_rewrite: Option<HttpUrlRewriteFilter>,
    pub request_mirror: Option<HttpRequestMirrorFilter>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct HttpHeaderFilter {
    pub set: Vec<HttpHeader>,
    pub add: Vec<HttpHeader>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRequestRedirectFilter {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<HttpPathModifier>,
    pub port: Option<u32>,
    /// Default 302.
    pub status_code: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct HttpUrlRewriteFilter {
    pub hostname: Option<String>,
    pub path: Option<HttpPathModifier>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpPathModifier {
    #[serde(rename = "type")]
    pub type_: Option<PathModifierType>,
    pub replace_full_path: Option<String>,
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PathModifierType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRequestMirrorFilter {
    pub backend_ref: BackendObjectReference,
    /// 0..=100; unset mirrors everything.
    pub percent: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct BackendObjectReference {
    /// Default `""` (core).
    pub group: String,
    /// Default `Service`.
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<u32>,
}

impl Default for BackendObjectReference {
    fn default() -> Self {
        BackendObjectReference {
            group: String::new(),
            kind: "Service".to_string(),
            name: String::new(),
            namespace: None,
            port: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct HttpBackendRef {
    /// Default `""` (core).
    pub group: String,
    /// Default `Service`.
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<u32>,
    /// Relative; default 1; 0 sends nothing to this backend.
    pub weight: u32,
    pub filters: Vec<HttpRouteFilter>,
}

impl Default for HttpBackendRef {
    fn default() -> Self {
        HttpBackendRef {
            group: String::new(),
            kind: "Service".to_string(),
            name: String::new(),
            namespace: None,
            port: None,
            weight: 1,
            filters: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    pub request: Option<MeshDuration>,
    pub backend_request: Option<MeshDuration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GrpcRoute {
    pub metadata: ObjectMeta,
    pub spec: GrpcRouteSpec,
}

#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource,
)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GRPCRoute",
    doc = "Gateway API gRPC routing, attached to a Gateway or a Service",
    plural = "grpcroutes",
    namespaced,
    root = "GrpcRouteResource"
)]
#[serde(default, rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    pub parent_refs: Vec<ParentReference>,
    pub hostnames: Vec<String>,
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct GrpcRouteRule {
    pub name: Option<String>,
    pub matches: Vec<GrpcRouteMatch>,
    /// Only header modifiers and RequestMirror are allowed on gRPC routes.
    pub filters: Vec<HttpRouteFilter>,
    pub backend_refs: Vec<HttpBackendRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct GrpcRouteMatch {
    pub method: Option<GrpcMethodMatch>,
    pub headers: Vec<HttpHeaderMatch>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct GrpcMethodMatch {
    #[serde(rename = "type")]
    pub type_: HeaderMatchType,
    pub service: Option<String>,
    pub method: Option<String>,
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn validate_parents(f: &mut Findings, parents: &[ParentReference], hostnames: &[String]) {
    for (i, p) in parents.iter().enumerate() {
        let path = format!("spec.parentRefs[{i}]");
        f.required(format!("{path}.name"), &p.name);
        let ok = (p.kind == "Gateway" && p.group == GATEWAY_GROUP) || p.is_service();
        if !ok {
            f.error(
                format!("{path}.kind"),
                "must be a Gateway (gateway.networking.k8s.io) or a Service (group \"\" or \"core\")",
            );
        }
        if let Some(port) = p.port {
            f.port(format!("{path}.port"), port);
        }
    }
    for (i, h) in hostnames.iter().enumerate() {
        f.check(format!("spec.hostnames[{i}]"), check_host(h));
    }
}

fn validate_header_matches(f: &mut Findings, path: &str, matches: &[HttpHeaderMatch]) {
    for (i, h) in matches.iter().enumerate() {
        f.required(format!("{path}[{i}].name"), &h.name);
        if h.type_ == HeaderMatchType::RegularExpression {
            f.regex(format!("{path}[{i}].value"), &h.value);
        }
    }
}

fn validate_backend(
    f: &mut Findings,
    path: &str,
    group: &str,
    kind: &str,
    name: &str,
    port: Option<u32>,
) {
    f.required(format!("{path}.name"), name);
    if group.is_empty() && kind == "Service" {
        match port {
            None => f.error(format!("{path}.port"), "required for a Service backend"),
            Some(p) => f.port(format!("{path}.port"), p),
        }
    } else {
        f.error(
            format!("{path}.kind"),
            "only Service backends (core group) are supported",
        );
    }
}

fn validate_header_filter(f: &mut Findings, path: &str, h: &HttpHeaderFilter) {
    let names = h.set.iter().chain(&h.add).map(|x| &x.name).chain(&h.remove);
    if names.clone().any(String::is_empty) {
        f.error(path, "header names must not be empty");
    }
}

/// `prefix_only`: every match of the rule is a PathPrefix match, which ReplacePrefixMatch needs.
fn validate_filter(
    f: &mut Findings,
    path: &str,
    flt: &HttpRouteFilter,
    grpc: bool,
    prefix_only: bool,
) {
    use HttpRouteFilterType as T;
    let set = [
        (
            T::RequestHeaderModifier,
            "requestHeaderModifier",
            flt.request_header_modifier.is_some(),
        ),
        (
            T::ResponseHeaderModifier,
            "responseHeaderModifier",
            flt.response_header_modifier.is_some(),
        ),
        (
            T::RequestRedirect,
            "requestRedirect",
            flt.request_redirect.is_some(),
        ),
        (T::UrlRewrite, "urlRewrite", flt.url_rewrite.is_some()),
        (
            T::RequestMirror,
            "requestMirror",
            flt.request_mirror.is_some(),
        ),
    ];
    let Some(ty) = flt.type_ else {
        f.error(format!("{path}.type"), "required");
        return;
    };
    for (t, field, present) in set {
        if t == ty && !present {
            f.error(
                format!("{path}.{field}"),
                format!("required when type is {}", ty.as_str()),
            );
        } else if t != ty && present {
            f.error(
                format!("{path}.{field}"),
                format!("must not be set when type is {}", ty.as_str()),
            );
        }
    }
    if grpc && matches!(ty, T::RequestRedirect | T::UrlRewrite) {
        f.error(format!("{path}.type"), "not allowed on a GRPCRoute");
    }
    if let Some(h) = &flt.request_header_modifier {
        validate_header_filter(f, &format!("{path}.requestHeaderModifier"), h);
    }
    if let Some(h) = &flt.response_header_modifier {
        validate_header_filter(f, &format!("{path}.responseHeaderModifier"), h);
    }
    let modifiers = [
        (
            "requestRedirect",
            flt.request_redirect.as_ref().and_then(|r| r.path.as_ref()),
        ),
        (
            "urlRewrite",
            flt.url_rewrite.as_ref().and_then(|r| r.path.as_ref()),
        ),
    ];
    for (field, m) in modifiers {
        let Some(m) = m else { continue };
        let p = format!("{path}.{field}.path");
        match m.type_ {
            None => f.error(format!("{p}.type"), "required"),
            Some(PathModifierType::ReplaceFullPath) if m.replace_full_path.is_none() => {
                f.error(format!("{p}.replaceFullPath"), "required")
            }
            Some(PathModifierType::ReplacePrefixMatch) if m.replace_prefix_match.is_none() => {
                f.error(format!("{p}.replacePrefixMatch"), "required")
            }
            Some(PathModifierType::ReplacePrefixMatch) if !prefix_only => f.error(
                format!("{p}.type"),
                "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
            ),
            Some(_) => {}
        }
    }
    if let Some(r) = &flt.request_redirect {
        if let Some(code) = r.status_code {
            if ![301, 302, 303, 307, 308].contains(&code) {
                f.error(
                    format!("{path}.requestRedirect.statusCode"),
                    "must be 301, 302, 303, 307 or 308",
                );
            }
        }
        if let Some(port) = r.port {
            f.port(format!("{path}.requestRedirect.port"), port);
        }
        if r.scheme
            .as_deref()
            .is_some_and(|s| s != "http" && s != "https")
        {
            f.error(
                format!("{path}.requestRedirect.scheme"),
                "must be http or https",
            );
        }
    }
    if let Some(m) = &flt.request_mirror {
        let b = &m.backend_ref;
        validate_backend(
            f,
            &format!("{path}.requestMirror.backendRef"),
            &b.group,
            &b.kind,
            &b.name,
            b.port,
        );
        if m.percent.is_some_and(|p| p > 100) {
            f.error(
                format!("{path}.requestMirror.percent"),
                "must be between 0 and 100",
            );
        }
    }
}

fn validate_backend_refs(f: &mut Findings, path: &str, refs: &[HttpBackendRef], grpc: bool) {
    for (i, b) in refs.iter().enumerate() {
        let p = format!("{path}.backendRefs[{i}]");
        validate_backend(f, &p, &b.group, &b.kind, &b.name, b.port);
        if b.weight > 1_000_000 {
            f.error(format!("{p}.weight"), "must be between 0 and 1000000");
        }
        for (j, flt) in b.filters.iter().enumerate() {
            validate_filter(f, &format!("{p}.filters[{j}]"), flt, grpc, false);
        }
    }
}

impl HttpRoute {
    pub(crate) fn validate(&self, f: &mut Findings) {
        let s = &self.spec;
        validate_parents(f, &s.parent_refs, &s.hostnames);
        for (i, rule) in s.rules.iter().enumerate() {
            let path = format!("spec.rules[{i}]");
            for (j, m) in rule.matches.iter().enumerate() {
                let mp = format!("{path}.matches[{j}]");
                if let Some(pm) = &m.path {
                    match pm.type_ {
                        PathMatchType::Exact | PathMatchType::PathPrefix
                            if !pm.value.starts_with('/') =>
                        {
                            f.error(format!("{mp}.path.value"), "must start with '/'")
                        }
                        PathMatchType::RegularExpression => {
                            f.check(format!("{mp}.path.value"), check_regex(&pm.value))
                        }
                        _ => {}
                    }
                }
                validate_header_matches(f, &format!("{mp}.headers"), &m.headers);
                validate_header_matches(f, &format!("{mp}.queryParams"), &m.query_params);
                if let Some(method) = &m.method {
                    if !METHODS.contains(&method.as_str()) {
                        f.error(format!("{mp}.method"), format!("unknown method {method:?}"));
                    }
                }
            }
            let prefix_only = rule.matches.iter().all(|m| {
                m.path
                    .as_ref()
                    .is_none_or(|p| p.type_ == PathMatchType::PathPrefix)
            });
            let mut kinds = Vec::new();
            for (j, flt) in rule.filters.iter().enumerate() {
                validate_filter(f, &format!("{path}.filters[{j}]"), flt, false, prefix_only);
                kinds.extend(flt.type_);
            }
            if kinds.contains(&HttpRouteFilterType::RequestRedirect)
                && kinds.contains(&HttpRouteFilterType::UrlRewrite)
            {
                f.error(
                    format!("{path}.filters"),
                    "RequestRedirect and URLRewrite cannot be combined",
                );
            }
            validate_backend_refs(f, &path, &rule.backend_refs, false);
            if let Some(t) = &rule.timeouts {
                if let (Some(req), Some(backend)) = (t.request, t.backend_request) {
                    if req.0 > std::time::Duration::ZERO && backend > req {
                        f.error(
                            format!("{path}.timeouts.backendRequest"),
                            "must not be longer than timeouts.request",
                        );
                    }
                }
            }
        }
    }
}

impl GrpcRoute {
    pub(crate) fn validate(&self, f: &mut Findings) {
        let s = &self.spec;
        validate_parents(f, &s.parent_refs, &s.hostnames);
        for (i, rule) in s.rules.iter().enumerate() {
            let path = format!("spec.rules[{i}]");
            for (j, m) in rule.matches.iter().enumerate() {
                let mp = format!("{path}.matches[{j}]");
                if let Some(mm) = &m.method {
                    if mm.service.is_none() && mm.method.is_none() {
                        f.error(
                            format!("{mp}.method"),
                            "one of service or method is required",
                        );
                    }
                    if mm.type_ == HeaderMatchType::RegularExpression {
                        for (field, v) in [("service", &mm.service), ("method", &mm.method)] {
                            if let Some(v) = v {
                                f.check(format!("{mp}.method.{field}"), check_regex(v));
                            }
                        }
                    }
                }
                validate_header_matches(f, &format!("{mp}.headers"), &m.headers);
            }
            for (j, flt) in rule.filters.iter().enumerate() {
                validate_filter(f, &format!("{path}.filters[{j}]"), flt, true, false);
            }
            validate_backend_refs(f, &path, &rule.backend_refs, true);
        }
    }
}
