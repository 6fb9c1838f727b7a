//! One HTTP request through the waypoint, as a pipeline: each stage passes the request on or answers it.
//!
//! [`handle`] → [`route_request`]: read the request's target → authorize (AuthorizationPolicy) → match a route
//! (first match wins) → inject faults → act: a direct response or redirect answers here, a forward picks a
//! weighted destination → build the upstream request (header hygiene, rewrites, header operations) → read the
//! body (buffered when it may be retried or mirrored) → mirror → [`forward`] → response headers → [`record`].
//! A stage that answers returns `Err` with the response; [`LocalReply`] says why and carries the flags.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, HOST};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use rand::Rng;

use crate::actions::{
    direct, pick_weighted, redirect, rewrite, shadow, strip_hop_by_hop, upgrade_of,
};
use crate::downstream::Downstream;
use crate::forward::{forward, Payload, Template};
use crate::metrics::{Protocol, RequestLabels};
use crate::reply::{Forwarded, LocalReply};
use crate::routes::{
    default_route, Action, Destination, Match, RequestView, RetryPolicy, Route, ServiceRoutes,
    WeightedDestination,
};
use crate::trace;
use crate::upstream::Body;
use crate::Ctx;
use mesh_core::metrics::{Reporter, ResponseFlags, SecurityPolicy};

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
    // Built only when the access log is on: it costs allocations on every request.
    let line =
        tracing::enabled!(target: "access", tracing::Level::INFO).then(|| AccessLine::of(&req));
    // Only with a tracer: continuing the trace costs a span and header rewrites on every request.
    let mut traced = ctx.tracer.as_ref().map(|t| Traced {
        context: trace::Context::continue_or_start(req.headers(), t.sampling_percentage),
        start: std::time::SystemTime::now(),
        method: req.method().clone(),
        route: String::new(),
        cluster: String::new(),
    });
    let (mut f, service) = route_request(&ctx, &down, req, traced.as_mut()).await;
    record(&ctx, &down, &f, &service, protocol, started.elapsed());
    if let (Some(tracer), Some(t)) = (&ctx.tracer, traced) {
        if t.context.sampled {
            tracer.record(t.finish(&f, &service));
        }
    }
    if let Some(line) = line {
        line.log(&down, &f, &service, started.elapsed());
    }
    if let Some(client) = client_upgrade {
        if f.resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let server = hyper::upgrade::on(&mut f.resp);
            ctx.drain.spawn(splice_upgraded(client, server));
        }
    }
    Ok(f.resp)
}

/// How a stage ended the pipeline early: a reply of the waypoint's own, or a response the route makes
/// (direct response, redirect).
enum Answer {
    Local(LocalReply),
    Made(Box<Forwarded>),
}

impl From<LocalReply> for Answer {
    fn from(r: LocalReply) -> Self {
        Self::Local(r)
    }
}

impl From<Answer> for Forwarded {
    fn from(a: Answer) -> Self {
        match a {
            Answer::Local(r) => r.into(),
            Answer::Made(f) => *f,
        }
    }
}

/// The request as its route matched it: what it is for, and what the route made of it.
struct Routed<'a> {
    route: &'a Route,
    matched: Option<&'a Match>,
    /// A fault delay was injected (reported as `DI` unless something worse happened).
    delayed: bool,
}

/// A request's span while it is routed: its context, and what the pipeline learns of it.
struct Traced {
    context: trace::Context,
    start: std::time::SystemTime,
    method: http::Method,
    route: String,
    cluster: String,
}

impl Traced {
    fn finish(self, f: &Forwarded, service: &str) -> trace::Finished {
        let upstream = f
            .upstream
            .as_ref()
            .map_or_else(|| "-".to_string(), |w| w.ip.to_string());
        // Named by route, not path: paths carry ids, and span names should stay few.
        let by = if self.route.is_empty() {
            service
        } else {
            self.route.as_str()
        };
        trace::Finished {
            context: self.context,
            name: format!("{} {by}", self.method),
            start: self.start,
            end: std::time::SystemTime::now(),
            attributes: vec![
                ("istio.service", service.to_string()),
                ("istio.route", self.route),
                ("upstream_cluster", self.cluster),
                ("upstream_host", upstream),
                ("retries", f.retries.to_string()),
                ("response_flags", f.flags.as_str().to_string()),
                ("component", "proxy".to_string()),
            ],
            status_code: f.resp.status().as_u16(),
        }
    }
}

