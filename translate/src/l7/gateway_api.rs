//! Gateway API HTTPRoutes and GRPCRoutes attached to a Service (GAMMA) → routes in Gateway API precedence.
//!
//! Each (rule, match) pair becomes its own route, so precedence applies per match as the spec requires, and the
//! waypoint only has to take the first route that matches. Ranking (Istio's `sortHTTPRoutes` order):
//! 1. consumer routes (a route in another namespace than the Service's: GAMMA applies it to that namespace's
//!    clients only, and they take precedence there) before producer routes;
//! 2. Exact path, then PathPrefix, then RegularExpression; longer paths first within each;
//! 3. a method match; 4. more header matches; 5. more query parameter matches;
//! 6. ties: the older route (`namespace/name` order stands in for creation time), then rule order, then match
//!    order.
//!
//! PathPrefix `/foo` must match `/foo` and `/foo/bar` but not `/foobar`, and a trailing `/` is ignored. The
//! waypoint's prefix match is a plain string prefix, so it is encoded as two matches of one route: exact `/foo`
//! OR prefix `/foo/` (`/` stays a single prefix match). A URLRewrite `ReplacePrefixMatch` rewrites a different
//! matched part in each, so that case becomes two adjacent routes instead: exact `/foo` with the whole path
//! replaced, and prefix `/foo/` with `/foo/` replaced by the replacement plus `/`.
//!
//! GRPCRoute methods become paths: service and method → exact `/svc/method`, service only → prefix `/svc/`,
//! method only → regex `/[^/]+/method`, RegularExpression type → regex `/(?:svc)/(?:method)`. Regexes are
//! matched against the whole value, as Envoy and Istio do.

use std::cmp::Reverse;

use mesh_proto::mesh::l7::v1 as pb;

use super::{default_retry, exact, header_ops, object_name, opt_millis, prefix, regex};
use mesh_model::attach::{Attached, RouteAttachment};
use mesh_model::service_key;
use mesh_model::{
    GrpcMethodMatch, GrpcRoute, GrpcRouteMatch, HeaderMatchType, HttpBackendRef, HttpHeaderFilter,
    HttpHeaderMatch, HttpPathModifier, HttpRequestRedirectFilter, HttpRoute, HttpRouteFilter,
    HttpRouteMatch, HttpRouteRule, HttpRouteTimeouts, HttpUrlRewriteFilter, MeshDuration,
    ObjectMeta, PathMatchType, PathModifierType,
};

/// The Gateway API's RequestRedirect default status.
const DEFAULT_REDIRECT_STATUS: u32 = 302;
/// What a rule without a usable backend answers (the spec's "MUST receive a 500").
const NO_BACKEND_STATUS: u32 = 500;

/// The routes of every HTTPRoute and GRPCRoute attached to the Service in namespace `ns`, ranked.
pub(super) fn routes(ns: &str, a: &Attached<'_>, sources: &mut Vec<String>) -> Vec<pb::HttpRoute> {
    let mut ranked = Vec::new();
    for att in &a.http_routes {
        add_source(sources, object_name("HTTPRoute", &att.route.metadata));
        ranked.extend(http_route(ns, att));
    }
    for att in &a.grpc_routes {
        add_source(sources, object_name("GRPCRoute", &att.route.metadata));
        ranked.extend(grpc_route(ns, att));
    }
    ranked.sort_by(|x, y| x.rank.cmp(&y.rank));
    ranked.into_iter().flat_map(|r| r.routes).collect()
}

/// A route attached through two parentRefs (two ports) is one source.
fn add_source(sources: &mut Vec<String>, source: String) {
    if !sources.contains(&source) {
        sources.push(source);
    }
}

/// The routes of one (rule, match) pair and where they rank.
struct Ranked {
    rank: Rank,
    routes: Vec<pb::HttpRoute>,
}

