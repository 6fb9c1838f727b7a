//! `mesh-local`: the mesh on this machine. The control plane in file mode (watching a directory of Kubernetes
//! YAML), two nodes (network namespaces) with a ztunnel each fed by it, mesh pods `sleep`, `echo-v1`, `echo-v2`
//! behind the service `echo` (198.18.255.10:80), a non-mesh pod `legacy`, and `order-service` (v1, v2) behind a
//! waypoint that applies the user's seed VirtualService and DestinationRule.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use mesh_tests::http::{load, request, Reply, Req};
use mesh_tests::net::{exchange, whoami};
use mesh_tests::{poll, Cluster, Mode, PodSpec};

#[derive(Parser)]
struct Args {
    /// Check the demo traffic, print the results, tear everything down and exit.
    #[arg(long)]
    once: bool,
}

fn pod(name: &str, node: usize, app: &str, version: &str) -> PodSpec {
    PodSpec {
        labels: vec![
            ("app".into(), app.into()),
            ("version".into(), version.into()),
        ],
        ..PodSpec::mesh(name, node)
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(reason) = mesh_tests::skip_reason() {
        anyhow::bail!("cannot run the local mesh here: {reason}");
    }
    mesh_core::socket::raise_fd_limit();
    println!(
        "starting the control plane and a 2-node mesh (network namespaces, CNI bridge plugin, a ztunnel per node)..."
    );
    let mut c = Cluster::start_with(
        2,
        vec![
            pod("sleep", 0, "sleep", "v1"),
            pod("echo-v1", 0, "echo", "v1"),
            pod("echo-v2", 1, "echo", "v2"),
            pod("order-v1", 0, "order-service", "v1"),
            pod("order-v2", 1, "order-service", "v2"),
            PodSpec::plain("legacy", 1),
            PodSpec::waypoint("waypoint", 1),
        ],
        Mode::ControlPlane,
    )?;
    c.start_waypoint("waypoint")?;
    c.add_service("echo", "198.18.255.10", 80, 8081, "echo")?;
    // `istio.io/use-waypoint` on the Service: its traffic goes through the waypoint, which speaks HTTP (8090).
    c.add_service_spec(serde_json::json!({
        "name": "order-service", "namespace": "default", "vip": "198.18.255.11",
        "labels": {"istio.io/use-waypoint": "waypoint"},
        "ports": [{"port": 80, "targetPort": 8090}], "selector": {"app": "order-service"},
    }))?;
    seed_manifests(&c)?;
    let vip: SocketAddr = "198.18.255.10:80".parse()?;
    let sleep = c.pod("sleep").netns.clone();
    poll("the echo service", Duration::from_secs(10), || {
        exchange(&sleep, vip, b"").ok().filter(|o| !o.is_empty())
    })?;

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

    poll(
        "the control plane to load the seed",
        Duration::from_secs(10),
        || {
            let (_, dump) = c.control_get("/debug/config_dump").ok()?;
            (dump.contains("\"TrafficSplit\"") && dump.contains("order-service-canary"))
                .then_some(())
        },
    )?;
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
    println!("Try, in another shell:");
    println!(
        "  sudo ip netns exec {} curl -s {}:15014/debug/config_dump",
        c.underlay,
        mesh_tests::control::CONTROL_IP
    );
    println!(
        "  sudo ip netns exec {} nc {} 8080",
        sleep,
        c.pod("echo-v2").ip
    );
    println!(
        "  sudo ip netns exec {} curl -s 127.0.0.1:15000/config_dump",
        c.nodes[0].netns
    );
    println!(
        "  sudo ip netns exec {} curl -s 127.0.0.1:15020/metrics",
        c.nodes[1].netns
    );
    println!(
        "Logs and config: {}. Ctrl-C tears everything down.",
        c.dir.display()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc_channel(tx)?;
    rx.recv().context("waiting for Ctrl-C")?;
    println!("tearing down");
    Ok(())
}

/// The seed's VirtualService at work: requests to `order-service` split 90/10, `x-canary: true` always to v2.
fn demo_waypoint(c: &Cluster) -> Result<()> {
    let sleep = c.pod("sleep").netns.clone();
    let vip: SocketAddr = "198.18.255.11:80".parse()?;
    let routed = |r: &Reply| r.status == 200 && !r.header("x-version").is_empty();
    poll(
        "the waypoint to route order-service",
        Duration::from_secs(20),
        || request(&sleep, vip, Req::get("/")).ok().filter(routed),
    )?;
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

/// The user's own manifests (the seed), unchanged, plus the two Services its TrafficSplit names.
fn seed_manifests(c: &Cluster) -> Result<()> {
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/seed");
    for entry in std::fs::read_dir(&seed).with_context(|| format!("reading {}", seed.display()))? {
        let path = entry?.path();
        let name = path.file_name().context("seed file name")?;
        std::fs::copy(&path, c.config_dir().join(name))?;
    }
    let svc = |name: &str, vip: &str, version: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{clusterIP: {vip}, selector: {{app: order-service, version: {version}}}, ports: [{{port: 80, targetPort: 8090}}]}}\n"
        )
    };
    let body = [
        svc("order-service-stable", "198.18.255.12", "v1"),
        svc("order-service-canary", "198.18.255.13", "v2"),
    ]
    .join("---\n");
    std::fs::write(c.config_dir().join("order-backends.yaml"), body)?;
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
