//! Istio VirtualService `http[]` rules → routes, in order (Istio evaluates them first-match, as the waypoint does).

use mesh_proto::mesh::l7::v1 as pb;

use super::{
    addresses, default_retry, destination_key, header_ops, millis, object_name, opt_millis,
    string_match,
};
use mesh_model::{
    labels_match, ConfigSet, Destination, HeaderOperations, Headers, HttpDirectResponse,
    HttpFaultInjection, HttpMatchRequest, HttpRedirect, HttpRetry, HttpRewrite,
    HttpRouteDestination, ObjectMeta, StringMatch, VirtualService, VsHttpRoute,
};

/// Istio's `redirectCode` when unset.
const DEFAULT_REDIRECT_CODE: u32 = 301;

pub(super) fn routes(set: &ConfigSet, vs: &VirtualService) -> Vec<pb::HttpRoute> {
    vs.spec
        .http
        .iter()
        .enumerate()
        .map(|(i, r)| route(set, vs, i, r))
        .collect()
}

fn route(set: &ConfigSet, vs: &VirtualService, index: usize, r: &VsHttpRoute) -> pb::HttpRoute {
    let ns = &vs.metadata.namespace;
    let rule = r.name.clone().unwrap_or_else(|| index.to_string());
    pb::HttpRoute {
        name: format!("{}#{rule}", object_name("VirtualService", &vs.metadata)),
        matches: r.matches.iter().map(|m| route_match(set, m)).collect(),
        destinations: destinations(ns, &r.route),
        direct_response: r.direct_response.as_ref().map(direct_response),
        redirect: r.redirect.as_ref().map(redirect),
        request_headers: request_ops(r.headers.as_ref()),
        response_headers: response_ops(r.headers.as_ref()),
        rewrite: r.rewrite.as_ref().map(rewrite),
        timeout_ms: opt_millis(r.timeout),
        retry: Some(retry(r.retries.as_ref())),
        fault: r.fault.as_ref().map(fault),
        mirrors: mirrors(ns, r),
    }
}

fn route_match(set: &ConfigSet, m: &HttpMatchRequest) -> pb::RouteMatch {
    let present = |sm: &Option<StringMatch>| sm.as_ref().and_then(string_match);
    let headers = m
        .headers
        .iter()
        .map(|(name, sm)| header_match(name, sm, false));
    let without = m
        .without_headers
        .iter()
        .map(|(name, sm)| header_match(name, sm, true));
    pb::RouteMatch {
        uri: present(&m.uri),
        method: present(&m.method),
        authority: present(&m.authority),
        headers: headers.chain(without).collect(),
        query_params: m
            .query_params
            .iter()
            // Query parameter names are case-sensitive, unlike header names.
            .map(|(name, sm)| pb::HeaderMatch {
                name: name.clone(),
                value: string_match(sm),
                invert: false,
            })
            .collect(),
        source_labels: m.source_labels.clone().into_iter().collect(),
        source_namespace: m.source_namespace.clone().unwrap_or_default(),
        port: m.port.unwrap_or(0),
        source_addresses: source_addresses(set, m),
    }
}

/// The workloads `sourceLabels` picks (in `sourceNamespace` when set, since both must hold), resolved here
/// because the workload API carries only a few labels. Empty without `sourceLabels`.
fn source_addresses(set: &ConfigSet, m: &HttpMatchRequest) -> Vec<Vec<u8>> {
    if m.source_labels.is_empty() {
        return Vec::new();
    }
    let in_ns = |meta: &ObjectMeta| {
        m.source_namespace
            .as_deref()
            .is_none_or(|ns| ns == meta.namespace)
    };
    let pods = set
        .pods()
        .filter(|p| in_ns(&p.metadata) && labels_match(&m.source_labels, &p.metadata.labels));
    let entries = set
        .workload_entries()
        .filter(|w| in_ns(&w.metadata) && labels_match(&m.source_labels, w.labels()));
    addresses(pods, entries)
}

/// A header condition; an empty StringMatch (`x-debug: {}`) asks only for presence, as in Istio.
fn header_match(name: &str, sm: &StringMatch, invert: bool) -> pb::HeaderMatch {
    pb::HeaderMatch {
        name: name.to_ascii_lowercase(),
        value: string_match(sm),
        invert,
    }
}

fn destination(ns: &str, d: &Destination) -> pb::Destination {
    pb::Destination {
        service: destination_key(&d.host, ns),
        subset: d.subset.clone().unwrap_or_default(),
        port: d.port.map_or(0, |p| p.number),
    }
}

