//! A test workload: TCP echo (8080), whoami (8081: writes the peer address it saw, then closes), a sink
//! (8082: reads to EOF, answers "<bytes> <sha256>"), HTTP (8090: HTTP/1.1 and HTTP/2 prior knowledge) and gRPC
//! health (8091).
//!
//! HTTP answers name the pod (`x-pod`, `x-version` from `POD_NAME`/`POD_VERSION`) and echo what arrived
//! (`x-seen-path`, `x-seen-host`, and every request header as `seen-<name>: <value>` lines in the body).
//! `/status/<code>` answers that code, `/delay/<ms>` waits first, `/bytes/<n>` answers n bytes and nothing else, and `POST /control/fail?status=S&count=N`
//! makes the next N requests to this pod fail with S (count -1: until reset with count 0); `/control/stats`
//! answers `served=<requests answered, /control excluded>`.
//!
//! `mesh-testapp grpc-check <addr>` is a gRPC client: it calls `grpc.health.v1.Health/Check` and prints the status.

use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, AtomicU16, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("grpc-check") {
        let addr = args
            .get(2)
            .ok_or_else(|| anyhow::anyhow!("usage: grpc-check <addr>"))?;
        return grpc_check(addr).await;
    }
    mesh_core::socket::raise_fd_limit();
    let echo = TcpListener::bind("0.0.0.0:8080").await?;
    let whoami = TcpListener::bind("0.0.0.0:8081").await?;
    let sink = TcpListener::bind("0.0.0.0:8082").await?;
    let http = TcpListener::bind("0.0.0.0:8090").await?;
    tokio::spawn(serve(echo, |mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    }));
    tokio::spawn(serve(whoami, |mut s| async move {
        let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let _ = s.write_all(format!("{peer}\n").as_bytes()).await;
        let _ = s.shutdown().await;
    }));
    let app = Arc::new(HttpApp::from_env());
    tokio::spawn(serve(http, move |s| {
        let app = app.clone();
        async move {
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(s), svc)
                .await;
        }
    }));
    tokio::spawn(grpc_server());
    serve(sink, |mut s| async move {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    hash.update(&buf[..n]);
                    total += n as u64;
                }
                Err(_) => return,
            }
        }
        let line = format!("{total} {}\n", hex::encode(hash.finalize()));
        let _ = s.write_all(line.as_bytes()).await;
        let _ = s.shutdown().await;
    })
    .await;
    Ok(())
}

async fn serve<F, Fut>(l: TcpListener, f: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        if let Ok((s, _)) = l.accept().await {
            tokio::spawn(f(s));
        }
    }
}

struct HttpApp {
    pod: String,
    version: String,
    fail_status: AtomicU16,
    fail_count: AtomicI64,
    /// Requests answered, `/control/*` excluded.
    served: AtomicI64,
}

impl HttpApp {
    fn from_env() -> Self {
        Self {
            pod: std::env::var("POD_NAME").unwrap_or_else(|_| "unknown".into()),
            version: std::env::var("POD_VERSION").unwrap_or_default(),
            fail_status: AtomicU16::new(503),
            fail_count: AtomicI64::new(0),
            served: AtomicI64::new(0),
        }
    }

    fn failing(&self) -> Option<u16> {
        let n = self.fail_count.load(Ordering::Acquire);
        if n < 0 {
            return Some(self.fail_status.load(Ordering::Acquire));
        }
        if n > 0 && self.fail_count.fetch_sub(1, Ordering::AcqRel) > 0 {
            return Some(self.fail_status.load(Ordering::Acquire));
        }
        None
    }

    async fn handle(&self, mut req: http::Request<Incoming>) -> http::Response<Full<Bytes>> {
        if req.uri().path() == "/upgrade" {
            return upgrade_to_echo(&mut req);
        }
        // A fixed-size body and nothing else, so a benchmark measures the path rather than this app.
        if let Some(n) = req.uri().path().strip_prefix("/bytes/") {
            let n = n.parse::<usize>().unwrap_or(0).min(1 << 20);
            return http::Response::new(Full::new(Bytes::from(vec![b'x'; n])));
        }
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let host = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                req.headers()
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let version = req.version();
        let mut body = format!("pod={}\nversion={}\npath={path}\n", self.pod, self.version);
        for (k, v) in req.headers() {
            body.push_str(&format!("seen-{k}: {}\n", v.to_str().unwrap_or("?")));
        }
        let query = |k: &str| {
            path.split_once('?').and_then(|(_, q)| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=")).map(str::to_string))
            })
        };
        let mut status = 200u16;
        if path.starts_with("/control/stats") {
            body = format!("served={}\n", self.served.load(Ordering::Acquire));
        } else if path.starts_with("/control/fail") {
            self.fail_status.store(
                query("status").and_then(|s| s.parse().ok()).unwrap_or(503),
                Ordering::Release,
            );
            self.fail_count.store(
                query("count").and_then(|s| s.parse().ok()).unwrap_or(0),
                Ordering::Release,
            );
        } else if let Some(s) = {
            self.served.fetch_add(1, Ordering::AcqRel);
            self.failing()
        } {
            status = s;
        } else if let Some(code) = path.strip_prefix("/status/") {
            status = code
                .split('?')
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(400);
        } else if let Some(ms) = path.strip_prefix("/delay/") {
            let ms: u64 = ms
                .split('?')
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        // Read the request body so keep-alive connections stay usable.
        let _ = req.into_body().collect().await;
        http::Response::builder()
            .status(status)
            .header("x-pod", &self.pod)
            .header("x-version", &self.version)
            .header("x-seen-path", &path)
            .header("x-seen-host", &host)
            .header("x-seen-version", format!("{:?}", version))
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    }
}

/// `GET /upgrade` with `Upgrade: <anything>`: 101, then the connection echoes bytes (a WebSocket stand-in).
fn upgrade_to_echo(req: &mut http::Request<Incoming>) -> http::Response<Full<Bytes>> {
    let Some(proto) = req.headers().get("upgrade").cloned() else {
        return http::Response::builder()
            .status(426)
            .body(Full::new(Bytes::from_static(b"upgrade required\n")))
            .expect("valid response");
    };
    let on = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let mut io = TokioIo::new(up);
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    });
    http::Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", proto)
        .body(Full::new(Bytes::new()))
        .expect("valid response")
}

async fn grpc_server() {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let addr = "0.0.0.0:8091".parse().expect("static address");
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(service)
        .serve(addr)
        .await
    {
        eprintln!("gRPC server failed: {e}");
    }
}

async fn grpc_check(addr: &str) -> anyhow::Result<()> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10))
        .connect()
        .await?;
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    println!("{:?}", resp.into_inner().status());
    Ok(())
}
