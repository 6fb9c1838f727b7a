//! One HTTP request through the waypoint: route it by the service's L7 config (first match wins), apply
//! faults, direct responses and redirects, rewrite and set headers, mirror, forward, and report it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, CONNECTION, HOST, LOCATION};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use rand::Rng;

use crate::forward::{forward, full, local, Forwarded, Payload, Template};
use crate::metrics::{Protocol, Reporter, RequestLabels, ResponseFlags};
use crate::proxy::Downstream;
use crate::routes::{
    default_route, Action, Destination, Match, RequestView, RetryPolicy, Route, StrMatch,
    WeightedDestination,
};
use crate::upstream::Body;
use crate::Ctx;

/// Headers that belong to one connection and are not forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

pub async fn handle(
    ctx: Arc<Ctx>,
    down: Arc<Downstream>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let protocol = if is_grpc(req.headers()) {
        Protocol::grpc
    } else {
        Protocol::http
    };
    // WebSocket and other HTTP/1.1 upgrades: once the upstream answers 101, both sides become one byte stream.
    let client_upgrade =
        (!down.h2 && upgrade_of(req.headers()).is_some()).then(|| hyper::upgrade::on(&mut req));
    let (mut f, service) = route_request(&ctx, &down, req).await;
    record(&ctx, &down, &f, &service, protocol, started.elapsed());
    if let Some(client) = client_upgrade {
        if f.resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let server = hyper::upgrade::on(&mut f.resp);
            ctx.drain.spawn(splice_upgraded(client, server));
        }
    }
    Ok(f.resp)
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` + `Upgrade: <protocol>`).
fn upgrade_of(h: &HeaderMap) -> Option<http::HeaderValue> {
    let asks = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| h.get(http::header::UPGRADE).cloned())
        .flatten()
}

async fn splice_upgraded(client: hyper::upgrade::OnUpgrade, server: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(client, server) {
        Ok((c, s)) => {
            let (mut c, mut s) = (
                hyper_util::rt::TokioIo::new(c),
                hyper_util::rt::TokioIo::new(s),
            );
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut s).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
    }
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn chance(percent: f64) -> bool {
    percent >= 100.0 || rand::rng().random_range(0.0..100.0) < percent
}

async fn route_request(
    ctx: &Arc<Ctx>,
    down: &Downstream,
    req: Request<Incoming>,
) -> (Forwarded, String) {
    let key = down.service_key();
    let l7 = ctx.l7.load_full();
    let routes = l7.config.services.get(&key).cloned();
    let (parts, body) = req.into_parts();
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    // The verified peer identity, not the (forgeable) `Forwarded` address, says where the request comes from.
    let source_namespace = down
        .peer_identity
        .as_ref()
        .map(|i| i.namespace.clone())
        .or_else(|| down.client.as_ref().map(|w| w.namespace.clone()));
    let view = RequestView {
        method: &parts.method,
        path: &path,
        authority: &authority,
        headers: &parts.headers,
        port: down.port,
        source_ip: Some(down.client_addr.ip()),
        source_namespace: source_namespace.as_deref(),
    };
    if let Some(denied) = routes
        .as_deref()
        .and_then(|r| authorize(ctx, down, r, &view))
    {
        return (denied, key);
    }
    let fallback;
    let (route, matched) = match &routes {
        Some(r) => match r.route(&view) {
            Some(hit) => hit,
            None => {
                return (
                    local(StatusCode::NOT_FOUND, "no route", ResponseFlags::NR),
                    key,
                )
            }
        },
        None => {
            fallback = default_route(&key);
            (&fallback, None)
        }
    };
    let mut delayed = false;
    if let Some((delay, pct)) = route.fault.delay {
        if chance(pct) {
            tokio::time::sleep(delay).await;
            delayed = true;
        }
    }
    if let Some((status, pct)) = route.fault.abort {
        if chance(pct) {
            return (local(status, "fault filter abort", ResponseFlags::FI), key);
        }
    }
    let (destinations, total) = match &route.action {
        Action::Direct { status, body } => return (direct(*status, body.clone()), key),
        Action::Redirect { .. } => return (redirect(&route.action, &authority, &path), key),
        Action::Forward {
            destinations,
            total_weight,
        } => (destinations, *total_weight),
    };
    let wd = pick_weighted(destinations, total);
    let mut headers = parts.headers.clone();
    let upgrade = if down.h2 { None } else { upgrade_of(&headers) };
    strip_hop_by_hop(&mut headers);
    if let Some(proto) = &upgrade {
        headers.insert(CONNECTION, http::HeaderValue::from_static("upgrade"));
        headers.insert(http::header::UPGRADE, proto.clone());
    }
    route.request_headers.apply(&mut headers);
    wd.request_headers.apply(&mut headers);
    let (path, authority) = rewrite(route, matched, path, authority);
    let t = Template {
        method: parts.method.clone(),
        path,
        authority,
        headers,
        upgrade: upgrade.is_some(),
    };
    let Some(payload) = payload(ctx, body, route).await else {
        let f = local(
            StatusCode::BAD_REQUEST,
            "request body incomplete",
            ResponseFlags::DC,
        );
        return (f, key);
    };
    if let Payload::Buffered(b) = &payload {
        for m in route.mirrors.iter().filter(|m| chance(m.percent)) {
            mirror(ctx, down, &m.dest, &t, b.clone());
        }
    }
    let mut f = forward(
        ctx,
        down,
        &wd.dest,
        &t,
        payload,
        &route.retry,
        route.timeout,
    )
    .await;
    route.response_headers.apply(f.resp.headers_mut());
    wd.response_headers.apply(f.resp.headers_mut());
    if delayed && f.flags == ResponseFlags::None {
        f.flags = ResponseFlags::DI;
    }
    (f, wd.dest.service.clone())
}

/// Checks the service's AuthorizationPolicies; a denial is Envoy's 403 `RBAC: access denied`.
fn authorize(
    ctx: &Ctx,
    down: &Downstream,
    routes: &crate::routes::ServiceRoutes,
    view: &RequestView<'_>,
) -> Option<Forwarded> {
    if routes.authorization.is_empty() {
        return None;
    }
    let principal = down.peer_identity.as_ref().map(|i| {
        format!(
            "{}/ns/{}/sa/{}",
            i.trust_domain, i.namespace, i.service_account
        )
    });
    let req = crate::authz::Request {
        principal: principal.as_deref(),
        namespace: view.source_namespace,
        source_ip: down.client_addr.ip(),
        host: view.authority,
        port: down.port,
        method: view.method.as_str(),
        path: view.path,
        headers: view.headers,
    };
    let (policy, reason) = crate::authz::check(&routes.authorization, &req)?;
    tracing::info!(%policy, reason, principal = ?principal, path = view.path, "request denied by policy");
    ctx.metrics
        .denied
        .get_or_create(&crate::metrics::DenyLabels { policy, reason })
        .inc();
    Some(local(
        StatusCode::FORBIDDEN,
        "RBAC: access denied",
        ResponseFlags::None,
    ))
}

fn pick_weighted(destinations: &[WeightedDestination], total: u32) -> &WeightedDestination {
    if destinations.len() == 1 {
        return &destinations[0];
    }
    let mut n = rand::rng().random_range(0..total.max(1));
    for d in destinations {
        if n < d.weight {
            return d;
        }
        n -= d.weight;
    }
    &destinations[destinations.len() - 1]
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers the client named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    let te_trailers = h
        .get(http::header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("trailers"));
    for n in HOP_BY_HOP {
        h.remove(*n);
    }
    // gRPC needs `te: trailers` end to end.
    if te_trailers {
        h.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
}

/// Istio's `rewrite.uri` replaces the matched prefix (the whole path for other matches); Gateway API's
/// `ReplaceFullPath` replaces the whole path.
fn rewrite(
    route: &Route,
    matched: Option<&Match>,
    path: String,
    authority: String,
) -> (String, String) {
    let Some(rw) = &route.rewrite else {
        return (path, authority);
    };
    let authority = rw.authority.clone().unwrap_or(authority);
    let Some(uri) = &rw.uri else {
        return (path, authority);
    };
    // Istio rewrites a route without a uri match as if it matched prefix "/".
    let root = StrMatch::Prefix("/".into());
    let path = match matched.and_then(|m| m.uri.as_ref()).or(Some(&root)) {
        Some(StrMatch::Prefix(p)) if !rw.full_path && path.starts_with(p.as_str()) => {
            let rest = &path[p.len()..];
            // Joining "/" + "/rest" must not double the slash.
            if uri.ends_with('/') && rest.starts_with('/') {
                format!("{uri}{}", &rest[1..])
            } else {
                format!("{uri}{rest}")
            }
        }
        _ => {
            let query = path.split_once('?').map(|(_, q)| q);
            match query {
                Some(q) if !uri.contains('?') => format!("{uri}?{q}"),
                _ => uri.clone(),
            }
        }
    };
    (path, authority)
}

/// Buffers small bodies so they can be retried and mirrored; streams the rest.
async fn payload(ctx: &Ctx, body: Incoming, route: &Route) -> Option<Payload> {
    let wants_copy = route.retry.attempts > 0 || !route.mirrors.is_empty();
    let small = body
        .size_hint()
        .upper()
        .is_some_and(|n| n <= ctx.cfg.max_buffered_body_bytes as u64);
    if !(wants_copy && small) {
        return Some(Payload::Stream(Some(body)));
    }
    match body.collect().await {
        Ok(c) => Some(Payload::Buffered(c.to_bytes())),
        Err(e) => {
            tracing::debug!(error = %e, "client body ended early; not forwarded");
            None
        }
    }
}

/// Fire-and-forget copy to a mirror; Envoy marks the authority with `-shadow`.
fn mirror(ctx: &Arc<Ctx>, down: &Downstream, dest: &Destination, t: &Template, body: Bytes) {
    let ctx = ctx.clone();
    let t = Template {
        method: t.method.clone(),
        path: t.path.clone(),
        authority: shadow(&t.authority),
        headers: t.headers.clone(),
        upgrade: false,
    };
    let dest = dest.clone();
    let down = down.clone();
    tokio::spawn(async move {
        let none = RetryPolicy::default();
        let f = forward(
            &ctx,
            &down,
            &dest,
            &t,
            Payload::Buffered(body),
            &none,
            Some(Duration::from_secs(30)),
        )
        .await;
        tracing::debug!(status = %f.resp.status(), mirror = %dest.service, "mirrored");
    });
}

/// Envoy's shadow host: `svc:80` → `svc-shadow:80`.
fn shadow(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => format!("{host}-shadow:{port}"),
        _ => format!("{authority}-shadow"),
    }
}

fn direct(status: StatusCode, body: Bytes) -> Forwarded {
    let mut f = local(status, "", ResponseFlags::None);
    *f.resp.body_mut() = full(body);
    f.resp.headers_mut().remove(http::header::CONTENT_TYPE);
    f
}

fn redirect(action: &Action, authority: &str, path: &str) -> Forwarded {
    let Action::Redirect {
        uri,
        authority: to_authority,
        scheme,
        port,
        status,
    } = action
    else {
        return local(
            StatusCode::INTERNAL_SERVER_ERROR,
            "not a redirect",
            ResponseFlags::None,
        );
    };
    let host = to_authority.as_deref().unwrap_or(authority);
    let host = match port {
        Some(p) => format!("{}:{p}", host.split(':').next().unwrap_or(host)),
        None => host.to_string(),
    };
    // Envoy keeps the query string when it replaces the path.
    let new_path = match (uri, path.split_once('?')) {
        (Some(u), Some((_, q))) if !u.contains('?') => format!("{u}?{q}"),
        (Some(u), _) => u.clone(),
        (None, _) => path.to_string(),
    };
    let location = format!("{}://{host}{new_path}", scheme.as_deref().unwrap_or("http"));
    let mut f = local(*status, "", ResponseFlags::None);
    if let Ok(v) = http::HeaderValue::from_str(&location) {
        f.resp.headers_mut().insert(LOCATION, v);
    }
    f
}

fn record(
    ctx: &Ctx,
    down: &Downstream,
    f: &Forwarded,
    service_key: &str,
    protocol: Protocol,
    elapsed: Duration,
) {
    let unknown = || "unknown".to_string();
    let (svc_ns, host) = service_key
        .split_once('/')
        .map_or((unknown(), service_key.to_string()), |(n, h)| {
            (n.to_string(), h.to_string())
        });
    let labels = RequestLabels {
        reporter: Reporter::waypoint,
        source_workload: down
            .client
            .as_ref()
            .map_or_else(unknown, |w| w.name.clone()),
        source_workload_namespace: down
            .client
            .as_ref()
            .map_or_else(unknown, |w| w.namespace.clone()),
        source_principal: down
            .peer_identity
            .as_ref()
            .map_or_else(unknown, |i| i.to_string()),
        destination_workload: f.upstream.as_ref().map_or_else(unknown, |w| w.name.clone()),
        destination_workload_namespace: f
            .upstream
            .as_ref()
            .map_or_else(unknown, |w| w.namespace.clone()),
        destination_version: f
            .upstream
            .as_ref()
            .and_then(|w| w.labels.get("version").cloned())
            .unwrap_or_else(unknown),
        destination_service_name: host.split('.').next().unwrap_or(&host).to_string(),
        destination_service: host,
        destination_service_namespace: svc_ns,
        request_protocol: protocol,
        response_code: f.resp.status().as_u16(),
        response_flags: f.flags,
        connection_security_policy: "mutual_tls",
    };
    ctx.metrics
        .duration
        .get_or_create(&labels)
        .observe(elapsed.as_secs_f64() * 1000.0);
    ctx.metrics.requests.get_or_create(&labels).inc();
}
