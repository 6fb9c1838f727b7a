//! `mesh-bench-l4`: the L4 data plane side by side, in one run, on the same nodes and links:
//! - **direct**: two pods outside the mesh, plain TCP;
//! - **HAProxy**: a pair of Debian HAProxy instances doing what two ztunnels do (TCP over mutual TLS between the
//!   nodes, certificates from the same CA);
//! - **ours**: two enrolled pods, both ztunnels in the path (HBONE);
//! - **Istio**: when `ISTIO_ZTUNNEL` names a binary, Istio's own ztunnel in dedicated mode in two more pods.
//!
//! Measured: iperf3 throughput for 1..N parallel connections with the proxies' CPU time (Gbit per proxy
//! CPU-second, cores the busiest proxy used); sequential connect + 1-byte echo latency; HTTP latency at fixed
//! rates from `oha` (open loop, latency-corrected) with CPU-seconds per 1k requests per proxy; RSS idle, peak
//! under load, and per idle tunnelled connection. Prints Markdown tables. `--smoke` is a seconds-long run that
//! only checks every path carries traffic (CI).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mesh_tests::bench::{self, Children, CpuMeter, IstioPair, Latency};
use mesh_tests::net::{connect_in, exchange};
use mesh_tests::{poll, Cluster, PodSpec};

#[derive(Parser)]
struct Args {
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Parallel iperf3 connections, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    streams: Vec<u32>,
    /// Connections for the sequential connect + echo latency.
    #[arg(long, default_value_t = 2000)]
    connections: usize,
    /// Fixed request rates for `oha` (req/s); empty to skip.
    #[arg(long, value_delimiter = ',', default_value = "500,1000,2000,5000")]
    rates: Vec<u32>,
    /// Keep-alive connections `oha` spreads each rate over.
    #[arg(long, default_value_t = 4)]
    rate_connections: u32,
    /// Seconds per rate.
    #[arg(long, default_value_t = 10)]
    rate_seconds: u32,
    /// Response body bytes for the rate runs.
    #[arg(long, default_value_t = 1024)]
    body: u32,
    /// Idle tunnelled connections for the memory-per-connection figure.
    #[arg(long, default_value_t = 10000)]
    idle: usize,
    /// Istio's ztunnel binary, run as a reference when set.
    #[arg(long, env = "ISTIO_ZTUNNEL")]
    istio_ztunnel: Option<PathBuf>,
    /// Tiny figures: checks that every path works, for CI.
    #[arg(long)]
    smoke: bool,
}

/// One way from a client pod to a server.
struct Path {
    name: &'static str,
    client: &'static str,
    /// The server as the client addresses it, by port.
    target: Box<dyn Fn(u16) -> SocketAddr>,
    proxies: Vec<u32>,
}

/// Figures of one path, filled in as the run goes.
#[derive(Default, Clone)]
struct Figures {
    gbit: Vec<f64>,
    gbit_per_cpu: Vec<f64>,
    busiest_cores: Vec<f64>,
    connect: (f64, f64),
    rates: Vec<Latency>,
    cpu_per_1k: Vec<f64>,
    rss_idle: f64,
    rss_peak: f64,
    bytes_per_conn: f64,
}