/// Runs the pipeline; returns the response and the service it is reported under.
async fn route_request(
    ctx: &Arc<Ctx>,
    down: &Downstream,
    req: Request<Incoming>,
    traced: Option<&mut Traced>,
) -> (Forwarded, String) {
    let key = down.service_key();
    let l7 = ctx.l7.load_full();
    let routes = l7.config.services.get(&key).cloned();
    let fallback = routes.is_none().then(|| default_route(&key));
    match run(ctx, down, routes.as_deref(), fallback.as_ref(), req, traced).await {
        Ok(done) => done,
        Err(answer) => (answer.into(), key),
    }
}

async fn run(
    ctx: &Arc<Ctx>,
    down: &Downstream,
    routes: Option<&ServiceRoutes>,
    fallback: Option<&Route>,
    req: Request<Incoming>,
    traced: Option<&mut Traced>,
) -> Result<(Forwarded, String), Answer> {
    let (parts, body) = req.into_parts();
    let (authority, path) = target(&parts);
    let source_namespace = source_namespace(down);
    let view = RequestView {
        method: &parts.method,
        path: &path,
        authority: &authority,
        headers: &parts.headers,
        port: down.port,
        source_ip: Some(down.client_addr.ip()),
        source_namespace: source_namespace.as_deref(),
    };
    if let Some(r) = routes {
        authorize(ctx, down, r, &view)?;
    }
    let routed = match_route(routes, fallback, &view)?;
    let routed = inject_faults(routed).await?;
    let wd = act(routed.route, &authority, &path)?;
    let mut t = upstream_request(
        down,
        &parts.method,
        &parts.headers,
        &routed,
        wd,
        path,
        authority,
    );
    if let Some(traced) = traced {
        // The upstream's parent is the waypoint's span.
        traced.context.inject(&mut t.headers);
        traced.route.clone_from(&routed.route.name);
        traced.cluster = crate::cluster::ClusterKey {
            service: wd.dest.service.clone(),
            subset: wd.dest.subset.clone(),
            port: wd.dest.port.unwrap_or(down.port),
        }
        .to_string();
    }
    let payload = payload(ctx, body, routed.route).await?;
    if let Payload::Buffered(b) = &payload {
        for m in routed.route.mirrors.iter().filter(|m| chance(m.percent)) {
            mirror(ctx, down, &m.dest, &t, b.clone());
        }
    }
    let route = routed.route;
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
    if routed.delayed && f.flags == ResponseFlags::None {
        f.flags = ResponseFlags::DI;
    }
    Ok((f, wd.dest.service.clone()))
}

/// The authority (URI, else `Host`) and the path with its query.
fn target(parts: &http::request::Parts) -> (String, String) {
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
    (authority, path)
}

/// The verified peer identity, not the (forgeable) `Forwarded` address, says where the request comes from.
fn source_namespace(down: &Downstream) -> Option<String> {
    down.peer_identity
        .as_ref()
        .map(|i| i.namespace.clone())
        .or_else(|| down.client.as_ref().map(|w| w.namespace.clone()))
}

/// The first route that matches; a service without routing config gets the default route to itself.
fn match_route<'a>(
    routes: Option<&'a ServiceRoutes>,
    fallback: Option<&'a Route>,
    view: &RequestView<'_>,
) -> Result<Routed<'a>, LocalReply> {
    let (route, matched) = match (routes, fallback) {
        (Some(r), _) => r.route(view).ok_or(LocalReply::NoRoute)?,
        (None, Some(f)) => (f, None),
        (None, None) => return Err(LocalReply::NoRoute),
    };
    Ok(Routed {
        route,
        matched,
        delayed: false,
    })
}

/// The route's fault injection: a delay, then maybe an abort.
async fn inject_faults(mut routed: Routed<'_>) -> Result<Routed<'_>, LocalReply> {
    let fault = &routed.route.fault;
    if let Some((delay, pct)) = fault.delay {
        if chance(pct) {
            tokio::time::sleep(delay).await;
            routed.delayed = true;
        }
    }
    match fault.abort {
        Some((status, pct)) if chance(pct) => Err(LocalReply::FaultAbort(status)),
        _ => Ok(routed),
    }
}

/// A direct response or redirect answers here; a forward picks one of its weighted destinations.
fn act<'a>(
    route: &'a Route,
    authority: &str,
    path: &str,
) -> Result<&'a WeightedDestination, Answer> {
    match &route.action {
        Action::Direct { status, body } => {
            Err(Answer::Made(Box::new(direct(*status, body.clone()))))
        }
        Action::Redirect { .. } => Err(Answer::Made(Box::new(redirect(
            &route.action,
            authority,
            path,
        )))),
        Action::Forward {
            destinations,
            total_weight,
        } => Ok(pick_weighted(destinations, *total_weight)),
    }
}

