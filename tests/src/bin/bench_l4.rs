//! `mesh-bench-l4`: TCP throughput and connection latency through the mesh (pod → ztunnel → HBONE → ztunnel →
//! pod, across nodes) against a direct connection between non-mesh pods on the same nodes, in the same run.
//! A second reference is a pair of HAProxy instances (Debian) doing what the two ztunnels do: TCP over mutual TLS
//! between the nodes, with certificates from the same CA. Uses iperf3 from Debian. Prints a Markdown table.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mesh_tests::net::{connect_in, exchange};
use mesh_tests::{poll, Cluster, PodSpec};

#[derive(Parser)]
struct Args {
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Parallel iperf3 streams.
    #[arg(long, default_value_t = 1)]
    streams: u32,
    /// Connections for the connect+echo latency measurement.
    #[arg(long, default_value_t = 2000)]
    connections: usize,
}

fn iperf(c: &Cluster, client: &str, server: SocketAddr, args: &Args) -> Result<f64> {
    let out = Command::new("ip")
        .args(["netns", "exec", &c.pod(client).netns, "iperf3", "-J", "-c"])
        .arg(server.ip().to_string())
        .args(["-p", &server.port().to_string()])
        .args([
            "-t",
            &args.seconds.to_string(),
            "-P",
            &args.streams.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running iperf3 -c")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| {
            format!(
                "iperf3 gave no result: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
}

/// Median and p99 of connect + 1-byte echo + close, sequentially.
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

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(reason) = mesh_tests::skip_reason() {
        bail!("cannot benchmark here: {reason}");
    }
    mesh_core::socket::raise_fd_limit();
    let c = Cluster::start(
        2,
        vec![
            PodSpec::mesh("mesh-client", 0),
            PodSpec::mesh("mesh-server", 1),
            PodSpec::plain("direct-client", 0),
            PodSpec::plain("direct-server", 1),
        ],
    )?;
    let mut servers = Vec::new();
    for s in ["mesh-server", "direct-server"] {
        servers.push(
            Command::new("ip")
                .args(["netns", "exec", &c.pod(s).netns, "iperf3", "-s"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let ns = c.pod(s).netns.clone();
        poll("iperf3 server", Duration::from_secs(5), || {
            connect_in(&ns, "127.0.0.1:5201".parse().ok()?, Duration::from_secs(1)).ok()
        })?;
    }
    servers.extend(haproxy_pair(&c)?);
    let at = |pod: &str, port| SocketAddr::new(c.pod(pod).ip, port);
    let hap = |port| SocketAddr::from(([198, 19, 0, 1], port));
    let direct = iperf(&c, "direct-client", at("direct-server", 5201), &args)?;
    let haproxy = iperf(&c, "direct-client", hap(15201), &args)?;
    let mesh = iperf(&c, "mesh-client", at("mesh-server", 5201), &args)?;
    let n = args.connections;
    let (d50, d99) = connect_latency(&c, "direct-client", at("direct-server", 8080), n)?;
    let (h50, h99) = connect_latency(&c, "direct-client", hap(18080), n)?;
    let (m50, m99) = connect_latency(&c, "mesh-client", at("mesh-server", 8080), n)?;
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    let gbit = |b: f64| b / 1e9;
    println!("| measure | direct (no mesh) | HAProxy mTLS pair | mesh (HBONE) | mesh / direct | mesh / HAProxy |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| iperf3 throughput, {} stream(s), {} s | {:.2} Gbit/s | {:.2} Gbit/s | {:.2} Gbit/s | {:.2} | {:.2} |",
        args.streams,
        args.seconds,
        gbit(direct),
        gbit(haproxy),
        gbit(mesh),
        mesh / direct,
        mesh / haproxy
    );
    let row = |name: &str, d: f64, h: f64, m: f64| {
        println!(
            "| {name} | {d:.0} µs | {h:.0} µs | {m:.0} µs | {:.2} | {:.2} |",
            m / d,
            m / h
        )
    };
    row(
        &format!("new connection + 1-byte echo, p50 ({n} sequential)"),
        d50,
        h50,
        m50,
    );
    row("same, p99", d99, h99, m99);
    Ok(())
}

/// HAProxy on node 1 (listening on the node's underlay address) originates mTLS to HAProxy on node 2, which
/// terminates it and connects to `direct-server`: the same two-hop, encrypted-between-nodes shape as the mesh.
fn haproxy_pair(c: &Cluster) -> Result<Vec<std::process::Child>> {
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
    let global = "global\n  maxconn 8000\n  nbthread 2\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n";
    let d = dir.display();
    let client_cfg = format!(
        "{global}listen iperf\n  bind 198.19.0.1:15201\n  server s 198.19.0.2:25201 ssl crt {d}/hap-client.pem ca-file {d}/hap-root.pem verify required\n\
         listen echo\n  bind 198.19.0.1:18080\n  server s 198.19.0.2:28080 ssl crt {d}/hap-client.pem ca-file {d}/hap-root.pem verify required\n"
    );
    let server_cfg = format!(
        "{global}listen iperf\n  bind 198.19.0.2:25201 ssl crt {d}/hap-server.pem ca-file {d}/hap-root.pem verify required\n  server s {server_ip}:5201\n\
         listen echo\n  bind 198.19.0.2:28080 ssl crt {d}/hap-server.pem ca-file {d}/hap-root.pem verify required\n  server s {server_ip}:8080\n"
    );
    let mut children = Vec::new();
    for (node, cfg, port) in [(1, server_cfg, 28080), (0, client_cfg, 18080)] {
        let path = dir.join(format!("haproxy-n{}.cfg", node + 1));
        std::fs::write(&path, cfg)?;
        children.push(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &c.nodes[node].netns,
                    "haproxy",
                    "-db",
                    "-f",
                ])
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting haproxy")?,
        );
        let ns = c.nodes[node].netns.clone();
        let addr = SocketAddr::from(([198, 19, 0, node as u8 + 1], port));
        poll("haproxy to listen", Duration::from_secs(5), || {
            connect_in(&ns, addr, Duration::from_secs(1)).ok()
        })?;
    }
    Ok(children)
}
