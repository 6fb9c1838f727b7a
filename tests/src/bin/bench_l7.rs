//! `mesh-bench-l7`: HTTP requests through the waypoint (pod → ztunnel → waypoint → ztunnel → pod, with the seed's
//! 90/10 VirtualService) against ztunnel only (pod → ztunnel → ztunnel → pod), a direct connection between
//! non-mesh pods, and HAProxy (Debian) doing the same weighted 90/10 route in HTTP mode, all in the same run.
//!
//! Load is open-loop: requests are sent on a fixed schedule whatever the answers do, and each latency is
//! measured from the moment the request was due (no coordinated omission). Reports p50/p99, achieved rate, CPU
//! seconds per 1,000 requests of the proxies involved, and the waypoint's resident memory. Prints Markdown.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use mesh_core::netns::NetNs;
use mesh_tests::net::{connect_in, connect_in_async};
use mesh_tests::{poll, Cluster, Mode, PodSpec};

#[derive(Parser)]
struct Args {
    /// Request rates to run, per second.
    #[arg(long, value_delimiter = ',', default_values_t = vec![500, 2000])]
    rates: Vec<u64>,
    /// Seconds per rate and path.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bench}
spec:
  hosts: [bench-wp]
  http:
  - route:
    - {destination: {host: bench-wp, subset: v1}, weight: 90}
    - {destination: {host: bench-wp, subset: v2}, weight: 10}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bench}
spec:
  host: bench-wp
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

type Sender = http1::SendRequest<Empty<Bytes>>;

