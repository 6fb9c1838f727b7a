//! An HTTP/1.1 client inside a pod's namespace (its connections are captured like the app's would be), with
//! keep-alive connections and a concurrent load mode that reports every reply.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use mesh_core::netns::NetNs;

use crate::net::connect_in_async;

/// One answer, as the client saw it.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
    pub elapsed: Duration,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A request to send: method, path, extra headers.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: http::Method,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Req {
    pub fn get(path: &str) -> Self {
        Self {
            method: http::Method::GET,
            path: path.into(),
            headers: Vec::new(),
        }
    }

    pub fn post(path: &str) -> Self {
        Self {
            method: http::Method::POST,
            ..Self::get(path)
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(ns: &NetNs, addr: SocketAddr) -> Result<Sender> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), connect_in_async(ns, addr))
        .await
        .context("connect timed out")??;
    let (send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn send(send: &mut Sender, addr: SocketAddr, r: &Req) -> Result<Reply> {
    let mut b = http::Request::builder()
        .method(r.method.clone())
        .uri(&r.path);
    if !r
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("host"))
    {
        b = b.header("host", addr.to_string());
    }
    for (k, v) in &r.headers {
        b = b.header(k, v);
    }
    let started = Instant::now();
    send.ready().await?;
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        send.send_request(b.body(Full::new(Bytes::new()))?),
    )
    .await
    .context("response timed out")??;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        elapsed: started.elapsed(),
    })
}

/// Sends `n` requests (`make(i)`) over `concurrency` keep-alive connections from inside `netns`; a failed
/// request is reported as an error and its connection replaced.
pub fn load(
    netns: &str,
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    make: impl Fn(usize) -> Req + Send + Sync + 'static,
) -> Result<Vec<Result<Reply>>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ns = std::sync::Arc::new(NetNs::named(netns)?);
    let make = std::sync::Arc::new(make);
    rt.block_on(async move {
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..concurrency.max(1) {
            let (ns, make, next) = (ns.clone(), make.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                let mut conn: Option<Sender> = None;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return out;
                    }
                    let req = make(i);
                    let result = async {
                        if conn.as_ref().is_none_or(|c| c.is_closed()) {
                            conn = Some(connect(&ns, addr).await?);
                        }
                        let c = conn.as_mut().context("connection")?;
                        send(c, addr, &req).await
                    }
                    .await;
                    if result.is_err() {
                        conn = None;
                    }
                    out.push(result);
                }
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await?);
        }
        Ok(all)
    })
}

/// One request on its own connection.
pub fn request(netns: &str, addr: SocketAddr, req: Req) -> Result<Reply> {
    load(netns, addr, 1, 1, move |_| req.clone())?
        .pop()
        .context("one reply")?
}
