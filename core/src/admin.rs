//! A small HTTP/1 server for the admin, readiness and metrics ports.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::drain::DrainWatch;

/// A port that could not be opened: which one, and the setting that chose it (so the user knows what to change).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for the {what} port: {source} (stop what holds it, or move the port with {setting})")]
pub struct ListenError {
    pub what: &'static str,
    pub setting: &'static str,
    pub addr: String,
    pub source: std::io::Error,
}

/// A port to serve: its name, the setting that chose its address (`key, env VAR`), the address, the handler.
pub type Port = (&'static str, &'static str, std::net::SocketAddr, Handler);

pub async fn bind(
    what: &'static str,
    setting: &'static str,
    addr: std::net::SocketAddr,
) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr).await.map_err(|source| ListenError {
        what,
        setting,
        addr: addr.to_string(),
        source,
    })
}

/// Opens every port, failing on the first that cannot be bound, then serves each until the drain starts: a
/// process's admin, metrics and readiness ports.
pub async fn serve_all(
    servers: impl IntoIterator<Item = Port>,
    drain: &DrainWatch,
) -> Result<(), ListenError> {
    let mut bound = Vec::new();
    for (what, setting, addr, handler) in servers {
        bound.push((bind(what, setting, addr).await?, handler));
    }
    for (listener, handler) in bound {
        tokio::spawn(serve(listener, handler, drain.clone()));
    }
    Ok(())
}

/// What a handler returns: status, content type, body.
pub type Reply = (StatusCode, &'static str, String);
pub type Handler = Arc<dyn Fn(&http::request::Parts) -> Reply + Send + Sync>;

pub fn json(value: &impl serde::Serialize) -> Reply {
    match serde_json::to_string_pretty(value) {
        Ok(body) => (StatusCode::OK, "application/json", body),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
        ),
    }
}

pub fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    (status, "text/plain; charset=utf-8", body.into())
}

/// The paths every process serves its Prometheus metrics on: `/metrics`, and Envoy's `/stats/prometheus`, where
/// Istio's scrape configs look.
pub const METRICS_PATHS: [&str; 2] = ["/metrics", "/stats/prometheus"];

/// The metrics reply, for a handler that serves more than metrics on one port (the control plane's 15014).
pub fn metrics_reply(registry: &prometheus_client::registry::Registry) -> Reply {
    (
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        crate::metrics::encode(registry),
    )
}

/// Adds `/logging` to an admin handler: `GET` shows the log filter, `POST /logging?level=<RUST_LOG filter>` (e.g.
/// `debug`, `info,access=off`) replaces it at runtime, as Envoy's and Istio ztunnel's admin ports do.
pub fn with_logging(inner: Handler) -> Handler {
    Arc::new(move |req| {
        if req.uri.path() != "/logging" {
            return inner(req);
        }
        let level = form_urlencoded::parse(req.uri.query().unwrap_or_default().as_bytes())
            .find(|(k, _)| k == "level")
            .map(|(_, v)| v.into_owned());
        match (req.method.clone(), level) {
            (http::Method::POST, Some(level)) => match crate::process::set_log_filter(&level) {
                Ok(now) => text(StatusCode::OK, format!("log filter: {now}\n")),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            },
            (http::Method::POST, None) => text(
                StatusCode::BAD_REQUEST,
                "use POST /logging?level=debug (any RUST_LOG filter)\n",
            ),
            _ => text(
                StatusCode::OK,
                format!(
                    "log filter: {}\n",
                    crate::process::log_filter().unwrap_or_default()
                ),
            ),
        }
    })
}

/// Prometheus metrics at [`METRICS_PATHS`]: a proxy's metrics port.
pub fn metrics_handler(registry: Arc<prometheus_client::registry::Registry>) -> Handler {
    Arc::new(move |req| {
        if METRICS_PATHS.contains(&req.uri.path()) {
            metrics_reply(&registry)
        } else {
            text(StatusCode::NOT_FOUND, "try /metrics\n")
        }
    })
}

/// Kubernetes' readiness probe at `/healthz/ready` (Istio's path): 503 once draining, so endpoints drop the proxy.
pub fn readiness_handler(drain: DrainWatch) -> Handler {
    gated_readiness_handler(drain, Arc::new(|| None))
}

/// Says what a process still waits for before it is ready (`None`: nothing).
pub type Pending = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// [`readiness_handler`] that also answers 503, naming the wait, while `pending` says so.
pub fn gated_readiness_handler(drain: DrainWatch, pending: Pending) -> Handler {
    Arc::new(move |req| match req.uri.path() {
        "/healthz/ready" if drain.is_stopping() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        "/healthz/ready" => match pending() {
            Some(what) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("waiting for {what}\n"),
            ),
            None => text(StatusCode::OK, "ready\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "try /healthz/ready\n"),
    })
}

/// Serves `handler` on `listener` until the drain starts.
pub async fn serve(listener: TcpListener, handler: Handler, drain: DrainWatch) {
    let mut backoff = crate::socket::accept_backoff();
    loop {
        let (stream, _) = tokio::select! {
            _ = drain.stopping() => return,
            s = crate::socket::accept_retrying("admin", &mut backoff, || listener.accept()) => s,
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<Incoming>| {
                let (parts, _) = req.into_parts();
                let (status, ctype, body) = handler(&parts);
                let resp = Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, ctype)
                    .body(Full::new(Bytes::from(body)))
                    .expect("static response parts are valid");
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(h: &Handler, path: &str) -> StatusCode {
        let (parts, ()) = http::Request::get(path)
            .body(())
            .expect("a valid request")
            .into_parts();
        h(&parts).0
    }

    #[tokio::test]
    async fn readiness_turns_503_when_the_drain_starts() {
        let drain = crate::drain::Drain::new();
        let h = readiness_handler(drain.watch());
        assert_eq!(get(&h, "/healthz/ready"), StatusCode::OK);
        assert_eq!(get(&h, "/other"), StatusCode::NOT_FOUND);
        let watch = drain.watch();
        let draining = tokio::spawn(drain.drain(std::time::Duration::from_secs(1)));
        watch.stopping().await;
        assert_eq!(get(&h, "/healthz/ready"), StatusCode::SERVICE_UNAVAILABLE);
        draining.await.expect("drain finishes");
    }

    #[test]
    fn metrics_answer_on_both_paths() {
        let mut registry = prometheus_client::registry::Registry::default();
        crate::metrics::TcpMetrics::register(&mut registry);
        let h = metrics_handler(Arc::new(registry));
        for p in METRICS_PATHS {
            assert_eq!(get(&h, p), StatusCode::OK, "{p}");
        }
        assert_eq!(get(&h, "/stats"), StatusCode::NOT_FOUND);
    }
}
