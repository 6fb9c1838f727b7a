//! What the benchmarks (`mesh-bench-*`) share: the CPU time and memory of a process from `/proc`, an external
//! open-loop HTTP load generator (`oha`), many idle tunnelled connections, and Istio's own ztunnel run as a
//! reference in the same cluster.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mesh_core::netns::NetNs;

use crate::{http_get, poll, Cluster};

/// User + system CPU seconds a process has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields are counted from the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc/PID/stat")?
            .parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15 of the whole line; 'rest' starts at field 3.
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// Resident set size in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kb * 1024)
}

/// CPU seconds a set of processes uses between `start` and `stop`.
pub struct CpuMeter {
    pids: Vec<u32>,
    start: Vec<f64>,
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> Result<Self> {
        let start = pids
            .iter()
            .map(|p| cpu_seconds(*p))
            .collect::<Result<_>>()?;
        Ok(Self {
            pids: pids.to_vec(),
            start,
        })
    }

    /// CPU seconds used by each process since `start`.
    pub fn stop(&self) -> Result<Vec<f64>> {
        self.pids
            .iter()
            .zip(&self.start)
            .map(|(p, s)| Ok(cpu_seconds(*p)? - s))
            .collect()
    }
}

/// Latency percentiles (seconds) and achieved rate of one `oha` run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub rps: f64,
    pub requests: f64,
    pub failed: f64,
}

/// The `oha` binary: `$OHA`, or on `PATH`.
pub fn oha_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("OHA") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("oha"))
            .find(|p| p.is_file())
    })
}

/// Runs `oha` inside `netns` at a fixed `rate` (open loop, latency-corrected) over `conns` keep-alive connections.
pub fn oha(
    oha: &Path,
    netns: &str,
    url: &str,
    rate: u32,
    conns: u32,
    seconds: u32,
) -> Result<Latency> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(oha)
        .args([
            "--no-tui",
            "--output-format",
            "json",
            "--latency-correction",
        ])
        .args(["-z", &format!("{seconds}s"), "-q", &rate.to_string()])
        .args(["-c", &conns.to_string(), url])
        .stderr(Stdio::inherit())
        .output()
        .context("running oha")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "oha output is not JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    let pct = |k: &str| v["latencyPercentiles"][k].as_f64().unwrap_or(f64::NAN);
    let codes: f64 = v["statusCodeDistribution"]
        .as_object()
        .map(|m| m.values().filter_map(|n| n.as_f64()).sum())
        .unwrap_or(0.0);
    let ok = v["statusCodeDistribution"]["200"].as_f64().unwrap_or(0.0);
    // Requests still in flight when the run's time is up are cut off by oha itself, not failed by the path.
    let errors: f64 = v["errorDistribution"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.contains("deadline"))
                .filter_map(|(_, n)| n.as_f64())
                .sum()
        })
        .unwrap_or(0.0);
    Ok(Latency {
        p50: pct("p50"),
        p90: pct("p90"),
        p99: pct("p99"),
        p999: pct("p99.9"),
        rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        requests: codes + errors,
        failed: codes - ok + errors,
    })
}

/// Opens `n` connections from `netns` to `addr` and echoes one byte on each (so every tunnel is established end
/// to end), then keeps them open and idle.
pub fn hold_connections(netns: &str, addr: SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    use std::io::{Read, Write};
    let ns = NetNs::named(netns)?;
    ns.run(|| -> Result<Vec<TcpStream>> {
        let mut held = Vec::with_capacity(n);
        for i in 0..n {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .with_context(|| format!("idle connection {i} to {addr}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)
                .with_context(|| format!("echo on idle connection {i}"))?;
            held.push(s);
        }
        Ok(held)
    })?
}

/// Child processes killed when dropped, so a failed run leaves no server behind.
#[derive(Default)]
pub struct Children(pub Vec<Child>);

impl Children {
    pub fn pids(&self) -> Vec<u32> {
        self.0.iter().map(Child::id).collect()
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Istio's ztunnel (a binary built from its public source) in dedicated mode, one instance inside each of two
/// pods, with a fake CA and a local workload file: the same pod-to-pod HBONE path as ours, on the same links.
/// The client pod's outbound TCP is redirected to it the way Istio's own tests do (`PACKET_MARK` exempts the
/// proxy's own sockets).
pub struct IstioPair {
    children: Children,
}

impl IstioPair {
    pub fn start(binary: &Path, c: &Cluster, client: &str, server: &str) -> Result<Self> {
        let workload = |name: &str| {
            let p = c.pod(name);
            serde_json::json!({
                "uid": format!("cluster1//v1/Pod/default/{name}"), "name": name, "namespace": "default",
                "serviceAccount": name, "workloadIps": [p.ip.to_string()], "protocol": "HBONE",
                "node": c.nodes[p.spec.node].name, "network": "", "services": {},
            })
        };
        let file = c.dir.join("istio-ztunnel-workloads.yaml");
        let doc = serde_json::json!({"workloads": [workload(client), workload(server)]});
        std::fs::write(&file, serde_json::to_string(&doc)?)?;
        let mut pair = Self {
            children: Children::default(),
        };
        for name in [server, client] {
            let p = c.pod(name);
            let log = std::fs::File::create(c.dir.join(format!("istio-ztunnel-{name}.log")))?;
            let child = Command::new("ip")
                .args(["netns", "exec", &p.netns])
                .arg(binary)
                .env_clear()
                .env("PROXY_MODE", "dedicated")
                .env("PROXY_WORKLOAD_INFO", format!("default/{name}/{name}"))
                .env("LOCAL_XDS_PATH", &file)
                .env("XDS_ADDRESS", "")
                .env("FAKE_CA", "true")
                .env("PACKET_MARK", "1337")
                .env("ENABLE_ORIG_SRC", "false")
                .env("NODE_NAME", &c.nodes[p.spec.node].name)
                .env("RUST_LOG", "warn")
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting Istio's ztunnel")?;
            pair.children.0.push(child);
            let ns = p.netns.clone();
            poll(
                "Istio's ztunnel to be ready",
                Duration::from_secs(20),
                || {
                    http_get(&ns, "127.0.0.1:15021", "/healthz/ready")
                        .ok()
                        .filter(|(s, _)| *s == 200)
                },
            )
            .with_context(|| {
                std::fs::read_to_string(c.dir.join(format!("istio-ztunnel-{name}.log")))
                    .unwrap_or_default()
            })?;
        }
        let ns = &c.pod(client).netns;
        crate::sh(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "iptables",
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "!",
                "-o",
                "lo",
                "-m",
                "mark",
                "!",
                "--mark",
                "0x539/0xfff",
                "-j",
                "REDIRECT",
                "--to-ports",
                "15001",
            ],
        )?;
        Ok(pair)
    }

    /// Process ids: server side first, then client side.
    pub fn pids(&self) -> Vec<u32> {
        self.children.pids()
    }
}

/// Fails unless a connection from `netns` to `ip:port` went through Istio's ztunnel (its metrics count it).
pub fn istio_carried(netns: &str, ip: IpAddr) -> Result<f64> {
    let (_, body) = http_get(netns, "127.0.0.1:15020", "/metrics")?;
    let opened: f64 = body
        .lines()
        .filter(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"source\"")
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum();
    if opened == 0.0 {
        bail!("Istio's ztunnel in {netns} reports no connection towards {ip}");
    }
    Ok(opened)
}
