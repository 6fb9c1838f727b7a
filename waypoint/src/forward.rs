//! Sends a routed request to its destination: the cluster's circuit breakers, the load balancer, outlier
//! detection, retries and timeouts, and the upstream connection over HBONE. Opaque TCP is forwarded here too.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mesh_core::workload::state::{Snapshot, TunnelProtocol, Workload};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::budget::admit;
use crate::cluster::{Cluster, ClusterKey, Outcome};
use crate::downstream::Downstream;
use crate::reply::{full, Forwarded, LocalReply};
use crate::routes::{Destination, Limits, Policy, RetryPolicy};
use crate::upstream::h1::{Checkout, PoolError};
use crate::upstream::{Body, BoxError, ConnectError};
use crate::Ctx;
use mesh_core::metrics::{Reporter, ResponseFlags, SecurityPolicy, TcpLabels};

/// The request as it goes upstream (every attempt is built from it).
pub struct Template {
    pub method: Method,
    pub path: String,
    pub authority: String,
    pub headers: HeaderMap,
    /// An HTTP/1.1 upgrade (WebSocket): always sent over HTTP/1.1.
    pub upgrade: bool,
}

/// A request body: buffered (so it can be retried and mirrored) or streamed once.
pub enum Payload {
    Buffered(Bytes),
    Stream(Option<Incoming>),
}

impl Payload {
    fn take(&mut self) -> Option<Body> {
        match self {
            Self::Buffered(b) => Some(full(b.clone())),
            Self::Stream(s) => s
                .take()
                .map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Self::Buffered(_))
    }
}

/// How one attempt failed; [`finish`] turns the last one into the client's [`LocalReply`].
enum AttemptError {
    Overflow,
    /// No pooled connection freed up in time: the cluster's fault, not the host's.
    PoolTimeout,
    /// The request could not be built for the upstream: not the host's fault either.
    Invalid(http::Error),
    Connect(Box<ConnectError>),
    Reset(hyper::Error),
    Timeout,
}

impl From<AttemptError> for LocalReply {
    fn from(e: AttemptError) -> Self {
        match e {
            AttemptError::Overflow => LocalReply::Overflow,
            AttemptError::PoolTimeout | AttemptError::Timeout => LocalReply::Timeout,
            AttemptError::Invalid(e) => LocalReply::Invalid(e.to_string()),
            AttemptError::Connect(e) => {
                tracing::debug!(error = %e, "upstream connect failed");
                LocalReply::ConnectFailure(e.reason())
            }
            AttemptError::Reset(e) => LocalReply::Reset(e.to_string()),
        }
    }
}

/// Forwards with the route's retries, bounded by its overall timeout (504 UT when it passes).
pub async fn forward(
    ctx: &Ctx,
    down: &Downstream,
    dest: &Destination,
    t: &Template,
    payload: Payload,
    retry: &RetryPolicy,
    timeout: Option<Duration>,
) -> Forwarded {
    let attempts = attempts(ctx, down, dest, t, payload, retry);
    match timeout {
        Some(limit) => match tokio::time::timeout(limit, attempts).await {
            Ok(f) => f,
            Err(_) => LocalReply::Timeout.into(),
        },
        None => attempts.await,
    }
}

/// The cluster a destination names, with its healthy endpoints (restricted to the subset) and policy.
fn cluster_for(
    ctx: &Ctx,
    snap: &Snapshot,
    dest: &Destination,
    port: u16,
) -> Option<(Arc<Cluster>, Vec<Arc<Workload>>, Limits)> {
    let (_, endpoints) = snap.service_by_key(&dest.service)?;
    let l7 = ctx.l7.load();
    let routes = l7.config.services.get(&dest.service);
    let subset = match (&dest.subset, routes) {
        (Some(name), Some(r)) => Some(r.subsets.get(name)?),
        // A subset no DestinationRule defines has no endpoints (Envoy: no cluster).
        (Some(_), None) => return None,
        (None, _) => None,
    };
    let endpoints: Vec<Arc<Workload>> = endpoints
        .iter()
        .filter(|w| subset.is_none_or(|s| s.addresses.contains(&w.ip)))
        .cloned()
        .collect();
    let default = Policy::default();
    let policy = routes.map_or(&default, |r| {
        r.policy(dest.subset.as_deref()).for_port(port)
    });
    let key = ClusterKey {
        service: dest.service.clone(),
        subset: dest.subset.clone(),
        port,
    };
    let cluster = ctx.clusters.get(key, policy, l7.generation);
    Some((cluster, endpoints, policy.limits.clone()))
}

