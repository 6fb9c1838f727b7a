//! `networking.istio.io`: WorkloadEntry and VirtualService (DestinationRule is in `destination_rule.rs`), field for
//! field as Istio names them (camelCase in YAML), with Istio's own validation rules.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::meta::{MeshDuration, ObjectMeta, ANNOTATION_NODE, LABEL_USE_WAYPOINT};
use super::validate::{check_dns_label, check_host, check_subdomain, decode_base64, Findings};

/// A workload outside Kubernetes (a VM, or a process in a test netns) that a Service can select.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkloadEntry {
    pub metadata: ObjectMeta,
    pub spec: WorkloadEntrySpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, CustomResource)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "WorkloadEntry",
    doc = "A workload outside Kubernetes that Services can select",
    plural = "workloadentries",
    namespaced,
    root = "WorkloadEntryResource"
)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkloadEntrySpec {
    /// An IP address (or a DNS name, which this mesh does not resolve).
    pub address: String,
    /// Port name → port number, overriding the Service's targetPort for this workload.
    pub ports: BTreeMap<String, u32>,
    /// The labels Services select on (not `metadata.labels`).
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub network: String,
    pub locality: String,
    pub weight: Option<u32>,
}

impl WorkloadEntry {
    /// The node whose ztunnel serves this workload: the `mesh.io/node` annotation (an extension, since
    /// Istio's WorkloadEntry has no node field).
    pub fn node(&self) -> Option<&str> {
        self.metadata
            .annotation(ANNOTATION_NODE)
            .filter(|n| !n.is_empty())
    }

    /// `spec.address` when it is an IP address (DNS names are not resolved by this mesh).
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        self.spec.address.parse().ok()
    }

    /// The labels Services select this entry by (`spec.labels`).
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.spec.labels
    }

    /// `spec.serviceAccount`, or `default` when unset, as Istio assumes.
    pub fn service_account(&self) -> &str {
        if self.spec.service_account.is_empty() {
            "default"
        } else {
            &self.spec.service_account
        }
    }

    /// The waypoint named by the entry's `istio.io/use-waypoint` label (metadata or spec labels).
    pub fn use_waypoint(&self) -> Option<&str> {
        let label = self.metadata.label(LABEL_USE_WAYPOINT);
        label
            .or_else(|| self.spec.labels.get(LABEL_USE_WAYPOINT).map(String::as_str))
            .filter(|w| *w != "none")
    }

    pub(crate) fn validate(&self, f: &mut Findings) {
        let s = &self.spec;
        if s.address.is_empty() {
            if s.network.is_empty() {
                f.error("spec.address", "required unless spec.network is set");
            }
        } else if s.address.parse::<std::net::IpAddr>().is_err() {
            f.check("spec.address", check_host(&s.address));
        }
        for (name, port) in &s.ports {
            f.port(format!("spec.ports.{name}"), *port);
        }
        f.labels("spec.labels", &s.labels);
        if !s.service_account.is_empty() {
            f.check("spec.serviceAccount", check_subdomain(&s.service_account));
        }
    }
}

/// Istio `StringMatch`: at most one of the three may be set. An empty match means "present" in header
/// matches, as in Istio.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

/// The one way a [`StringMatch`] compares, once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatchKind<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Regex(&'a str),
}

impl StringMatch {
    /// `None` for an empty match (presence only).
    pub fn kind(&self) -> Option<StringMatchKind<'_>> {
        if let Some(v) = &self.exact {
            Some(StringMatchKind::Exact(v))
        } else if let Some(v) = &self.prefix {
            Some(StringMatchKind::Prefix(v))
        } else {
            self.regex.as_deref().map(StringMatchKind::Regex)
        }
    }

    fn validate(&self, f: &mut Findings, path: &str) {
        let set = [&self.exact, &self.prefix, &self.regex]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set > 1 {
            f.error(path, "only one of exact, prefix or regex may be set");
        }
        if let Some(r) = &self.regex {
            f.regex(format!("{path}.regex"), r);
        }
    }
}

/// Istio `Percent`: a double between 0 and 100.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Percent {
    pub value: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VirtualService {
    pub metadata: ObjectMeta,
    pub spec: VirtualServiceSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, CustomResource)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "VirtualService",
    doc = "Istio routing rules for a host: HTTP and TCP routes, retries, faults, mirrors",
    plural = "virtualservices",
    namespaced,
    root = "VirtualServiceResource"
)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    pub hosts: Vec<String>,
    /// Empty means `mesh` (sidecars/waypoints), as in Istio.
    pub gateways: Vec<String>,
    pub http: Vec<VsHttpRoute>,
    pub tcp: Vec<VsTcpRoute>,
    pub export_to: Vec<String>,
}