/// Ascending order is precedence order; see the module comment.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    producer: bool,
    path_kind: u8,
    path_len: Reverse<usize>,
    no_method: bool,
    headers: Reverse<usize>,
    query_params: Reverse<usize>,
    origin: (String, String, &'static str),
    rule: usize,
    index: usize,
}

/// A match's path condition. `Prefix` holds the prefix without a trailing `/` (`/` itself for the root);
/// `RawPrefix` is a plain string prefix (gRPC service paths).
#[derive(Debug, Clone)]
enum PathMatch {
    Exact(String),
    Prefix(String),
    RawPrefix(String),
    Regex(String),
}

impl PathMatch {
    fn rank(&self) -> (u8, usize) {
        match self {
            PathMatch::Exact(p) => (0, p.len()),
            PathMatch::Prefix(p) | PathMatch::RawPrefix(p) => (1, p.len()),
            PathMatch::Regex(p) => (2, p.len()),
        }
    }
}

/// One Gateway API match in the waypoint's terms.
struct MatchSpec {
    path: PathMatch,
    method: Option<String>,
    headers: Vec<pb::HeaderMatch>,
    query_params: Vec<pb::HeaderMatch>,
}

/// What a rule does, whatever matched: a route without matches, plus a pending `ReplacePrefixMatch` rewrite,
/// which depends on the match (see the module comment).
struct Action {
    route: pb::HttpRoute,
    prefix_rewrite: Option<String>,
}

/// Where a (rule, match) pair comes from.
struct Origin<'a> {
    kind: &'static str,
    meta: &'a ObjectMeta,
    /// The Service's namespace: a route elsewhere is a consumer route.
    service_ns: &'a str,
    port: Option<u32>,
    rule: usize,
}

fn http_route(ns: &str, att: &RouteAttachment<'_, HttpRoute>) -> Vec<Ranked> {
    let r = att.route;
    let mut out = Vec::new();
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let name = rule_name("HTTPRoute", &r.metadata, rule.name.as_deref(), i);
        let action = http_action(&r.metadata.namespace, name, rule);
        let origin = Origin {
            kind: "HTTPRoute",
            meta: &r.metadata,
            service_ns: ns,
            port: att.port,
            rule: i,
        };
        // No matches: the Gateway API default, path prefix `/`.
        let default = [HttpRouteMatch::default()];
        let matches = if rule.matches.is_empty() {
            &default[..]
        } else {
            &rule.matches
        };
        for (j, m) in matches.iter().enumerate() {
            out.push(ranked(&origin, j, http_match(m), &action));
        }
    }
    out
}

fn grpc_route(ns: &str, att: &RouteAttachment<'_, GrpcRoute>) -> Vec<Ranked> {
    let r = att.route;
    let mut out = Vec::new();
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let name = rule_name("GRPCRoute", &r.metadata, rule.name.as_deref(), i);
        let route_ns = &r.metadata.namespace;
        let mut action = filtered_action(route_ns, name, &rule.filters, &rule.backend_refs);
        action.route.retry = Some(default_retry());
        let origin = Origin {
            kind: "GRPCRoute",
            meta: &r.metadata,
            service_ns: ns,
            port: att.port,
            rule: i,
        };
        // No matches: every method of every service.
        let default = [GrpcRouteMatch::default()];
        let matches = if rule.matches.is_empty() {
            &default[..]
        } else {
            &rule.matches
        };
        for (j, m) in matches.iter().enumerate() {
            out.push(ranked(&origin, j, grpc_match(m), &action));
        }
    }
    out
}

/// `HTTPRoute ns/name#rule`, with the rule's name or its index.
fn rule_name(kind: &str, meta: &ObjectMeta, name: Option<&str>, index: usize) -> String {
    let rule = name.map_or_else(|| index.to_string(), str::to_string);
    format!("{}#{rule}", object_name(kind, meta))
}