fn iperf(c: &Cluster, client: &str, server: SocketAddr, secs: u32, streams: u32) -> Result<f64> {
    let out = Command::new("ip")
        .args(["netns", "exec", &c.pod(client).netns, "iperf3", "-J", "-c"])
        .arg(server.ip().to_string())
        .args(["-p", &server.port().to_string()])
        .args(["-t", &secs.to_string(), "-P", &streams.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("running iperf3 -c")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Median and p99 (µs) of connect + 1-byte echo + close, sequentially.
fn connect_latency(c: &Cluster, client: &str, dst: SocketAddr, n: usize) -> Result<(f64, f64)> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let out = exchange(&c.pod(client).netns, dst, b"x")?;
        if out != b"x" {
            bail!("echo returned {out:?}");
        }
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    Ok((samples[n / 2], samples[n * 99 / 100]))
}

fn mean_rss(pids: &[u32], field: fn(u32) -> Result<u64>) -> Result<f64> {
    if pids.is_empty() {
        return Ok(f64::NAN);
    }
    let sum: u64 = pids.iter().map(|p| field(*p)).sum::<Result<u64>>()?;
    Ok(sum as f64 / pids.len() as f64)
}

fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .context("no VmHWM")
}

fn throughput(c: &Cluster, p: &Path, args: &Args, f: &mut Figures) -> Result<()> {
    for &s in &args.streams {
        let meter = CpuMeter::start(&p.proxies)?;
        let bps = iperf(c, p.client, (p.target)(5201), args.seconds, s)?;
        let cpu = meter.stop()?;
        let gbits = bps * args.seconds as f64 / 1e9;
        f.gbit.push(bps / 1e9);
        if cpu.is_empty() {
            f.gbit_per_cpu.push(f64::NAN);
            f.busiest_cores.push(f64::NAN);
        } else {
            let per_proxy = cpu.iter().sum::<f64>() / cpu.len() as f64;
            f.gbit_per_cpu.push(gbits / per_proxy);
            let busiest = cpu.iter().cloned().fold(0.0, f64::max);
            f.busiest_cores.push(busiest / args.seconds as f64);
        }
    }
    Ok(())
}

fn rates(c: &Cluster, p: &Path, args: &Args, oha: &std::path::Path, f: &mut Figures) -> Result<()> {
    let url = format!("http://{}/bytes/{}", (p.target)(8090), args.body);
    for &r in &args.rates {
        let meter = CpuMeter::start(&p.proxies)?;
        let l = bench::oha(
            oha,
            &c.pod(p.client).netns,
            &url,
            r,
            args.rate_connections,
            args.rate_seconds,
        )?;
        let cpu = meter.stop()?;
        if l.requests == 0.0 {
            bail!("{}: no request completed at {r} req/s", p.name);
        }
        let per_proxy = cpu.iter().sum::<f64>() / cpu.len().max(1) as f64;
        f.cpu_per_1k.push(if cpu.is_empty() {
            f64::NAN
        } else {
            per_proxy / (l.requests / 1000.0)
        });
        f.rates.push(l);
    }
    Ok(())
}

/// RSS added per idle tunnelled connection (mean over the path's proxies).
fn idle_memory(c: &Cluster, p: &Path, n: usize) -> Result<f64> {
    if p.proxies.is_empty() || n == 0 {
        return Ok(f64::NAN);
    }
    // HAProxy holds two descriptors per connection and reserves them up front (maxconn below).
    let n = if p.name == "HAProxy" {
        n.min(HAPROXY_MAXCONN)
    } else {
        n
    };
    let before = mean_rss(&p.proxies, bench::rss_bytes)?;
    let held = bench::hold_connections(&c.pod(p.client).netns, (p.target)(8080), n)?;
    // Let the proxies finish the last connections' setup before reading.
    std::thread::sleep(Duration::from_millis(500));
    let after = mean_rss(&p.proxies, bench::rss_bytes)?;
    drop(held);
    Ok((after - before) / n as f64)
}

const HAPROXY_MAXCONN: usize = 9000;

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.seconds = 1;
        args.streams = vec![1, 4];
        args.connections = 20;
        args.rates = vec![200];
        args.rate_seconds = 1;
        args.idle = 50;
    }
    if let Some(reason) = mesh_tests::skip_reason() {
        bail!("cannot benchmark here: {reason}");
    }
    // Every process of the run (proxies, apps) inherits the raised limit.
    mesh_core::socket::raise_fd_limit();
    let oha = bench::oha_binary();
    if oha.is_none() && !args.rates.is_empty() {
        eprintln!("mesh-bench-l4: no `oha` on PATH or in $OHA (cargo install oha): skipping the rate runs");
        args.rates.clear();
    }
    let mut pods = vec![
        PodSpec::mesh("mesh-client", 0),
        PodSpec::mesh("mesh-server", 1),
        PodSpec::plain("direct-client", 0),
        PodSpec::plain("direct-server", 1),
    ];
    if args.istio_ztunnel.is_some() {
        pods.push(PodSpec::plain("istio-client", 0));
        pods.push(PodSpec::plain("istio-server", 1));
    }
    let c = Cluster::start(2, pods)?;
    let mut servers = Children::default();
    for s in ["mesh-server", "direct-server", "istio-server"] {
        if s == "istio-server" && args.istio_ztunnel.is_none() {
            continue;
        }
        servers.0.push(iperf_server(&c, s)?);
    }
    let haproxy = haproxy_pair(&c)?;
    let istio = match &args.istio_ztunnel {
        Some(b) => Some(IstioPair::start(b, &c, "istio-client", "istio-server")?),
        None => None,
    };
    let pod_target = |pod: &str| {
        let ip = c.pod(pod).ip;
        Box::new(move |port| SocketAddr::new(ip, port)) as Box<dyn Fn(u16) -> SocketAddr>
    };
    let ztunnels = (0..2).filter_map(|i| c.ztunnel_pid(i)).collect();
    let mut paths = vec![
        Path {
            name: "direct",
            client: "direct-client",
            target: pod_target("direct-server"),
            proxies: vec![],
        },
        Path {
            name: "HAProxy",
            client: "direct-client",
            target: Box::new(|port| SocketAddr::from(([198, 19, 0, 1], port + 10000))),
            proxies: haproxy.pids(),
        },
        Path {
            name: "ours",
            client: "mesh-client",
            target: pod_target("mesh-server"),
            proxies: ztunnels,
        },
    ];
    if let Some(i) = &istio {
        paths.push(Path {
            name: "Istio ztunnel",
            client: "istio-client",
            target: pod_target("istio-server"),
            proxies: i.pids(),
        });
    }
    let figures = measure(&c, &paths, &args, oha.as_deref())?;
    if istio.is_some() {
        bench::istio_carried(&c.pod("istio-client").netns, c.pod("istio-server").ip)?;
    }
    drop((servers, haproxy));
    print_tables(&paths, &figures, &args);
    Ok(())
}