async fn attempts(
    ctx: &Ctx,
    down: &Downstream,
    dest: &Destination,
    t: &Template,
    mut payload: Payload,
    retry: &RetryPolicy,
) -> Forwarded {
    let snap = ctx.state.load();
    let port = dest.port.unwrap_or(down.port);
    let Some((cluster, endpoints, limits)) = cluster_for(ctx, &snap, dest, port) else {
        return LocalReply::NoHealthyUpstream.into();
    };
    let overflow = |family: &prometheus_client::metrics::family::Family<
        crate::metrics::ClusterLabels,
        mesh_core::metrics::BareCounter,
    >|
     -> Forwarded {
        family
            .get_or_create(&crate::metrics::ClusterMetrics::label(&cluster))
            .inc();
        LocalReply::Overflow.into()
    };
    let Some(_active) = admit(&cluster.active_requests, limits.max_requests) else {
        return overflow(&ctx.metrics.clusters.pending_overflow);
    };
    let svc = snap.service_by_key(&dest.service).map(|(s, _)| s.clone());
    let h2 = !t.upgrade && (down.h2 || limits.h2_upgrade);
    let mut tried = Vec::new();
    let mut attempt = 0;
    let mut retry_budget;
    loop {
        let Some((w, _lease)) = cluster.pick(&endpoints, &tried) else {
            return LocalReply::NoHealthyUpstream.into();
        };
        tried.push(w.ip);
        let Some(target) = svc
            .as_deref()
            .and_then(|s| Snapshot::target_port(s, &w, port))
        else {
            return LocalReply::NoSuchPort.into();
        };
        let Some(body) = payload.take() else {
            return LocalReply::BodyAlreadySent.into();
        };
        let once = send_once(ctx, down, &cluster, &limits, &w, target, t, body, h2);
        let result = match retry.per_try_timeout {
            Some(limit) => tokio::time::timeout(limit, once)
                .await
                .unwrap_or(Err(AttemptError::Timeout)),
            None => once.await,
        };
        let outcome = match &result {
            Ok(r) => Some(Outcome::Status(r.status().as_u16())),
            Err(AttemptError::Overflow) => return overflow(&ctx.metrics.clusters.pending_overflow),
            Err(AttemptError::PoolTimeout | AttemptError::Invalid(_)) => None,
            Err(_) => Some(Outcome::LocalFailure),
        };
        if let Some(o) = outcome {
            if cluster.record(w.ip, o, endpoints.len()) {
                ctx.metrics
                    .clusters
                    .ejections_enforced
                    .get_or_create(&crate::metrics::ClusterMetrics::label(&cluster))
                    .inc();
            }
        }
        let more = attempt < retry.attempts && payload.replayable() && retriable(retry, &result);
        // The retry budget is held until the retry itself is done.
        retry_budget = if more {
            admit(&cluster.active_retries, limits.max_retries)
        } else {
            None
        };
        if retry_budget.is_none() {
            if more {
                ctx.metrics
                    .clusters
                    .retry_overflow
                    .get_or_create(&crate::metrics::ClusterMetrics::label(&cluster))
                    .inc();
            }
            return finish(result, w, attempt);
        }
        attempt += 1;
        // Before the n-th retry: 50–100 ms, then 100–200 ms, then 125–250 ms (capped at 250 ms, Envoy's 10× its
        // 25 ms base interval).
        tokio::time::sleep(mesh_primitives::backoff::delay(
            Duration::from_millis(100),
            Duration::from_millis(250),
            attempt - 1,
        ))
        .await;
    }
}

