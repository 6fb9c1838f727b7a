//! The waypoint's whole request path without root: HBONE in on loopback, the routing pipeline, retries and
//! circuit breakers, and plain HTTP out to upstream apps on 127.0.0.2 and 127.0.0.3 (workloads outside the mesh,
//! so no second HBONE hop). The netns suite covers the same path across real pods; this runs anywhere.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_core::ca::CertificateAuthority;
use mesh_core::certs::{CertManager, Issuer};
use mesh_core::drain::Drain;
use mesh_core::hbone::{ConnectRequest, Pool, PoolKey};
use mesh_core::metrics::HboneMetrics;
use mesh_core::tls::WorkloadCert;
use mesh_core::workload::state::{LocalState, Snapshot, StateStore};
use mesh_primitives::identity::Identity;
use mesh_proto::mesh::l7::v1 as pb;
use prometheus_client::registry::Registry;
use waypoint::cluster::Clusters;
use waypoint::config::Config;
use waypoint::routes::{compile, L7Config};
use waypoint::xds::{L7Snapshot, L7Store};
use waypoint::Ctx;

const SERVICE: &str = "default/order-service.default.svc.cluster.local";
const VIP: &str = "198.18.255.11:80";

/// An upstream app: answers with its version, fails the next `fail` requests with 503 (-1: all), waits `delay_ms`
/// before answering, and counts connections, requests (and those in flight) and the body sizes it received.
#[derive(Default)]
struct App {
    version: &'static str,
    fail: AtomicI64,
    served: AtomicU64,
    conns: AtomicU64,
    in_flight: AtomicU64,
    delay_ms: AtomicU64,
    bodies: std::sync::Mutex<Vec<usize>>,
    /// The `traceparent` of each request (empty when none came).
    traceparents: std::sync::Mutex<Vec<String>>,
}

impl App {
    fn served(&self) -> u64 {
        self.served.load(Ordering::Acquire)
    }

    fn bodies(&self) -> Vec<usize> {
        self.bodies.lock().unwrap().clone()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let tp = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok());
        self.traceparents
            .lock()
            .unwrap()
            .push(tp.unwrap_or_default().to_string());
        let len = req
            .into_body()
            .collect()
            .await
            .map_or(0, |b| b.to_bytes().len());
        self.bodies.lock().unwrap().push(len);
        let delay = self.delay_ms.load(Ordering::Acquire);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let resp = self.respond();
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        resp
    }

    fn respond(&self) -> Response<Full<Bytes>> {
        self.served.fetch_add(1, Ordering::AcqRel);
        let failing = match self.fail.load(Ordering::Acquire) {
            -1 => true,
            n if n > 0 => self.fail.fetch_sub(1, Ordering::AcqRel) > 0,
            _ => false,
        };
        let status = if failing {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        Response::builder()
            .status(status)
            .header("x-version", self.version)
            .body(Full::new(Bytes::from(self.version)))
            .expect("static response")
    }
}