/// The request as it goes upstream: hop-by-hop headers dropped (an upgrade re-added), the route's and the
/// destination's header operations applied, path and authority rewritten.
fn upstream_request(
    down: &Downstream,
    method: &http::Method,
    incoming: &HeaderMap,
    routed: &Routed<'_>,
    wd: &WeightedDestination,
    path: String,
    authority: String,
) -> Template {
    let mut headers = incoming.clone();
    let upgrade = if down.h2 { None } else { upgrade_of(&headers) };
    strip_hop_by_hop(&mut headers);
    if let Some(proto) = &upgrade {
        headers.insert(CONNECTION, http::HeaderValue::from_static("upgrade"));
        headers.insert(http::header::UPGRADE, proto.clone());
    }
    routed.route.request_headers.apply(&mut headers);
    wd.request_headers.apply(&mut headers);
    let (path, authority) = rewrite(routed.route, routed.matched, path, authority);
    Template {
        method: method.clone(),
        path,
        authority,
        headers,
        upgrade: upgrade.is_some(),
    }
}

/// Checks the service's AuthorizationPolicies; a denial is Envoy's 403 `RBAC: access denied`.
fn authorize(
    ctx: &Ctx,
    down: &Downstream,
    routes: &ServiceRoutes,
    view: &RequestView<'_>,
) -> Result<(), LocalReply> {
    if routes.authorization.is_empty() {
        return Ok(());
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
    let Some((policy, reason)) = crate::authz::check(&routes.authorization, &req) else {
        return Ok(());
    };
    tracing::info!(%policy, reason, principal = ?principal, path = view.path, "request denied by policy");
    ctx.metrics
        .denied
        .get_or_create(&crate::metrics::DenyLabels { policy, reason })
        .inc();
    Err(LocalReply::Denied)
}

/// Buffers small bodies so they can be retried and mirrored; streams the rest.
async fn payload(ctx: &Ctx, body: Incoming, route: &Route) -> Result<Payload, LocalReply> {
    let wants_copy = route.retry.attempts > 0 || !route.mirrors.is_empty();
    let small = body
        .size_hint()
        .upper()
        .is_some_and(|n| n <= ctx.cfg.max_buffered_body_bytes as u64);
    if !(wants_copy && small) {
        return Ok(Payload::Stream(Some(body)));
    }
    match body.collect().await {
        Ok(c) => Ok(Payload::Buffered(c.to_bytes())),
        Err(e) => {
            tracing::debug!(error = %e, "client body ended early; not forwarded");
            Err(LocalReply::BodyIncomplete)
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

async fn splice_upgraded(client: hyper::upgrade::OnUpgrade, server: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(client, server) {
        Ok((c, s)) => {
            let (mut c, mut s) = (
                hyper_util::rt::TokioIo::new(c),
                hyper_util::rt::TokioIo::new(s),
            );
            if let Err(e) = mesh_core::relay::copy_bidirectional(&mut c, &mut s, 64 * 1024).await {
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

/// What the access log keeps of a request before it is routed (the request itself moves on).
struct AccessLine {
    method: http::Method,
    authority: String,
    path: String,
    request_id: String,
    trace_id: String,
}

impl AccessLine {
    fn of(req: &Request<Incoming>) -> Self {
        let header = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| header("host"));
        // W3C traceparent: 00-<trace id>-<span id>-<flags>; B3's own header otherwise.
        let traceparent = header("traceparent");
        let trace_id = traceparent
            .split('-')
            .nth(1)
            .map(str::to_string)
            .unwrap_or_else(|| header("x-b3-traceid"));
        Self {
            method: req.method().clone(),
            authority,
            path: req.uri().path().to_string(),
            request_id: header("x-request-id"),
            trace_id,
        }
    }

    /// One line per request (target `access`: `RUST_LOG=info,access=off` turns it off), Envoy's fields.
    fn log(&self, down: &Downstream, f: &Forwarded, service: &str, elapsed: Duration) {
        let upstream = f.upstream.as_ref().map_or_else(
            || "-".to_string(),
            |w| format!("{}/{}", w.namespace, w.name),
        );
        let peer = down
            .peer_identity
            .as_ref()
            .map_or_else(|| "-".to_string(), |i| i.to_string());
        tracing::info!(
            target: "access",
            method = %self.method,
            authority = %self.authority,
            path = %self.path,
            status = f.resp.status().as_u16(),
            flags = f.flags.as_str(),
            service,
            upstream,
            duration_ms = elapsed.as_millis() as u64,
            src_identity = peer,
            request_id = %self.request_id,
            trace_id = %self.trace_id,
            "request"
        );
    }
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
        connection_security_policy: SecurityPolicy::mutual_tls,
    };
    ctx.metrics
        .duration
        .get_or_create(&labels)
        .observe(elapsed.as_secs_f64() * 1000.0);
    ctx.metrics.requests.get_or_create(&labels).inc();
}