/// Runs `rate` req/s for `seconds` from `ns` to `addr`; returns sorted latencies (µs) and the error count.
async fn open_loop(ns: Arc<NetNs>, addr: SocketAddr, rate: u64, seconds: u64) -> (Vec<f64>, usize) {
    let idle: Arc<Mutex<Vec<Sender>>> = Arc::default();
    let samples: Arc<Mutex<Vec<f64>>> = Arc::default();
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let total = rate * seconds;
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        tokio::time::sleep_until(due).await;
        let (ns, idle, samples, errors) =
            (ns.clone(), idle.clone(), samples.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let ok = async {
                let reused = idle.lock().expect("idle lock").pop();
                let mut send = match reused {
                    Some(s) if !s.is_closed() => s,
                    _ => {
                        let tcp = connect_in_async(&ns, addr).await?;
                        let (s, conn) = http1::handshake(TokioIo::new(tcp)).await?;
                        tokio::spawn(conn);
                        s
                    }
                };
                send.ready().await?;
                let req = http::Request::get("/")
                    .header("host", addr.to_string())
                    .body(Empty::<Bytes>::new())?;
                let resp = send.send_request(req).await?;
                let status = resp.status();
                resp.into_body().collect().await?;
                idle.lock().expect("idle lock").push(send);
                anyhow::ensure!(status == 200, "HTTP {status}");
                Ok::<_, anyhow::Error>(())
            }
            .await;
            match ok {
                Ok(()) => samples
                    .lock()
                    .expect("samples lock")
                    .push(due.elapsed().as_secs_f64() * 1e6),
                Err(_) => {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut s = std::mem::take(&mut *samples.lock().expect("samples lock"));
    s.sort_by(f64::total_cmp);
    (s, errors.load(std::sync::atomic::Ordering::Relaxed))
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .context("stat")?
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    Ok(kib / 1024.0)
}

struct Path {
    name: &'static str,
    client: &'static str,
    addr: SocketAddr,
    /// Processes whose CPU the path costs.
    pids: Vec<u32>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(reason) = mesh_tests::skip_reason() {
        bail!("cannot benchmark here: {reason}");
    }
    mesh_core::socket::raise_fd_limit();
    let pod = |name: &str, node, version: &str| {
        PodSpec::mesh(name, node).with_labels(&[("app", "bench"), ("version", version)])
    };
    let mut c = Cluster::start_with(
        2,
        vec![
            PodSpec::mesh("client", 0),
            pod("srv-v1", 1, "v1"),
            pod("srv-v2", 1, "v2"),
            PodSpec::plain("direct-client", 0),
            PodSpec::plain("direct-v1", 1),
            PodSpec::plain("direct-v2", 1),
            PodSpec::plain("haproxy", 1),
            PodSpec::waypoint("waypoint", 1),
        ],
        Mode::ControlPlane,
    )?;
    c.start_waypoint("waypoint")?;
    let svc = |name: &str, vip: &str, waypoint: bool| {
        let labels = if waypoint {
            serde_json::json!({"istio.io/use-waypoint": "waypoint"})
        } else {
            serde_json::json!({})
        };
        serde_json::json!({"name": name, "namespace": "default", "vip": vip, "labels": labels,
            "ports": [{"port": 80, "targetPort": 8090}], "selector": {"app": "bench"}})
    };
    c.add_service_spec(svc("bench-wp", "198.18.255.40", true))?;
    c.add_service_spec(svc("bench-l4", "198.18.255.41", false))?;
    c.apply("bench.yaml", VS)?;
    c.wait_l7(
        "waypoint",
        "default/bench-wp.default.svc.cluster.local",
        |s| s["routes"].as_array().is_some_and(|r| !r.is_empty()),
    )?;
    let haproxy = start_haproxy(&c)?;
    let ztunnels: Vec<u32> = (0..2).filter_map(|i| c.ztunnel_pid(i)).collect();
    let waypoint = c.child_pid("waypoint").context("waypoint pid")?;
    let at = |pod: &str, port| SocketAddr::new(c.pod(pod).ip, port);
    let paths = [
        Path {
            name: "direct (no mesh)",
            client: "direct-client",
            addr: at("direct-v1", 8090),
            pids: vec![],
        },
        Path {
            name: "HAProxy, weighted 90/10 (HTTP mode)",
            client: "direct-client",
            addr: at("haproxy", 18080),
            pids: vec![haproxy.id()],
        },
        Path {
            name: "ztunnel only (L4)",
            client: "client",
            addr: "198.18.255.41:80".parse()?,
            pids: ztunnels.clone(),
        },
        Path {
            name: "ztunnel → waypoint (90/10) → ztunnel",
            client: "client",
            addr: "198.18.255.40:80".parse()?,
            pids: ztunnels.iter().copied().chain([waypoint]).collect(),
        },
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!("| path | rate (req/s) | achieved | p50 | p99 | errors | proxy CPU s / 1k req |");
    println!("|---|---|---|---|---|---|---|");
    let mut p50s = std::collections::BTreeMap::new();
    for rate in &args.rates {
        for p in &paths {
            let ns = Arc::new(NetNs::named(&c.pod(p.client).netns)?);
            // Warm the path (connections, certificates) before measuring.
            rt.block_on(open_loop(ns.clone(), p.addr, 100, 1));
            let cpu0: f64 = p
                .pids
                .iter()
                .map(|pid| cpu_seconds(*pid).unwrap_or(0.0))
                .sum();
            let t = Instant::now();
            let (lat, errors) = rt.block_on(open_loop(ns, p.addr, *rate, args.seconds));
            let wall = t.elapsed().as_secs_f64();
            let cpu: f64 = p
                .pids
                .iter()
                .map(|pid| cpu_seconds(*pid).unwrap_or(0.0))
                .sum::<f64>()
                - cpu0;
            if lat.is_empty() {
                bail!("{}: every request failed ({errors})", p.name);
            }
            let n = lat.len();
            let (p50, p99) = (lat[n / 2], lat[(n * 99 / 100).min(n - 1)]);
            p50s.insert((rate, p.name), p50);
            println!(
                "| {} | {rate} | {:.0} | {:.0} µs | {:.0} µs | {errors} | {} |",
                p.name,
                lat.len() as f64 / wall,
                p50,
                p99,
                if p.pids.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.3}", cpu / (lat.len() as f64 / 1000.0))
                }
            );
        }
    }
    println!(
        "\nwaypoint resident memory after the runs: {:.1} MiB",
        rss_mib(waypoint)?
    );
    for rate in &args.rates {
        let get = |n: &str| {
            p50s.iter()
                .find(|((r, name), _)| *r == rate && *name == n)
                .map(|(_, v)| *v)
                .unwrap_or(f64::NAN)
        };
        let wp = get(paths[3].name);
        println!(
            "at {rate} req/s, waypoint path p50 / direct: {:.2}, / ztunnel only: {:.2}, / HAProxy: {:.2}",
            wp / get(paths[0].name),
            wp / get(paths[2].name),
            wp / get(paths[1].name)
        );
    }
    let mut haproxy = haproxy;
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    Ok(())
}

/// HAProxy in its own pod, HTTP mode, weighted 90/10 over the two direct servers: the same L7 decision.
fn start_haproxy(c: &Cluster) -> Result<std::process::Child> {
    let (v1, v2) = (c.pod("direct-v1").ip, c.pod("direct-v2").ip);
    let cfg = format!(
        "global\n  maxconn 8000\n  nbthread 2\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend fe\n  bind :18080\n  default_backend be\nbackend be\n  balance random\n  http-reuse always\n  server v1 {v1}:8090 weight 90\n  server v2 {v2}:8090 weight 10\n"
    );
    let path = c.dir.join("haproxy-l7.cfg");
    std::fs::write(&path, cfg)?;
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.pod("haproxy").netns,
            "haproxy",
            "-db",
            "-f",
        ])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting haproxy")?;
    let ns = c.pod("haproxy").netns.clone();
    poll("haproxy to listen", Duration::from_secs(5), || {
        connect_in(&ns, "127.0.0.1:18080".parse().ok()?, Duration::from_secs(1)).ok()
    })?;
    Ok(child)
}