fn finish(
    result: Result<Response<Incoming>, AttemptError>,
    w: Arc<Workload>,
    retries: u32,
) -> Forwarded {
    let mut f = match result {
        Ok(resp) => Forwarded {
            resp: resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()),
            flags: ResponseFlags::None,
            upstream: None,
            retries,
        },
        Err(e) => LocalReply::from(e).into(),
    };
    f.retries = retries;
    if retries > 0 && f.resp.status().is_server_error() && f.flags == ResponseFlags::None {
        f.flags = ResponseFlags::URX;
    }
    f.upstream = Some(w);
    f
}

fn retriable(p: &RetryPolicy, result: &Result<Response<Incoming>, AttemptError>) -> bool {
    let on = &p.on;
    match result {
        Ok(r) => {
            let s = r.status().as_u16();
            let grpc = r
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok());
            (on.any_5xx && s >= 500)
                || (on.gateway_error && matches!(s, 502..=504))
                || (on.retriable_4xx && s == 409)
                || on.status_codes.contains(&s)
                || grpc.is_some_and(|g| on.grpc.contains(&g))
        }
        Err(AttemptError::Connect(_)) => on.connect_failure || on.any_5xx || on.gateway_error,
        Err(AttemptError::Reset(_)) => on.reset || on.any_5xx || on.refused_stream,
        Err(AttemptError::Timeout) => on.any_5xx || on.gateway_error,
        Err(AttemptError::Overflow | AttemptError::PoolTimeout | AttemptError::Invalid(_)) => false,
    }
}

#[allow(clippy::too_many_arguments)]
async fn send_once(
    ctx: &Ctx,
    down: &Downstream,
    cluster: &Cluster,
    limits: &Limits,
    w: &Workload,
    port: u16,
    t: &Template,
    body: Body,
    h2: bool,
) -> Result<Response<Incoming>, AttemptError> {
    if h2 {
        let mut send = match cluster.h2.get(w.ip) {
            Some(s) => s,
            None => {
                let io = ctx
                    .dialer()
                    .dial(down.client_addr, w, port, limits.connect_timeout)
                    .await
                    .map_err(|e| AttemptError::Connect(Box::new(e.into())))?;
                cluster
                    .h2
                    .handshake(w.ip, io)
                    .await
                    .map_err(|e| AttemptError::Connect(Box::new(e.into())))?
            }
        };
        let uri = format!("http://{}{}", t.authority, t.path);
        let req = build(t, &uri, body, http::Version::HTTP_2)?;
        return send.send_request(req).await.map_err(AttemptError::Reset);
    }
    let mut conn = match cluster.h1.checkout(w.ip, limits).await {
        Ok(Checkout::Ready(c)) => c,
        Ok(Checkout::Dial(slot)) => {
            let io = ctx
                .dialer()
                .dial(down.client_addr, w, port, limits.connect_timeout)
                .await
                .map_err(|e| AttemptError::Connect(Box::new(e.into())))?;
            cluster
                .h1
                .handshake(slot, io)
                .await
                .map_err(|e| AttemptError::Connect(Box::new(e.into())))?
        }
        Err(PoolError::Overflow) => return Err(AttemptError::Overflow),
        Err(PoolError::Timeout(_)) => return Err(AttemptError::PoolTimeout),
    };
    let req = build(t, &t.path, body, http::Version::HTTP_11)?;
    conn.send.ready().await.map_err(AttemptError::Reset)?;
    let resp = conn
        .send
        .send_request(req)
        .await
        .map_err(AttemptError::Reset)?;
    cluster.h1.release(w.ip, conn, limits);
    Ok(resp)
}

