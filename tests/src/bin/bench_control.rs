//! `mesh-bench-control`: the control plane at scale. Writes a synthetic cluster (pods, services, nodes) as YAML,
//! runs the real `control` binary on loopback, connects one delta-xDS client per node, and reports the control
//! plane's memory, the time until every client holds the full set, and the convergence time of a one-pod change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mesh_core::control::{ControlPlane, XdsHandler};
use mesh_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use mesh_proto::ADDRESS_TYPE_URL;
use tokio::sync::mpsc;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    #[arg(long, default_value_t = 1_000)]
    services: usize,
    /// Nodes; one xDS client (a ztunnel's stream) per node.
    #[arg(long, default_value_t = 100)]
    clients: usize,
}

struct Counter {
    held: HashMap<String, String>,
    tx: mpsc::UnboundedSender<(usize, Vec<String>)>,
}

impl XdsHandler for Counter {
    fn type_urls(&self) -> Vec<String> {
        vec![ADDRESS_TYPE_URL.into()]
    }
    fn versions(&self, _: &str) -> HashMap<String, String> {
        self.held.clone()
    }
    fn apply(&mut self, r: &DeltaDiscoveryResponse) -> Result<(), String> {
        for n in &r.removed_resources {
            self.held.remove(n);
        }
        let names: Vec<String> = r.resources.iter().map(|x| x.name.clone()).collect();
        for x in &r.resources {
            self.held.insert(x.name.clone(), x.version.clone());
        }
        let _ = self.tx.send((self.held.len(), names));
        Ok(())
    }
}

fn pod_yaml(i: usize, nodes: usize, services: usize, version: &str) -> String {
    let (a, b) = ((i / 250) % 250, i % 250 + 1);
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{i}, namespace: ns-{ns}, labels: {{app: svc-{svc}, version: {version}}}}}\nspec: {{nodeName: node-{node}, serviceAccountName: sa-{svc}}}\nstatus: {{podIP: 198.18.{a}.{b}}}\n",
        ns = i % 10,
        svc = i % services,
        node = i % nodes,
    )
}

fn write_cluster(dir: &Path, args: &Args) -> Result<()> {
    let cfg = dir.join("config");
    std::fs::create_dir_all(&cfg)?;
    let mut ns = String::new();
    for n in 0..10 {
        ns.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{n}, labels: {{istio.io/dataplane-mode: ambient}}}}\n---\n"
        ));
    }
    std::fs::write(cfg.join("namespaces.yaml"), ns)?;
    let mut svcs = String::new();
    for s in 0..args.services {
        svcs.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: ns-{ns}}}\nspec: {{clusterIP: 198.19.{a}.{b}, selector: {{app: svc-{s}}}, ports: [{{port: 80, targetPort: 8080}}]}}\n---\n",
            ns = s % 10,
            a = 10 + s / 250,
            b = s % 250 + 1
        ));
    }
    std::fs::write(cfg.join("services.yaml"), svcs)?;
    // Pods in files of 1000, as a real config repo would split them.
    for chunk in 0..args.pods.div_ceil(1000) {
        let body: Vec<String> = (chunk * 1000..((chunk + 1) * 1000).min(args.pods))
            .map(|i| pod_yaml(i, args.clients, args.services, "v1"))
            .collect();
        std::fs::write(cfg.join(format!("pods-{chunk}.yaml")), body.join("---\n"))?;
    }
    let mut tokens = String::from("nodeTokens:\n");
    for n in 0..args.clients {
        let f = dir.join(format!("token-{n}"));
        std::fs::write(&f, format!("token-{n}"))?;
        tokens.push_str(&format!(
            "- {{node: node-{n}, tokenFile: {}}}\n",
            f.display()
        ));
    }
    std::fs::write(
        dir.join("control.yaml"),
        format!(
            "configDir: {}\ncaDir: {}\ngrpcAddr: 127.0.0.1:25012\nmonitoringAddr: 127.0.0.1:25014\npollInterval: 10s\ndebounce: 50ms\n{tokens}",
            cfg.display(),
            dir.join("ca").display()
        ),
    )?;
    Ok(())
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn control_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().context("binary dir")?.join("control"))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("mesh-bench-control-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_cluster(&dir, &args)?;
    let started = Instant::now();
    let mut control: Child = Command::new(control_bin()?)
        .arg("--config")
        .arg(dir.join("control.yaml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting control (build it: cargo build --release --workspace --bins)")?;
    let root = dir.join("ca/root-cert.pem");
    while !root.exists() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("control plane did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expected = args.pods + args.services;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let full = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    for n in 0..args.clients {
        let cp = ControlPlane {
            address: "https://127.0.0.1:25012".into(),
            root_cert: root.clone(),
            tls_name: "istiod.istio-system.svc".into(),
            token_file: dir.join(format!("token-{n}")),
        };
        let (ctx, full) = (tx.clone(), full.clone());
        let (itx, mut irx) = mpsc::unbounded_channel();
        tokio::spawn(mesh_core::control::run_xds(
            cp,
            Default::default(),
            Counter {
                held: HashMap::new(),
                tx: itx,
            },
        ));
        tokio::spawn(async move {
            let mut done = false;
            while let Some((held, names)) = irx.recv().await {
                if !done && held >= expected {
                    done = true;
                    full.fetch_add(1, Ordering::SeqCst);
                }
                let _ = ctx.send((n, names));
            }
        });
    }
    while full.load(Ordering::SeqCst) < args.clients {
        if t0.elapsed() > Duration::from_secs(300) {
            bail!(
                "only {} of {} clients got the full set",
                full.load(Ordering::SeqCst),
                args.clients
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first_push = t0.elapsed();
    let rss_loaded = rss_mib(control.id());
    while rx.try_recv().is_ok() {}

    // One pod changes (its version label): time until every client has the new version of that one resource.
    let t1 = Instant::now();
    let file = dir.join("config/pods-0.yaml");
    let body = std::fs::read_to_string(&file)?.replacen(
        &pod_yaml(0, args.clients, args.services, "v1"),
        &pod_yaml(0, args.clients, args.services, "v2"),
        1,
    );
    std::fs::write(&file, body)?;
    let mut got = std::collections::HashSet::new();
    let mut extra = 0usize;
    while got.len() < args.clients {
        let Ok(Some((n, names))) = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await
        else {
            bail!("only {} clients saw the change", got.len());
        };
        if names.iter().any(|x| x == "Kubernetes//Pod/ns-0/pod-0") {
            got.insert(n);
        }
        extra += names.len().saturating_sub(1);
    }
    let convergence = t1.elapsed();
    let rss_after = rss_mib(control.id());
    let _ = control.kill();
    let _ = control.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| synthetic cluster | {} pods, {} services, {} nodes / xDS clients |",
        args.pods, args.services, args.clients
    );
    println!(
        "| time until all clients hold all {expected} resources (from connect) | {:.2} s |",
        first_push.as_secs_f64()
    );
    println!("| control plane RSS, full push done | {rss_loaded:.0} MiB |");
    println!("| one-pod change: until all {} clients have it (file written → inotify → 50 ms debounce → reload → push) | {:.0} ms |", args.clients, convergence.as_secs_f64() * 1000.0);
    println!("| other resources resent for that change (should be 0) | {extra} |");
    println!("| control plane RSS after the change | {rss_after:.0} MiB |");
    Ok(())
}