fn measure(
    c: &Cluster,
    paths: &[Path],
    args: &Args,
    oha: Option<&std::path::Path>,
) -> Result<Vec<Figures>> {
    let mut figures = vec![Figures::default(); paths.len()];
    for (p, f) in paths.iter().zip(&mut figures) {
        f.rss_idle = mean_rss(&p.proxies, bench::rss_bytes)?;
    }
    for (p, f) in paths.iter().zip(&mut figures) {
        throughput(c, p, args, f).with_context(|| format!("throughput via {}", p.name))?;
        f.connect = connect_latency(c, p.client, (p.target)(8080), args.connections)?;
        f.rss_peak = mean_rss(&p.proxies, peak_rss)?;
    }
    if let Some(oha) = oha {
        for (p, f) in paths.iter().zip(&mut figures) {
            rates(c, p, args, oha, f)?;
        }
    }
    for (p, f) in paths.iter().zip(&mut figures) {
        f.bytes_per_conn = idle_memory(c, p, args.idle)
            .with_context(|| format!("idle connections via {}", p.name))?;
    }
    Ok(figures)
}

fn print_tables(paths: &[Path], figures: &[Figures], args: &Args) {
    let ours = paths.iter().position(|p| p.name == "ours").unwrap_or(0);
    let istio = paths.iter().position(|p| p.name == "Istio ztunnel");
    let hap = paths.iter().position(|p| p.name == "HAProxy").unwrap_or(0);
    let mut head = String::from("| measure |");
    for p in paths {
        head.push_str(&format!(" {} |", p.name));
    }
    head.push_str(" ours / HAProxy |");
    if istio.is_some() {
        head.push_str(" ours / Istio |");
    }
    println!("{head}");
    println!(
        "{}",
        "|---".repeat(paths.len() + 2 + usize::from(istio.is_some())) + "|"
    );
    let row = |label: String, unit: &str, v: &dyn Fn(&Figures) -> f64, digits: usize| {
        let mut line = format!("| {label} |");
        for f in figures {
            let x = v(f);
            if x.is_nan() {
                line.push_str(" – |");
            } else {
                line.push_str(&format!(" {x:.digits$}{unit} |"));
            }
        }
        let ratio = |o: usize| {
            let r = v(&figures[ours]) / v(&figures[o]);
            if r.is_finite() {
                format!(" {r:.2} |")
            } else {
                " – |".into()
            }
        };
        line.push_str(&ratio(hap));
        if let Some(i) = istio {
            line.push_str(&ratio(i));
        }
        println!("{line}");
    };
    for (i, s) in args.streams.iter().enumerate() {
        row(
            format!("throughput, {s} conn(s), Gbit/s"),
            "",
            &|f| f.gbit[i],
            2,
        );
    }
    for (i, s) in args.streams.iter().enumerate() {
        row(
            format!("Gbit per proxy CPU-second, {s} conn(s)"),
            "",
            &|f| f.gbit_per_cpu[i],
            2,
        );
    }
    for (i, s) in args.streams.iter().enumerate() {
        row(
            format!("cores used by the busiest proxy, {s} conn(s)"),
            "",
            &|f| f.busiest_cores[i],
            2,
        );
    }
    let n = args.connections;
    row(
        format!("connect + 1-byte echo p50 ({n} sequential), µs"),
        "",
        &|f| f.connect.0,
        0,
    );
    row("same, p99, µs".into(), "", &|f| f.connect.1, 0);
    let ms = |x: f64| x * 1e3;
    for (i, r) in args.rates.iter().enumerate() {
        let direct = &figures[0];
        row(format!("{r} req/s: p50 ms"), "", &|f| ms(f.rates[i].p50), 3);
        row(format!("{r} req/s: p90 ms"), "", &|f| ms(f.rates[i].p90), 3);
        row(format!("{r} req/s: p99 ms"), "", &|f| ms(f.rates[i].p99), 3);
        row(
            format!("{r} req/s: p99.9 ms"),
            "",
            &|f| ms(f.rates[i].p999),
            3,
        );
        row(
            format!("{r} req/s: p99 added over direct, ms"),
            "",
            &|f| ms(f.rates[i].p99 - direct.rates[i].p99),
            3,
        );
        row(
            format!("{r} req/s: CPU-s per 1k requests per proxy"),
            "",
            &|f| f.cpu_per_1k[i],
            4,
        );
        row(
            format!("{r} req/s: failed requests"),
            "",
            &|f| f.rates[i].failed,
            0,
        );
    }
    let mb = |x: f64| x / 1e6;
    row("RSS per proxy, idle, MB".into(), "", &|f| mb(f.rss_idle), 1);
    row(
        "RSS per proxy, peak under load, MB".into(),
        "",
        &|f| mb(f.rss_peak),
        1,
    );
    row(
        format!(
            "RSS per idle tunnelled connection per proxy ({} held), bytes",
            args.idle
        ),
        "",
        &|f| f.bytes_per_conn,
        0,
    );
}