fn ranked(origin: &Origin<'_>, index: usize, m: MatchSpec, action: &Action) -> Ranked {
    let consumer = origin.meta.namespace != origin.service_ns;
    let (path_kind, path_len) = m.path.rank();
    let rank = Rank {
        producer: !consumer,
        path_kind,
        path_len: Reverse(path_len),
        no_method: m.method.is_none(),
        headers: Reverse(m.headers.len()),
        query_params: Reverse(m.query_params.len()),
        origin: (
            origin.meta.namespace.clone(),
            origin.meta.name.clone(),
            origin.kind,
        ),
        rule: origin.rule,
        index,
    };
    let base = pb::RouteMatch {
        method: m.method.as_deref().map(exact),
        headers: m.headers,
        query_params: m.query_params,
        source_namespace: if consumer {
            origin.meta.namespace.clone()
        } else {
            String::new()
        },
        port: origin.port.unwrap_or(0),
        ..Default::default()
    };
    Ranked {
        rank,
        routes: expand(&m.path, base, action),
    }
}

/// The routes one match becomes, with its path encoded (see the module comment).
fn expand(path: &PathMatch, base: pb::RouteMatch, action: &Action) -> Vec<pb::HttpRoute> {
    let with_uri = |uri: pb::StringMatch| pb::RouteMatch {
        uri: Some(uri),
        ..base.clone()
    };
    let route = |matches: Vec<pb::RouteMatch>, rewrite_to: Option<String>| {
        let mut r = action.route.clone();
        r.matches = matches;
        if let Some(uri) = rewrite_to {
            let rw = r.rewrite.get_or_insert_with(Default::default);
            rw.uri = uri;
            rw.replace_full_path = false;
        }
        r
    };
    // `ReplacePrefixMatch` R: a whole matched path becomes R, a matched `<prefix>/` becomes `R/`.
    let whole = action.prefix_rewrite.clone();
    let dir = whole
        .as_deref()
        .map(|r| format!("{}/", r.trim_end_matches('/')));
    match path {
        PathMatch::Exact(p) => vec![route(vec![with_uri(exact(p))], whole)],
        PathMatch::Regex(p) => vec![route(vec![with_uri(regex(p))], whole)],
        PathMatch::RawPrefix(p) => vec![route(vec![with_uri(prefix(p))], whole)],
        PathMatch::Prefix(p) if p == "/" => vec![route(vec![with_uri(prefix("/"))], dir)],
        PathMatch::Prefix(p) => {
            let (exact_m, dir_m) = (with_uri(exact(p)), with_uri(prefix(&format!("{p}/"))));
            if whole.is_some() {
                vec![route(vec![exact_m], whole), route(vec![dir_m], dir)]
            } else {
                vec![route(vec![exact_m, dir_m], None)]
            }
        }
    }
}

fn http_match(m: &HttpRouteMatch) -> MatchSpec {
    let path = m.path.clone().unwrap_or_default();
    MatchSpec {
        path: match path.type_ {
            PathMatchType::Exact => PathMatch::Exact(path.value),
            PathMatchType::RegularExpression => PathMatch::Regex(path.value),
            PathMatchType::PathPrefix => match path.value.trim_end_matches('/') {
                "" => PathMatch::Prefix("/".to_string()),
                p => PathMatch::Prefix(p.to_string()),
            },
        },
        method: m.method.clone(),
        headers: m.headers.iter().map(|h| value_match(h, true)).collect(),
        // Query parameter names are case-sensitive.
        query_params: m
            .query_params
            .iter()
            .map(|h| value_match(h, false))
            .collect(),
    }
}

fn grpc_match(m: &GrpcRouteMatch) -> MatchSpec {
    MatchSpec {
        path: grpc_path(m.method.as_ref()),
        method: None,
        headers: m.headers.iter().map(|h| value_match(h, true)).collect(),
        query_params: Vec::new(),
    }
}