fn build(
    t: &Template,
    uri: &str,
    body: Body,
    version: http::Version,
) -> Result<Request<Body>, AttemptError> {
    let mut req = Request::builder()
        .method(t.method.clone())
        .uri(uri)
        .version(version)
        .body(body)
        .map_err(AttemptError::Invalid)?;
    *req.headers_mut() = t.headers.clone();
    if version == http::Version::HTTP_11 {
        if let Ok(host) = http::HeaderValue::from_str(&t.authority) {
            req.headers_mut().insert(http::header::HOST, host);
        }
    } else {
        req.headers_mut().remove(http::header::HOST);
    }
    Ok(req)
}

fn tcp_labels(
    ctx: &Ctx,
    down: &Downstream,
    w: &Workload,
    service_key: &str,
    flags: ResponseFlags,
) -> TcpLabels {
    let unknown = || "unknown".to_string();
    TcpLabels {
        reporter: Reporter::waypoint,
        source_workload: down
            .client
            .as_ref()
            .map_or_else(unknown, |c| c.name.clone()),
        source_workload_namespace: down
            .client
            .as_ref()
            .map_or_else(unknown, |c| c.namespace.clone()),
        source_principal: down
            .peer_identity
            .as_ref()
            .map_or_else(unknown, ToString::to_string),
        destination_workload: w.name.clone(),
        destination_workload_namespace: w.namespace.clone(),
        destination_service: service_key
            .split_once('/')
            .map_or(service_key, |(_, h)| h)
            .to_string(),
        // A workload outside the mesh (plain TCP) has no identity.
        destination_principal: match w.protocol {
            TunnelProtocol::Hbone => w.identity(&ctx.cfg.trust_domain).to_string(),
            TunnelProtocol::None => unknown(),
        },
        request_protocol: "tcp",
        response_flags: flags,
        connection_security_policy: SecurityPolicy::mutual_tls,
    }
}

/// Non-HTTP traffic to a waypoint-bound service: bytes to one of its endpoints.
pub async fn tcp<S: AsyncRead + AsyncWrite + Unpin>(ctx: &Ctx, down: &Downstream, mut io: S) {
    let snap = ctx.state.load();
    let dest = Destination {
        service: down.service_key(),
        subset: None,
        port: Some(down.port),
    };
    let Some((cluster, endpoints, limits)) = cluster_for(ctx, &snap, &dest, down.port) else {
        tracing::info!("opaque TCP to a service without endpoints; closing");
        return;
    };
    let Some((w, _lease)) = cluster.pick(&endpoints, &[]) else {
        tracing::info!("opaque TCP: no healthy upstream; closing");
        return;
    };
    let target = Snapshot::target_port(&down.service, &w, down.port).unwrap_or(down.port);
    let labels = |flags| tcp_labels(ctx, down, &w, &dest.service, flags);
    let m = &ctx.metrics.tcp;
    match ctx
        .dialer()
        .dial(down.client_addr, &w, target, limits.connect_timeout)
        .await
    {
        Ok(mut up) => {
            cluster.record(w.ip, Outcome::Status(200), endpoints.len());
            let l = labels(ResponseFlags::None);
            m.opened.get_or_create(&l).inc();
            let (rx, tx) =
                match mesh_core::relay::copy_bidirectional(&mut io, &mut up, 64 * 1024).await {
                    Ok(counts) => counts,
                    Err(e) => {
                        tracing::debug!(error = %e, "opaque TCP ended with error");
                        (0, 0)
                    }
                };
            m.received_bytes.get_or_create(&l).inc_by(rx);
            m.sent_bytes.get_or_create(&l).inc_by(tx);
            m.closed.get_or_create(&l).inc();
        }
        Err(e) => {
            cluster.record(w.ip, Outcome::LocalFailure, endpoints.len());
            tracing::info!(error = %e, upstream = %w.ip, "opaque TCP: upstream unreachable");
            let l = labels(ResponseFlags::UF);
            m.opened.get_or_create(&l).inc();
            m.closed.get_or_create(&l).inc();
        }
    }
}