async fn app(ip: &str, version: &'static str) -> Arc<App> {
    let listener = tokio::net::TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 8080))
        .await
        .expect("loopback address free");
    let app = Arc::new(App {
        version,
        ..App::default()
    });
    let a = app.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            a.conns.fetch_add(1, Ordering::AcqRel);
            let a = a.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let a = a.clone();
                    async move { Ok::<_, std::convert::Infallible>(a.handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    app
}

/// Each test's two apps on loopback addresses of their own (`127.0.0.<n>` and `<n + 1>`), so tests run in
/// parallel.
fn state_file(n: u8) -> String {
    format!(
        "
workloads:
- {{name: order-v1, namespace: default, ip: 127.0.0.{n}, node: n1, protocol: NONE, labels: {{app: order, version: v1}}}}
- {{name: order-v2, namespace: default, ip: 127.0.0.{}, node: n1, protocol: NONE, labels: {{app: order, version: v2}}}}
services:
- {{name: order-service, namespace: default, vip: 198.18.255.11, hostname: order-service.default.svc.cluster.local,
   ports: [{{port: 80, targetPort: 8080}}], selector: {{app: order}}}}
",
        n + 1
    )
}

fn dest(subset: &str, weight: u32) -> pb::WeightedDestination {
    pb::WeightedDestination {
        destination: Some(pb::Destination {
            service: SERVICE.into(),
            subset: subset.into(),
            port: 0,
        }),
        weight,
        ..Default::default()
    }
}

fn subset(name: &str, ip: [u8; 4]) -> pb::Subset {
    pb::Subset {
        name: name.into(),
        addresses: vec![ip.to_vec()],
        ..Default::default()
    }
}

/// The seed's routing as the control plane sends it, plus a route with retries.
fn seed(n: u8) -> pb::L7Service {
    let canary = pb::RouteMatch {
        headers: vec![pb::HeaderMatch {
            name: "x-canary".into(),
            value: Some(pb::StringMatch {
                kind: Some(pb::string_match::Kind::Exact("true".into())),
            }),
            invert: false,
        }],
        ..Default::default()
    };
    let retried = pb::RouteMatch {
        uri: Some(pb::StringMatch {
            kind: Some(pb::string_match::Kind::Prefix("/retried".into())),
        }),
        ..Default::default()
    };
    pb::L7Service {
        namespace: "default".into(),
        hostname: "order-service.default.svc.cluster.local".into(),
        routes: vec![
            pb::HttpRoute {
                name: "canary".into(),
                matches: vec![canary],
                destinations: vec![dest("v2", 100)],
                ..Default::default()
            },
            pb::HttpRoute {
                name: "retried".into(),
                matches: vec![retried],
                destinations: vec![dest("", 100)],
                retry: Some(pb::Retry {
                    attempts: 3,
                    retry_on: vec!["5xx".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
            pb::HttpRoute {
                name: "split".into(),
                destinations: vec![dest("v1", 90), dest("v2", 10)],
                ..Default::default()
            },
        ],
        subsets: vec![
            subset("v1", [127, 0, 0, n]),
            subset("v2", [127, 0, 0, n + 1]),
        ],
        ..Default::default()
    }
}

struct Harness {
    addr: SocketAddr,
    waypoint: Identity,
    client: WorkloadCert,
    client_id: Identity,
    pool: Pool,
    _drain: Drain,
}

async fn waypoint(n: u8) -> Harness {
    waypoint_with(n, Config::default(), seed(n)).await
}

async fn waypoint_with(n: u8, cfg: Config, service: pb::L7Service) -> Harness {
    let cfg = Config {
        name: "waypoint".into(),
        namespace: "default".into(),
        service_account: "waypoint".into(),
        ..cfg
    };
    let ca = CertificateAuthority::generate(&cfg.trust_domain).unwrap();
    let client_id = Identity::new(&cfg.trust_domain, "default", "client");
    let client = ca.issue(&client_id, Duration::from_secs(600)).unwrap();
    let state = StateStore::default();
    state.store(
        Snapshot::build(mesh_primitives::yaml::from_str::<LocalState>(&state_file(n)).unwrap())
            .unwrap(),
    );
    let l7 = L7Store::default();
    l7.store(Arc::new(L7Snapshot {
        config: L7Config {
            services: BTreeMap::from([(SERVICE.to_string(), Arc::new(compile(&service).unwrap()))])
                .into_iter()
                .collect(),
        },
        generation: 1,
    }));
    let mut registry = Registry::default();
    let drain = Drain::new();
    let ctx = Arc::new(Ctx {
        identity: cfg.identity(),
        state,
        l7,
        certs: CertManager::new(Issuer::Dev(Box::new(ca)), cfg.certificate_ttl),
        pool: pool(),
        clusters: Clusters::default(),
        metrics: waypoint::metrics::Metrics::register(&mut registry),
        drain: drain.watch(),
        tracer: cfg
            .tracing
            .as_ref()
            .map(|t| waypoint::trace::Tracer::start(t, "waypoint.default".into()).unwrap()),
        cfg: Arc::new(cfg),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let waypoint = ctx.identity.clone();
    tokio::spawn(waypoint::proxy::serve(ctx, listener));
    Harness {
        addr,
        waypoint,
        client,
        client_id,
        pool: pool(),
        _drain: drain,
    }
}

fn pool() -> Pool {
    Pool::new(
        Default::default(),
        Default::default(),
        Arc::new(|_addr| tokio::net::TcpSocket::new_v4()),
        HboneMetrics::default(),
    )
}

impl Harness {
    /// One HTTP/1.1 GET to the service VIP, tunnelled to the waypoint as the client pod.
    async fn get(&self, path: &str, canary: bool) -> (StatusCode, String) {
        let headers: &[(&str, &str)] = if canary { &[("x-canary", "true")] } else { &[] };
        self.send(http::Method::GET, path, Bytes::new(), headers)
            .await
    }

    async fn post(&self, path: &str, body: Bytes) -> (StatusCode, String) {
        self.send(http::Method::POST, path, body, &[]).await
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> (StatusCode, String) {
        let key = PoolKey {
            src: self.client_id.clone(),
            dst: self.waypoint.clone(),
            dst_addr: self.addr,
        };
        let req = ConnectRequest {
            authority: VIP.parse().unwrap(),
            forwarded_for: "127.0.0.1:40000".parse().unwrap(),
            baggage: None,
            traceparent: None,
        };
        let stream = self
            .pool
            .connect(key, &self.client, req)
            .await
            .expect("tunnel");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 over the tunnel");
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "order-service");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = send
            .send_request(req.body(Full::new(body)).unwrap())
            .await
            .expect("a response");
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

async fn apps(n: u8) -> (Arc<App>, Arc<App>) {
    (
        app(&format!("127.0.0.{n}"), "v1").await,
        app(&format!("127.0.0.{}", n + 1), "v2").await,
    )
}

#[tokio::test]
async fn seed_routing_splits_90_10_and_sends_canaries_to_v2() {
    let (v1, v2) = apps(2).await;
    let h = waypoint(2).await;
    for _ in 0..50 {
        assert_eq!(h.get("/", true).await, (StatusCode::OK, "v2".into()));
    }
    assert_eq!(v1.served(), 0, "every x-canary request went to v2");
    let before = v2.served();
    let mut v2_share = 0;
    for _ in 0..1000 {
        let (status, body) = h.get("/", false).await;
        assert_eq!(status, StatusCode::OK);
        v2_share += usize::from(body == "v2");
    }
    assert_eq!(v1.served() + v2.served() - before, 1000);
    // Binomial(1000, 0.1): sd 9.5; 60..=140 is four sd each way.
    assert!((60..=140).contains(&v2_share), "v2 took {v2_share} of 1000");
}

#[tokio::test]
async fn retries_stop_at_the_routes_limit() {
    let (v1, v2) = apps(4).await;
    let h = waypoint(4).await;
    // Three failures in all: the fourth attempt succeeds, wherever the balancer sends each.
    v1.fail.store(2, Ordering::Release);
    v2.fail.store(1, Ordering::Release);
    let (status, _) = h.get("/retried", false).await;
    assert_eq!(status, StatusCode::OK);
    assert!((3..=4).contains(&(v1.served() + v2.served())));
    // Everything failing: exactly 1 + 3 attempts, then the last 503.
    v1.fail.store(-1, Ordering::Release);
    v2.fail.store(-1, Ordering::Release);
    let before = v1.served() + v2.served();
    let (status, _) = h.get("/retried", false).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        v1.served() + v2.served() - before,
        4,
        "3 retries, no more, no fewer"
    );
    // A route without retries makes exactly one attempt.
    let before = v1.served() + v2.served();
    let (status, _) = h.get("/", false).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v1.served() + v2.served() - before, 1);
}

#[tokio::test]
async fn a_dead_upstream_is_a_local_reply_with_envoys_text() {
    // No apps listening: the dial fails, and the waypoint answers 503 itself (Envoy's UF text).
    let h = waypoint(6).await;
    let (status, body) = h.get("/", false).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.starts_with("upstream connect error or disconnect/reset before headers. reset reason: connection failure"),
        "{body}"
    );
}

/// A route to one subset (and a mirror of it to the other), with retries, for the body and pool tests.
fn routed(n: u8, retry: bool, mirror: bool, pool: pb::ConnectionPool) -> pb::L7Service {
    let mut svc = seed(n);
    svc.routes = vec![pb::HttpRoute {
        name: "v1".into(),
        destinations: vec![dest("v1", 100)],
        retry: retry.then(|| pb::Retry {
            attempts: 3,
            retry_on: vec!["5xx".into()],
            ..Default::default()
        }),
        mirrors: if mirror {
            vec![pb::Mirror {
                destination: dest("v2", 100).destination,
                percent: 100.0,
            }]
        } else {
            Vec::new()
        },
        ..Default::default()
    }];
    let policy = pb::TrafficPolicy {
        connection_pool: Some(pool),
        ..Default::default()
    };
    // As the control plane sends it: each subset's policy already merged over the host's.
    for subset in &mut svc.subsets {
        subset.policy = Some(policy.clone());
    }
    svc.policy = Some(policy);
    svc
}

/// Polls `check` for up to 5 s.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn bodies_up_to_max_buffered_body_bytes_are_retried_and_mirrored_whole() {
    let (v1, v2) = apps(8).await;
    let cfg = Config {
        max_buffered_body_bytes: 1024,
        ..Config::default()
    };
    let h = waypoint_with(8, cfg, routed(8, true, false, Default::default())).await;
    v1.fail.store(-1, Ordering::Release);
    // A small body is buffered: every one of the 1 + 3 attempts carries all of it.
    let (status, _) = h.post("/", Bytes::from(vec![b'x'; 100])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v1.bodies(), vec![100; 4]);
    // Over the limit the body is streamed once, so the request is not retried.
    let (status, _) = h.post("/", Bytes::from(vec![b'x'; 4096])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v1.bodies(), [vec![100; 4], vec![4096]].concat());
    assert_eq!(v2.served(), 0);

    let (v1, v2) = apps(10).await;
    let h = waypoint_with(
        10,
        Config::default(),
        routed(10, false, true, Default::default()),
    )
    .await;
    let (status, body) = h.post("/", Bytes::from(vec![b'y'; 300])).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "v1"));
    assert_eq!(v1.bodies(), vec![300]);
    eventually("the mirror gets a whole copy", || v2.bodies() == vec![300]).await;
}

#[tokio::test]
async fn max_requests_per_connection_and_http2_max_requests_in_action() {
    let (v1, _v2) = apps(12).await;
    let one_per_conn = pb::ConnectionPool {
        max_requests_per_connection: 1,
        http2_max_requests: 1,
        ..Default::default()
    };
    let h = waypoint_with(
        12,
        Config::default(),
        routed(12, false, false, one_per_conn),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(h.get("/", false).await.0, StatusCode::OK);
    }
    assert_eq!(
        v1.conns.load(Ordering::Acquire),
        5,
        "a new connection per request"
    );
    // One request in flight fills `http2MaxRequests: 1`: the next overflows at once (503 UO), without waiting.
    v1.delay_ms.store(1000, Ordering::Release);
    let h = Arc::new(h);
    let slow = tokio::spawn({
        let h = h.clone();
        async move { h.get("/", false).await }
    });
    eventually("the first request reaches the app", || {
        v1.in_flight.load(Ordering::Acquire) == 1
    })
    .await;
    let started = tokio::time::Instant::now();
    let (status, body) = h.get("/", false).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.ends_with("reset reason: overflow"), "{body}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "overflow answers at once"
    );
    assert_eq!(slow.await.unwrap().0, StatusCode::OK);
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_host_and_returns_it() {
    let (v1, v2) = apps(14).await;
    let mut svc = seed(14);
    // One route over both versions (no subset), so the balancer chooses between the two hosts.
    svc.routes = vec![pb::HttpRoute {
        name: "all".into(),
        destinations: vec![dest("", 100)],
        ..Default::default()
    }];
    svc.policy = Some(pb::TrafficPolicy {
        outlier_detection: Some(pb::OutlierDetection {
            consecutive_5xx_errors: 2,
            interval_ms: 100,
            base_ejection_time_ms: 300,
            max_ejection_percent: 100,
            ..Default::default()
        }),
        ..Default::default()
    });
    let h = waypoint_with(14, Config::default(), svc).await;
    v1.fail.store(-1, Ordering::Release);
    // Round robin: v1 fails twice in the first four requests, then it is ejected.
    let mut failures = 0;
    for _ in 0..4 {
        failures += usize::from(h.get("/", false).await.0 == StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(failures, 2, "v1 answered 503 twice before ejection");
    let v1_before = v1.served();
    for _ in 0..20 {
        assert_eq!(h.get("/", false).await, (StatusCode::OK, "v2".into()));
    }
    assert_eq!(v1.served(), v1_before, "an ejected host gets no requests");
    // Healthy again and past its ejection time: v1 is back in rotation.
    v1.fail.store(0, Ordering::Release);
    let served = v1.served();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while v1.served() == served {
        assert!(tokio::time::Instant::now() < deadline, "v1 never returned");
        assert_eq!(h.get("/", false).await.0, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(v2.served() > 20);
}

#[tokio::test]
async fn idle_timeout_retires_pooled_upstream_connections() {
    let (v1, _v2) = apps(16).await;
    let idle = pb::ConnectionPool {
        idle_timeout_ms: 200,
        ..Default::default()
    };
    let h = waypoint_with(16, Config::default(), routed(16, false, false, idle)).await;
    let (v1b, _v2b) = apps(18).await;
    let kept = waypoint_with(
        18,
        Config::default(),
        routed(18, false, false, Default::default()),
    )
    .await;
    for h in [&h, &kept] {
        assert_eq!(h.get("/", false).await.0, StatusCode::OK);
        // Longer than the idle timeout, with the first connection back in the pool.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(h.get("/", false).await.0, StatusCode::OK);
    }
    assert_eq!(
        v1.conns.load(Ordering::Acquire),
        2,
        "idle past idleTimeout: a new connection"
    );
    assert_eq!(
        v1b.conns.load(Ordering::Acquire),
        1,
        "without idleTimeout the connection is reused"
    );
}

/// An OTLP/gRPC collector: every span exported to it, decoded from the real protobufs.
struct Collector(tokio::sync::mpsc::UnboundedSender<opentelemetry_proto::tonic::trace::v1::Span>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Collector
{
    async fn export(
        &self,
        req: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                ss.spans.into_iter().for_each(|s| drop(self.0.send(s)));
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

async fn next_span(
    spans: &mut tokio::sync::mpsc::UnboundedReceiver<opentelemetry_proto::tonic::trace::v1::Span>,
) -> opentelemetry_proto::tonic::trace::v1::Span {
    tokio::time::timeout(Duration::from_secs(10), spans.recv())
        .await
        .expect("a span within 10 s")
        .expect("collector running")
}

#[tokio::test]
async fn traces_continue_through_the_waypoint_and_reach_the_collector() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
    let (tx, mut spans) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let (v1, v2) = apps(40).await;
    let cfg = Config {
        tracing: Some(waypoint::trace::TracingConfig {
            address: format!("http://{collector}"),
            sampling_percentage: 100.0,
        }),
        ..Config::default()
    };
    let h = waypoint_with(40, cfg, seed(40)).await;
    let attr = |s: &opentelemetry_proto::tonic::trace::v1::Span, key: &str| -> String {
        s.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref()?.value.clone())
            .map(|v| match v {
                opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s) => s,
                other => format!("{other:?}"),
            })
            .unwrap_or_default()
    };
    let last_seen = || {
        let all: Vec<String> = [&v1, &v2]
            .iter()
            .flat_map(|a| a.traceparents.lock().unwrap().clone())
            .collect();
        all
    };

    // A W3C context is continued: the span's parent is the caller's, and the app's parent is the waypoint's span.
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, _) = h
        .send(
            http::Method::GET,
            "/",
            Bytes::new(),
            &[("traceparent", caller)],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let span = next_span(&mut spans).await;
    assert_eq!(
        hex::encode(&span.trace_id),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(hex::encode(&span.parent_span_id), "00f067aa0ba902b7");
    let sent = format!(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
        hex::encode(&span.span_id)
    );
    assert!(
        last_seen().contains(&sent),
        "the app saw {:?}, not {sent}",
        last_seen()
    );
    assert_eq!(attr(&span, "istio.route"), "split");
    assert!(
        attr(&span, "upstream_cluster").starts_with("outbound|80|v"),
        "{span:?}"
    );
    assert!(
        attr(&span, "upstream_host").starts_with("127.0.0.4"),
        "{span:?}"
    );
    assert_eq!(attr(&span, "http.status_code"), "200");
    assert_eq!(attr(&span, "response_flags"), "-");

    // No context: the waypoint starts a trace, and its span is the root the app's context points at.
    h.get("/", true).await;
    let span = next_span(&mut spans).await;
    assert!(span.parent_span_id.is_empty(), "a root span");
    let sent = format!(
        "00-{}-{}-01",
        hex::encode(&span.trace_id),
        hex::encode(&span.span_id)
    );
    assert!(last_seen().contains(&sent), "{:?}", last_seen());
    assert_eq!(attr(&span, "istio.route"), "canary");

    // B3 in: the same trace continues (its 64-bit id widened), in W3C upstream too.
    let b3 = [
        ("x-b3-traceid", "a3ce929d0e0e4736"),
        ("x-b3-spanid", "00f067aa0ba902b7"),
        ("x-b3-sampled", "1"),
    ];
    h.send(http::Method::GET, "/", Bytes::new(), &b3).await;
    let span = next_span(&mut spans).await;
    assert_eq!(
        hex::encode(&span.trace_id),
        "0000000000000000a3ce929d0e0e4736"
    );
    assert_eq!(hex::encode(&span.parent_span_id), "00f067aa0ba902b7");

    // Retries are on the span; an unsampled context exports nothing.
    v1.fail.store(1, Ordering::Release);
    v2.fail.store(1, Ordering::Release);
    assert_eq!(h.get("/retried", false).await.0, StatusCode::OK);
    let span = next_span(&mut spans).await;
    assert_ne!(attr(&span, "retries"), "0", "{span:?}");
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    h.send(
        http::Method::GET,
        "/",
        Bytes::new(),
        &[("traceparent", unsampled)],
    )
    .await;
    h.get("/", true).await;
    let span = next_span(&mut spans).await;
    assert_eq!(
        attr(&span, "istio.route"),
        "canary",
        "the unsampled request was not exported"
    );
}