/// Relative weights. A lone destination gets everything whatever its weight (Istio ignores it). Among several,
/// an omitted weight is 0, unless every weight is omitted: then they share equally (Istio's validation would
/// reject that; this model rejects it too, so the case is only reached by code-built config).
fn destinations(ns: &str, route: &[HttpRouteDestination]) -> Vec<pb::WeightedDestination> {
    let all_omitted = route.iter().all(|d| d.weight.is_none());
    route
        .iter()
        .map(|d| pb::WeightedDestination {
            destination: Some(destination(ns, &d.destination)),
            weight: match d.weight {
                _ if route.len() == 1 || all_omitted => 100,
                w => w.unwrap_or(0),
            },
            request_headers: request_ops(d.headers.as_ref()),
            response_headers: response_ops(d.headers.as_ref()),
        })
        .collect()
}

fn ops(h: &HeaderOperations) -> pb::HeaderOps {
    header_ops(
        h.set.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        h.add.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        h.remove.iter().map(String::as_str),
    )
}

fn request_ops(h: Option<&Headers>) -> Option<pb::HeaderOps> {
    h.and_then(|h| h.request.as_ref()).map(ops)
}

fn response_ops(h: Option<&Headers>) -> Option<pb::HeaderOps> {
    h.and_then(|h| h.response.as_ref()).map(ops)
}

/// No `retries` block: Istio's default policy. `attempts: 0`: no retries. Otherwise the given attempts, with
/// Istio's default conditions unless `retryOn` names its own; numeric entries are status codes, and, as Istio
/// does, `retriable-status-codes` is added so the codes take effect.
fn retry(r: Option<&HttpRetry>) -> pb::Retry {
    let Some(r) = r else {
        return default_retry();
    };
    if r.attempts == 0 {
        return pb::Retry::default();
    }
    let mut retry_on: Vec<String> = r
        .retry_on
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(ToString::to_string)
        .collect();
    if retry_on.is_empty() {
        retry_on = default_retry().retry_on;
    } else if retry_on.iter().any(|c| c.parse::<u32>().is_ok())
        && !retry_on.iter().any(|c| c == "retriable-status-codes")
    {
        retry_on.push("retriable-status-codes".to_string());
    }
    pb::Retry {
        attempts: r.attempts,
        per_try_timeout_ms: opt_millis(r.per_try_timeout),
        retry_on,
    }
}

/// An unset percentage injects nothing, which is what Istio does (see `FaultDelay::percentage`).
fn fault(f: &HttpFaultInjection) -> pb::Fault {
    let delay = f.delay.as_ref();
    let abort = f.abort.as_ref();
    pb::Fault {
        delay_ms: delay.and_then(|d| d.fixed_delay).map_or(0, millis),
        delay_percent: delay.and_then(|d| d.percentage).map_or(0.0, |p| p.value),
        abort_status: abort.and_then(|a| a.http_status).unwrap_or(0),
        abort_percent: abort.and_then(|a| a.percentage).map_or(0.0, |p| p.value),
    }
}

/// `mirror` (with `mirrorPercentage`) then `mirrors[]`; an unset percentage mirrors every request.
fn mirrors(ns: &str, r: &VsHttpRoute) -> Vec<pb::Mirror> {
    let single = r.mirror.iter().map(|d| (d, r.mirror_percentage));
    let many = r.mirrors.iter().map(|m| (&m.destination, m.percentage));
    single
        .chain(many)
        .map(|(d, pct)| pb::Mirror {
            destination: Some(destination(ns, d)),
            percent: pct.map_or(100.0, |p| p.value),
        })
        .collect()
}

fn rewrite(r: &HttpRewrite) -> pb::Rewrite {
    pb::Rewrite {
        uri: r.uri.clone().unwrap_or_default(),
        replace_full_path: false,
        authority: r.authority.clone().unwrap_or_default(),
    }
}

fn redirect(r: &HttpRedirect) -> pb::Redirect {
    pb::Redirect {
        uri: r.uri.clone().unwrap_or_default(),
        authority: r.authority.clone().unwrap_or_default(),
        scheme: r.scheme.clone().unwrap_or_default(),
        port: r.port.unwrap_or(0),
        status: r.redirect_code.unwrap_or(DEFAULT_REDIRECT_CODE),
    }
}

fn direct_response(d: &HttpDirectResponse) -> pb::DirectResponse {
    pb::DirectResponse {
        status: d.status,
        body: d.body.as_ref().map(|b| b.content()).unwrap_or_default(),
    }
}