fn grpc_path(m: Option<&GrpcMethodMatch>) -> PathMatch {
    const ANY: &str = "[^/]+";
    let Some(m) = m else {
        return PathMatch::RawPrefix("/".to_string());
    };
    let (service, method) = (m.service.as_deref(), m.method.as_deref());
    match (m.type_, service, method) {
        (HeaderMatchType::RegularExpression, s, meth) => PathMatch::Regex(format!(
            "/(?:{})/(?:{})",
            s.unwrap_or(ANY),
            meth.unwrap_or(ANY)
        )),
        (HeaderMatchType::Exact, Some(s), Some(meth)) => PathMatch::Exact(format!("/{s}/{meth}")),
        (HeaderMatchType::Exact, Some(s), None) => PathMatch::RawPrefix(format!("/{s}/")),
        (HeaderMatchType::Exact, None, Some(meth)) => {
            PathMatch::Regex(format!("/{ANY}/{}", ::regex::escape(meth)))
        }
        // Rejected by validation; matching every method is the harmless reading.
        (HeaderMatchType::Exact, None, None) => PathMatch::RawPrefix("/".to_string()),
    }
}

/// A header (names lower-cased) or query parameter match.
fn value_match(h: &HttpHeaderMatch, lower_case: bool) -> pb::HeaderMatch {
    pb::HeaderMatch {
        name: if lower_case {
            h.name.to_ascii_lowercase()
        } else {
            h.name.clone()
        },
        value: Some(match h.type_ {
            HeaderMatchType::Exact => exact(&h.value),
            HeaderMatchType::RegularExpression => regex(&h.value),
        }),
        invert: false,
    }
}

fn http_action(route_ns: &str, name: String, rule: &HttpRouteRule) -> Action {
    let mut action = filtered_action(route_ns, name, &rule.filters, &rule.backend_refs);
    apply_timeouts(&mut action.route, rule.timeouts.as_ref());
    action
}

/// The rule's filters and backends. Without a redirect, a rule whose backends cannot take traffic (none, or all
/// of weight 0) answers 500.
fn filtered_action(
    route_ns: &str,
    name: String,
    filters: &[HttpRouteFilter],
    backends: &[HttpBackendRef],
) -> Action {
    let mut action = Action {
        route: pb::HttpRoute {
            name,
            destinations: backends.iter().map(|b| backend(route_ns, b)).collect(),
            ..Default::default()
        },
        prefix_rewrite: None,
    };
    for f in filters {
        apply_filter(&mut action, route_ns, f);
    }
    let r = &mut action.route;
    if r.redirect.is_some() {
        r.destinations.clear();
    } else if r.destinations.iter().all(|d| d.weight == 0) {
        r.destinations.clear();
        r.direct_response = Some(pb::DirectResponse {
            status: NO_BACKEND_STATUS,
            body: Vec::new(),
        });
    }
    action
}

fn apply_filter(action: &mut Action, route_ns: &str, f: &HttpRouteFilter) {
    let r = &mut action.route;
    if let Some(h) = &f.request_header_modifier {
        r.request_headers = Some(header_filter(h));
    }
    if let Some(h) = &f.response_header_modifier {
        r.response_headers = Some(header_filter(h));
    }
    if let Some(rd) = &f.request_redirect {
        r.redirect = Some(redirect(rd));
    }
    if let Some(rw) = &f.url_rewrite {
        action.prefix_rewrite = url_rewrite(r, rw);
    }
    if let Some(m) = &f.request_mirror {
        let b = &m.backend_ref;
        r.mirrors.push(pb::Mirror {
            destination: Some(destination(
                route_ns,
                &b.name,
                b.namespace.as_deref(),
                b.port,
            )),
            percent: m.percent.map_or(100.0, f64::from),
        });
    }
}

