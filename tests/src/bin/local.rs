//! `mesh-local`: the mesh on this machine. The control plane in file mode (watching a directory of Kubernetes
//! YAML), two nodes (network namespaces) with a ztunnel each fed by it, mesh pods `sleep`, `echo-v1`, `echo-v2`
//! behind the service `echo` (198.18.255.10:80), a non-mesh pod `legacy`, and `order-service` (v1, v2) behind a
//! waypoint that applies the user's seed VirtualService and DestinationRule.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::Parser;
use mesh_tests::http::{load, Reply, Req};
use mesh_tests::net::{exchange, whoami};
use mesh_tests::Cluster;

#[derive(Parser)]
#[command(name = "mesh-local", version = mesh_primitives::version!())]
struct Args {
    /// Check the demo traffic, print the results, tear everything down and exit.
    #[arg(long)]
    once: bool,
    /// Copy the logs and the config directory to DIR when tearing down (also after a failure).
    #[arg(long, value_name = "DIR")]
    keep_logs: Option<std::path::PathBuf>,
    /// Make one version of order-service fail (every request answered 503) after the demo, and watch the
    /// waypoint's outlier detection (the seed's DestinationRule: 5 consecutive 5xx) eject it.
    #[arg(long, value_enum)]
    fault: Option<Version>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Version {
    V1,
    V2,
}

impl Version {
    fn pod(self) -> &'static str {
        match self {
            Version::V1 => "order-v1",
            Version::V2 => "order-v2",
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.keep_logs.is_some() {
        // Read by the cluster's teardown; set before any thread exists.
        std::env::set_var("MESH_KEEP", "1");
    }
    if let Some(reason) = mesh_tests::skip_reason() {
        anyhow::bail!("cannot run the local mesh here: {reason}");
    }
    mesh_core::socket::raise_fd_limit();
    println!(
        "starting the control plane and a 2-node mesh (network namespaces, CNI bridge plugin, a ztunnel per node)..."
    );
    let c = mesh_tests::seed::start()?;
    let dir = c.dir.clone();
    // The cluster is torn down when `demo` returns, so its logs are complete when copied.
    let result = demo(c, &args);
    if let Some(to) = &args.keep_logs {
        keep_logs(&dir, to)?;
    }
    result
}

fn keep_logs(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    mesh_tests::sh(
        "cp",
        &[
            "-a",
            &format!("{}/.", from.display()),
            &to.display().to_string(),
        ],
    )?;
    let _ = std::fs::remove_dir_all(from);
    println!("logs and config kept in {}", to.display());
    Ok(())
}

fn demo(c: Cluster, args: &Args) -> Result<()> {
    let vip: SocketAddr = mesh_tests::seed::ECHO_VIP.parse()?;
    let sleep = c.pod("sleep").netns.clone();

    println!("\npods:");
    for p in &c.pods {
        let mode = if p.spec.is_waypoint() {
            "waypoint (terminates HBONE itself)"
        } else if p.spec.mesh {
            "ambient (HBONE)"
        } else {
            "not in mesh"
        };
        println!(
            "  {:<8} {:<15} node{}  netns {:<20} {mode}",
            p.spec.name,
            p.ip,
            p.spec.node + 1,
            p.netns
        );
    }
    println!("\ndemo traffic from sleep:");
    for _ in 0..4 {
        // The app reports the address it was called from: ztunnel inside the serving pod, i.e. that pod's IP.
        let out = exchange(&sleep, vip, b"")?;
        let seen: SocketAddr = String::from_utf8_lossy(&out).trim().parse()?;
        let by = c
            .pods
            .iter()
            .find(|p| p.ip == seen.ip())
            .map(|p| p.spec.name.as_str())
            .unwrap_or("?");
        println!("  echo (198.18.255.10:80) served by {by}");
    }
    let legacy = c.pod("legacy").ip;
    println!(
        "  legacy {legacy} (passthrough) saw the caller as {}",
        whoami(&sleep, legacy)?
    );
    let reply = exchange(
        &sleep,
        SocketAddr::new(c.pod("echo-v2").ip, 8080),
        b"hello over HBONE",
    )?;
    println!(
        "  echo-v2 echoed {:?} (crossed nodes over mTLS)",
        String::from_utf8_lossy(&reply)
    );

    let (_, analysis) = c.control_get("/debug/analyze")?;
    let errors = analysis.lines().filter(|l| l.starts_with("error")).count();
    let warnings = analysis
        .lines()
        .filter(|l| l.starts_with("warning"))
        .count();
    println!(
        "\ncontrol plane: the seed's VirtualService, DestinationRule, PeerAuthentication and TrafficSplit loaded unchanged ({errors} errors, {warnings} warnings)"
    );
    anyhow::ensure!(
        errors == 0,
        "the control plane rejected part of the demo config:\n{analysis}"
    );

    demo_waypoint(&c)?;
    if let Some(version) = args.fault {
        demo_fault(&c, version.pod())?;
    }

    let metrics = c.metrics(1)?;
    println!("\nnode2 ztunnel metrics (istio_tcp_connections_opened_total):");
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_opened_total"))
    {
        println!("  {l}");
    }
    if args.once {
        println!("\nok: the mesh carried the demo traffic");
        return Ok(());
    }
    println!(
        "\nThe mesh is running. Its config is Kubernetes YAML in {0}: edit it and the",
        c.config_dir().display()
    );
    println!(
        "control plane pushes the change; `meshctl analyze {0}` checks it offline.",
        c.config_dir().display()
    );
    print_endpoints(&c);
    println!(
        "Logs and config: {}. Ctrl-C tears everything down{}.",
        c.dir.display(),
        match &args.keep_logs {
            Some(to) => format!(" and copies them to {}", to.display()),
            None => " (--keep-logs DIR keeps a copy)".to_string(),
        }
    );
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc_channel(tx)?;
    live(&c, &rx)?;
    println!("tearing down");
    Ok(())
}

/// Where to look while it runs: the Prometheus-format endpoints, the admin ports, and commands that read them.
fn print_endpoints(c: &Cluster) {
    let u = &c.underlay;
    let control = mesh_tests::control::CONTROL_IP;
    let waypoint = c.pod("waypoint");
    println!(
        "The mesh page (live service graph, workloads, policies, proxies), from the underlay:"
    );
    println!("  http://{control}:15014/dashboard   e.g. sudo ip netns exec {u} chromium --headless --no-sandbox --screenshot=/tmp/mesh.png http://{control}:15014/dashboard");
    println!("Prometheus-format metrics (from the underlay: sudo ip netns exec {u} curl -s URL):");
    for (i, n) in c.nodes.iter().enumerate() {
        println!(
            "  ztunnel {}:  http://198.19.0.{}:15020/metrics",
            n.name,
            i + 1
        );
    }
    println!("  waypoint:       http://{}:15020/metrics", waypoint.ip);
    println!(
        "  control plane:  http://{control}:15014/metrics   (/debug/config_dump, /debug/analyze)"
    );
    println!("Admin ports (127.0.0.1:15000 inside each proxy's namespace):");
    for n in &c.nodes {
        println!(
            "  sudo ip netns exec {} target/debug/meshctl proxy-config workloads   # ztunnel of {}",
            n.netns, n.name
        );
    }
    println!(
        "  sudo ip netns exec {} target/debug/meshctl proxy-config routes      # the waypoint",
        waypoint.netns
    );
    println!(
        "  sudo ip netns exec {} curl -s -H 'x-canary: true' {}   # order-service through the waypoint: v2",
        c.pod("sleep").netns,
        mesh_tests::seed::ORDER_VIP
    );
}

/// Demo traffic and the live table until Ctrl-C: redrawn in place each second on a terminal, every few seconds
/// as plain lines otherwise (a log file).
fn live(c: &Cluster, ctrl_c: &std::sync::mpsc::Receiver<()>) -> Result<()> {
    use std::io::{IsTerminal, Write};
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = mesh_tests::live::traffic(c, stop.clone())?;
    let tty = std::io::stdout().is_terminal();
    let every = std::time::Duration::from_secs(if tty { 1 } else { 3 });
    let mut before = (
        std::time::Instant::now(),
        mesh_tests::live::Sample::take(c)?,
    );
    let mut drawn = 0;
    println!();
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = ctrl_c.recv_timeout(every) {
        let now = (
            std::time::Instant::now(),
            mesh_tests::live::Sample::take(c)?,
        );
        let lines = mesh_tests::live::render(&before.1, &now.1, (now.0 - before.0).as_secs_f64());
        let mut out = std::io::stdout().lock();
        if tty && drawn > 0 {
            // Back to the table's first line, and clear below it.
            write!(out, "\x1b[{drawn}A\x1b[J")?;
        }
        for l in &lines {
            writeln!(out, "{l}")?;
        }
        out.flush()?;
        drawn = lines.len();
        before = now;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = traffic.join();
    Ok(())
}

/// The seed's VirtualService at work: requests to `order-service` split 90/10, `x-canary: true` always to v2.
fn demo_waypoint(c: &Cluster) -> Result<()> {
    let sleep = c.pod("sleep").netns.clone();
    let vip: SocketAddr = mesh_tests::seed::ORDER_VIP.parse()?;
    let routed = mesh_tests::seed::routed;
    mesh_tests::seed::wait_for_routes(c)?;
    let count = |replies: Vec<Result<Reply>>| {
        let mut v = std::collections::BTreeMap::<String, usize>::new();
        for r in replies {
            let key = match r {
                Ok(r) if routed(&r) => r.header("x-version").to_string(),
                Ok(r) => format!("HTTP {}", r.status),
                Err(e) => format!("error: {e}"),
            };
            *v.entry(key).or_default() += 1;
        }
        v
    };
    println!(
        "
waypoint (seed VirtualService + DestinationRule) for order-service (198.18.255.11:80):"
    );
    let plain = count(load(&sleep, vip, 1000, 8, |_| Req::get("/"))?);
    println!("  1000 requests:                    {plain:?}");
    let canary = count(load(&sleep, vip, 100, 4, |_| {
        Req::get("/").header("x-canary", "true")
    })?);
    println!("  100 requests with x-canary: true: {canary:?}");
    let bad = plain
        .keys()
        .chain(canary.keys())
        .filter(|k| !k.starts_with('v'))
        .count();
    anyhow::ensure!(
        bad == 0 && canary.len() == 1 && canary.contains_key("v2"),
        "waypoint routing is off: {plain:?} {canary:?}"
    );
    // The seed's 90/10: v2 takes 100 of 1000 on average (binomial, sd 9.5); 60..=140 is four sd each way.
    let v2 = plain.get("v2").copied().unwrap_or(0);
    anyhow::ensure!(
        plain.get("v1").copied().unwrap_or(0) + v2 == 1000 && (60..=140).contains(&v2),
        "the 90/10 split is off: {plain:?}"
    );
    Ok(())
}

/// `--fault`: the pod fails every request; the waypoint ejects it after five 5xx in a row (the seed's
/// `consecutive5xxErrors: 5`) and sends it nothing for `baseEjectionTime` (30s, growing with each ejection).
fn demo_fault(c: &Cluster, pod: &str) -> Result<()> {
    let sleep = c.pod("sleep").netns.clone();
    let vip: SocketAddr = mesh_tests::seed::ORDER_VIP.parse()?;
    let ip = c.pod(pod).ip.to_string();
    c.set_failing("sleep", pod, -1)?;
    println!("\n--fault: {pod} ({ip}) now answers 503 to every request");
    let ejected = mesh_tests::poll(
        "the waypoint to eject the failing pod",
        std::time::Duration::from_secs(30),
        || {
            let _ = load(&sleep, vip, 20, 2, |_| Req::get("/"));
            let dump = c.waypoint_dump("waypoint").ok()?;
            let clusters = dump["clusters"].as_array()?.clone();
            clusters.into_iter().find(|cl| {
                cl["ejected"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|h| h == ip.as_str()))
            })
        },
    )?;
    println!(
        "  outlier detection ejected {pod} from cluster {}",
        ejected["name"].as_str().unwrap_or("?")
    );
    let replies = load(&sleep, vip, 200, 4, |_| Req::get("/"))?;
    let mut by = std::collections::BTreeMap::<String, usize>::new();
    for r in replies {
        let key = match r {
            Ok(r) if r.status == 200 => r.header("x-version").to_string(),
            Ok(r) => format!("HTTP {}", r.status),
            Err(e) => format!("error: {e}"),
        };
        *by.entry(key).or_default() += 1;
    }
    println!("  200 requests while it is ejected: {by:?}");
    // The gauges are refreshed each second.
    let gauge = mesh_tests::poll(
        "the ejection gauge",
        std::time::Duration::from_secs(3),
        || {
            let metrics = c.waypoint_metrics("waypoint").ok()?;
            metrics
                .lines()
                .find(|l| {
                    l.starts_with("envoy_cluster_outlier_detection_ejections_active")
                        && !l.ends_with(" 0")
                })
                .map(str::to_string)
        },
    )?;
    println!("  waypoint metrics: {gauge}");
    Ok(())
}

fn ctrlc_channel(tx: std::sync::mpsc::Sender<()>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        });
        let _ = tx.send(());
    });
    Ok(())
}