fn iperf_server(c: &Cluster, pod: &str) -> Result<Child> {
    let child = Command::new("ip")
        .args(["netns", "exec", &c.pod(pod).netns, "iperf3", "-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let ns = c.pod(pod).netns.clone();
    poll("iperf3 server", Duration::from_secs(5), || {
        connect_in(&ns, "127.0.0.1:5201".parse().ok()?, Duration::from_secs(1)).ok()
    })?;
    Ok(child)
}

/// HAProxy on node 1 (listening on the node's underlay address, port + 10000) originates mTLS to HAProxy on node
/// 2 (port + 20000), which terminates it and connects to `direct-server`: the same two-hop shape as the mesh.
fn haproxy_pair(c: &Cluster) -> Result<Children> {
    use mesh_core::ca::CertificateAuthority;
    use mesh_primitives::identity::Identity;
    let ca = CertificateAuthority::load_or_create(&c.ca_dir(), "cluster.local")?;
    let pem_of = |tag: &str, der: &[u8]| pem::encode(&pem::Pem::new(tag, der.to_vec()));
    let bundle = |sa: &str| -> Result<String> {
        let cert = ca.issue(
            &Identity::new("cluster.local", "default", sa),
            Duration::from_secs(3600),
        )?;
        let mut s: String = cert
            .chain()
            .iter()
            .map(|c| pem_of("CERTIFICATE", c))
            .collect();
        s.push_str(&pem_of("PRIVATE KEY", cert.key().secret_der()));
        Ok(s)
    };
    let dir = &c.dir;
    std::fs::write(
        dir.join("hap-root.pem"),
        pem_of("CERTIFICATE", &ca.roots()[0]),
    )?;
    std::fs::write(dir.join("hap-client.pem"), bundle("haproxy-client")?)?;
    std::fs::write(dir.join("hap-server.pem"), bundle("haproxy-server")?)?;
    let server_ip = c.pod("direct-server").ip;
    let global = format!("global\n  maxconn {HAPROXY_MAXCONN}\n  nbthread 2\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n");
    let d = dir.display();
    let tls = format!("ca-file {d}/hap-root.pem verify required");
    let (mut client_cfg, mut server_cfg) = (global.clone(), global);
    for port in [5201u16, 8080, 8090] {
        let (front, back) = (port + 10000, port + 20000);
        client_cfg.push_str(&format!(
            "listen p{port}\n  bind 198.19.0.1:{front}\n  server s 198.19.0.2:{back} ssl crt {d}/hap-client.pem {tls}\n"
        ));
        server_cfg.push_str(&format!(
            "listen p{port}\n  bind 198.19.0.2:{back} ssl crt {d}/hap-server.pem {tls}\n  server s {server_ip}:{port}\n"
        ));
    }
    let mut children = Children::default();
    for (node, cfg, port) in [(1, server_cfg, 28080), (0, client_cfg, 18080)] {
        let path = dir.join(format!("haproxy-n{}.cfg", node + 1));
        std::fs::write(&path, cfg)?;
        let ns = &c.nodes[node].netns;
        children.0.push(
            Command::new("ip")
                .args(["netns", "exec", ns, "haproxy", "-db", "-f"])
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting haproxy")?,
        );
        let addr = SocketAddr::from(([198, 19, 0, node as u8 + 1], port));
        poll("haproxy to listen", Duration::from_secs(5), || {
            connect_in(ns, addr, Duration::from_secs(1)).ok()
        })?;
    }
    Ok(children)
}