fn header_filter(h: &HttpHeaderFilter) -> pb::HeaderOps {
    header_ops(
        h.set.iter().map(|x| (x.name.as_str(), x.value.as_str())),
        h.add.iter().map(|x| (x.name.as_str(), x.value.as_str())),
        h.remove.iter().map(String::as_str),
    )
}

/// Sets the hostname and full-path rewrites; returns a `ReplacePrefixMatch` replacement, applied per match.
fn url_rewrite(r: &mut pb::HttpRoute, rw: &HttpUrlRewriteFilter) -> Option<String> {
    let out = r.rewrite.get_or_insert_with(Default::default);
    if let Some(host) = &rw.hostname {
        out.authority = host.clone();
    }
    let p = rw.path.as_ref()?;
    match p.type_? {
        PathModifierType::ReplaceFullPath => {
            out.uri = p.replace_full_path.clone().unwrap_or_default();
            out.replace_full_path = true;
            None
        }
        PathModifierType::ReplacePrefixMatch => p.replace_prefix_match.clone(),
    }
}

/// The path a redirect or rewrite puts in place: the full path, or the prefix replacement.
fn modified_path(p: &HttpPathModifier) -> Option<String> {
    match p.type_? {
        PathModifierType::ReplaceFullPath => p.replace_full_path.clone(),
        PathModifierType::ReplacePrefixMatch => p.replace_prefix_match.clone(),
    }
}

/// A redirect; without a port, the scheme's well-known port when a scheme is given (the spec's rule), else the
/// request's. `ReplacePrefixMatch` cannot be expressed by the waypoint's redirect, which replaces the whole path:
/// it is sent as a whole-path replacement, and `analyze` warns.
fn redirect(rd: &HttpRequestRedirectFilter) -> pb::Redirect {
    let scheme_port = match rd.scheme.as_deref() {
        Some("https") => 443,
        Some("http") => 80,
        _ => 0,
    };
    let uri = rd.path.as_ref().and_then(modified_path);
    pb::Redirect {
        uri: uri.unwrap_or_default(),
        authority: rd.hostname.clone().unwrap_or_default(),
        scheme: rd.scheme.clone().unwrap_or_default(),
        port: rd.port.unwrap_or(scheme_port),
        status: rd.status_code.unwrap_or(DEFAULT_REDIRECT_STATUS),
    }
}

fn destination(route_ns: &str, name: &str, ns: Option<&str>, port: Option<u32>) -> pb::Destination {
    pb::Destination {
        service: service_key(name, ns.unwrap_or(route_ns)),
        subset: String::new(),
        port: port.unwrap_or(0),
    }
}

/// A Service backend with its weight (default 1, relative) and its own header modifiers.
fn backend(route_ns: &str, b: &HttpBackendRef) -> pb::WeightedDestination {
    let filter = |pick: fn(&HttpRouteFilter) -> Option<&HttpHeaderFilter>| {
        b.filters.iter().find_map(pick).map(header_filter)
    };
    pb::WeightedDestination {
        destination: Some(destination(
            route_ns,
            &b.name,
            b.namespace.as_deref(),
            b.port,
        )),
        weight: b.weight,
        request_headers: filter(|f| f.request_header_modifier.as_ref()),
        response_headers: filter(|f| f.response_header_modifier.as_ref()),
    }
}

/// `request` bounds the whole request; `backendRequest` each attempt (and the whole request when `request` is
/// unset, as in Istio). Retries are Istio's default policy, which Istio applies to Gateway API routes too.
fn apply_timeouts(r: &mut pb::HttpRoute, t: Option<&HttpRouteTimeouts>) {
    let nonzero = |d: Option<MeshDuration>| d.filter(|d| !d.get().is_zero());
    let request = nonzero(t.and_then(|t| t.request));
    let backend = nonzero(t.and_then(|t| t.backend_request));
    r.timeout_ms = opt_millis(request.or(backend));
    let mut retry = default_retry();
    retry.per_try_timeout_ms = opt_millis(backend);
    r.retry = Some(retry);
}