/// One `spec.http[]` rule, tried in order; the first whose `match` fits wins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct VsHttpRoute {
    pub name: Option<String>,
    /// Any one entry matching is enough; empty matches everything.
    #[serde(rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    pub route: Vec<HttpRouteDestination>,
    pub redirect: Option<HttpRedirect>,
    pub direct_response: Option<HttpDirectResponse>,
    pub rewrite: Option<HttpRewrite>,
    pub timeout: Option<MeshDuration>,
    pub retries: Option<HttpRetry>,
    pub fault: Option<HttpFaultInjection>,
    pub mirror: Option<Destination>,
    /// Share of requests `mirror` copies; unset means 100%.
    pub mirror_percentage: Option<Percent>,
    /// Further mirrors, each with its own percentage (unset: 100%).
    pub mirrors: Vec<HttpMirrorPolicy>,
    pub headers: Option<Headers>,
}

/// One `mirrors[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct HttpMirrorPolicy {
    pub destination: Destination,
    pub percentage: Option<Percent>,
}

/// All the conditions inside one match entry must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpMatchRequest {
    pub name: Option<String>,
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub headers: BTreeMap<String, StringMatch>,
    pub query_params: BTreeMap<String, StringMatch>,
    pub without_headers: BTreeMap<String, StringMatch>,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
    pub port: Option<u32>,
    pub ignore_uri_case: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRouteDestination {
    pub destination: Destination,
    /// 0..=100. Unset: all traffic when it is the only destination, else 0. Istio normalizes sums ≠ 100.
    pub weight: Option<u32>,
    pub headers: Option<Headers>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct Destination {
    /// Short name (resolved in the VirtualService's namespace) or FQDN; see [`super::resolve_host`].
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<PortSelector>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct PortSelector {
    pub number: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRetry {
    pub attempts: u32,
    pub per_try_timeout: Option<MeshDuration>,
    /// Comma-separated Envoy retry conditions or status codes, e.g. `5xx,connect-failure,503`.
    pub retry_on: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct HttpFaultInjection {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct FaultDelay {
    /// Unset means 0%: Istio's implementation injects nothing then, and its docs were changed to say so
    /// (istio/api#2522), whatever older docs claimed.
    pub percentage: Option<Percent>,
    pub fixed_delay: Option<MeshDuration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct FaultAbort {
    /// Unset means 0%, as for [`FaultDelay::percentage`].
    pub percentage: Option<Percent>,
    pub http_status: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Headers {
    pub request: Option<HeaderOperations>,
    pub response: Option<HeaderOperations>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct HeaderOperations {
    pub set: BTreeMap<String, String>,
    pub add: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct HttpRewrite {
    /// Replaces the part of the path matched by the `uri` prefix (or the whole path for exact matches).
    pub uri: Option<String>,
    pub authority: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRedirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    /// `http` or `https`; unset keeps the request's.
    pub scheme: Option<String>,
    /// Unset keeps the request's port.
    pub port: Option<u32>,
    /// Default 301.
    pub redirect_code: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct HttpDirectResponse {
    pub status: u32,
    pub body: Option<HttpBody>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct HttpBody {
    pub string: Option<String>,
    /// Base64, as Istio writes bytes.
    pub bytes: Option<String>,
}

impl HttpBody {
    /// The body to send: `string` as UTF-8, or `bytes` decoded (validation has rejected bad base64).
    pub fn content(&self) -> Vec<u8> {
        match (&self.string, &self.bytes) {
            (Some(s), _) => s.clone().into_bytes(),
            (None, Some(b)) => decode_base64(b).unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }
}

/// A `spec.tcp[]` rule: only the route is modeled (L4 matches are reported as unsupported fields).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct VsTcpRoute {
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct RouteDestination {
    pub destination: Destination,
    pub weight: Option<u32>,
}

/// Envoy retry conditions Istio accepts in `retryOn` (besides numeric status codes).
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

fn validate_destination(f: &mut Findings, path: &str, d: &Destination) {
    f.required(format!("{path}.host"), &d.host);
    if !d.host.is_empty() {
        f.check(format!("{path}.host"), check_host(&d.host));
    }
    if let Some(subset) = &d.subset {
        f.check(format!("{path}.subset"), check_dns_label(subset));
    }
    if let Some(p) = d.port {
        f.port(format!("{path}.port.number"), p.number);
    }
}

/// Weights are checked one by one here; whether they add up to 100 is a warning from `analyze`.
fn validate_weights<'a>(
    f: &mut Findings,
    path: &str,
    weights: impl ExactSizeIterator<Item = Option<u32>> + 'a,
) {
    let count = weights.len();
    let mut total = 0u64;
    for (i, w) in weights.enumerate() {
        if let Some(w) = w {
            if w > 100 {
                f.error(format!("{path}[{i}].weight"), "must be between 0 and 100");
            }
            total += u64::from(w);
        }
    }
    if count > 1 && total == 0 {
        f.error(
            path,
            "weights of several destinations add up to 0: no destination would get traffic",
        );
    }
}

fn validate_headers(f: &mut Findings, path: &str, h: &Headers) {
    for (side, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        let names = ops.set.keys().chain(ops.add.keys()).chain(&ops.remove);
        if names.clone().any(String::is_empty) {
            f.error(format!("{path}.{side}"), "header names must not be empty");
        }
    }
}

impl VirtualService {
    /// Whether the rules apply inside the mesh (to sidecars and waypoints): `gateways` empty or naming `mesh`.
    /// A VirtualService bound only to ingress gateways does not route mesh traffic.
    pub fn applies_to_mesh(&self) -> bool {
        self.spec.gateways.is_empty() || self.spec.gateways.iter().any(|g| g == "mesh")
    }

    pub(crate) fn validate(&self, f: &mut Findings) {
        let s = &self.spec;
        if s.hosts.is_empty() {
            f.error("spec.hosts", "at least one host is required");
        }
        for (i, h) in s.hosts.iter().enumerate() {
            f.check(format!("spec.hosts[{i}]"), check_host(h));
        }
        for (i, g) in s.gateways.iter().enumerate() {
            let name = g.rsplit('/').next().unwrap_or(g);
            if g != "mesh" && (g.matches('/').count() > 1 || check_subdomain(name).is_err()) {
                f.error(
                    format!("spec.gateways[{i}]"),
                    "must be \"mesh\", a gateway name or namespace/name",
                );
            }
        }
        if s.http.is_empty() && s.tcp.is_empty() {
            f.error("spec", "at least one http or tcp route is required");
        }
        for (i, r) in s.http.iter().enumerate() {
            validate_http_route(f, &format!("spec.http[{i}]"), r);
        }
        for (i, r) in s.tcp.iter().enumerate() {
            let path = format!("spec.tcp[{i}].route");
            if r.route.is_empty() {
                f.error(&path, "at least one destination is required");
            }
            for (j, d) in r.route.iter().enumerate() {
                validate_destination(f, &format!("{path}[{j}].destination"), &d.destination);
            }
            validate_weights(f, &path, r.route.iter().map(|d| d.weight));
        }
    }
}

fn validate_http_route(f: &mut Findings, path: &str, r: &VsHttpRoute) {
    let actions = [
        !r.route.is_empty(),
        r.redirect.is_some(),
        r.direct_response.is_some(),
    ];
    match actions.iter().filter(|a| **a).count() {
        0 => f.error(path, "one of route, redirect or directResponse is required"),
        1 => {}
        _ => f.error(
            path,
            "only one of route, redirect or directResponse may be set",
        ),
    }
    if r.rewrite.is_some() && r.redirect.is_some() {
        f.error(
            format!("{path}.rewrite"),
            "rewrite cannot be combined with redirect",
        );
    }
    for (i, m) in r.matches.iter().enumerate() {
        let mp = format!("{path}.match[{i}]");
        for (field, sm) in [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                sm.validate(f, &format!("{mp}.{field}"));
            }
        }
        for (field, map) in [
            ("headers", &m.headers),
            ("queryParams", &m.query_params),
            ("withoutHeaders", &m.without_headers),
        ] {
            for (key, sm) in map {
                if key.is_empty() {
                    f.error(format!("{mp}.{field}"), "names must not be empty");
                }
                sm.validate(f, &format!("{mp}.{field}.{key}"));
            }
        }
        f.labels(&format!("{mp}.sourceLabels"), &m.source_labels);
        if let Some(p) = m.port {
            f.port(format!("{mp}.port"), p);
        }
    }
    for (i, d) in r.route.iter().enumerate() {
        validate_destination(f, &format!("{path}.route[{i}].destination"), &d.destination);
        if let Some(h) = &d.headers {
            validate_headers(f, &format!("{path}.route[{i}].headers"), h);
        }
    }
    validate_weights(
        f,
        &format!("{path}.route"),
        r.route.iter().map(|d| d.weight),
    );
    if let Some(retry) = &r.retries {
        for (i, cond) in retry
            .retry_on
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .enumerate()
        {
            let is_code = cond.parse::<u32>().is_ok_and(|c| (100..=599).contains(&c));
            if !is_code && !RETRY_ON.contains(&cond) {
                f.error(
                    format!("{path}.retries.retryOn"),
                    format!("unknown retry condition {cond:?} (entry {i})"),
                );
            }
        }
    }
    if let Some(fault) = &r.fault {
        if fault.delay.is_none() && fault.abort.is_none() {
            f.error(format!("{path}.fault"), "one of delay or abort is required");
        }
        if let Some(d) = &fault.delay {
            if d.fixed_delay.is_none() {
                f.error(format!("{path}.fault.delay.fixedDelay"), "required");
            }
            if let Some(p) = d.percentage {
                f.percent(format!("{path}.fault.delay.percentage.value"), p.value);
            }
        }
        if let Some(a) = &fault.abort {
            match a.http_status {
                None => f.error(format!("{path}.fault.abort.httpStatus"), "required"),
                Some(s) if !(200..=599).contains(&s) => f.error(
                    format!("{path}.fault.abort.httpStatus"),
                    "must be between 200 and 599",
                ),
                Some(_) => {}
            }
            if let Some(p) = a.percentage {
                f.percent(format!("{path}.fault.abort.percentage.value"), p.value);
            }
        }
    }
    if let Some(m) = &r.mirror {
        validate_destination(f, &format!("{path}.mirror"), m);
    }
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        f.error(format!("{path}.mirrors"), "cannot be combined with mirror");
    }
    for (i, m) in r.mirrors.iter().enumerate() {
        validate_destination(
            f,
            &format!("{path}.mirrors[{i}].destination"),
            &m.destination,
        );
        if let Some(p) = m.percentage {
            f.percent(format!("{path}.mirrors[{i}].percentage.value"), p.value);
        }
    }
    if let Some(p) = r.mirror_percentage {
        f.percent(format!("{path}.mirrorPercentage.value"), p.value);
    }
    if let Some(h) = &r.headers {
        validate_headers(f, &format!("{path}.headers"), h);
    }
    if let Some(rd) = &r.redirect {
        validate_redirect(f, &format!("{path}.redirect"), rd);
    }
    if let Some(dr) = &r.direct_response {
        validate_direct_response(f, &format!("{path}.directResponse"), dr);
    }
}

fn validate_redirect(f: &mut Findings, path: &str, rd: &HttpRedirect) {
    if rd.uri.is_none() && rd.authority.is_none() && rd.scheme.is_none() && rd.port.is_none() {
        f.error(path, "one of uri, authority, scheme or port is required");
    }
    if let Some(code) = rd.redirect_code {
        if ![301, 302, 303, 307, 308].contains(&code) {
            f.error(
                format!("{path}.redirectCode"),
                "must be 301, 302, 303, 307 or 308",
            );
        }
    }
    if let Some(port) = rd.port {
        f.port(format!("{path}.port"), port);
    }
    if rd.scheme.as_deref().is_some_and(str::is_empty) {
        f.error(format!("{path}.scheme"), "must not be empty");
    }
}

fn validate_direct_response(f: &mut Findings, path: &str, dr: &HttpDirectResponse) {
    if !(200..=599).contains(&dr.status) {
        f.error(format!("{path}.status"), "must be between 200 and 599");
    }
    let Some(b) = &dr.body else { return };
    if b.string.is_some() && b.bytes.is_some() {
        f.error(
            format!("{path}.body"),
            "only one of string or bytes may be set",
        );
    }
    if let Some(bytes) = &b.bytes {
        f.check(format!("{path}.body.bytes"), decode_base64(bytes).map(drop));
    }
}
