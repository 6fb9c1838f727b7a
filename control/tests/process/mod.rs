//! The real `control` binary in file mode on loopback, and a proxy's view of it: shared by the process tests.
// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use mesh_core::control::{ControlPlane, XdsHandler};
use mesh_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;

/// Kills the control plane when the test ends, even by a failed assertion (else it outlives the test and holds
/// the test runner's output pipe open).
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running control plane and how to reach it.
pub struct Control {
    pub process: Reaped,
    pub dir: PathBuf,
    pub grpc: SocketAddr,
    pub monitoring: SocketAddr,
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts `control` on `dir/cluster` (which the caller fills first), with node1's bootstrap token.
pub fn start(dir: &Path) -> Control {
    start_replica(dir, "control")
}

/// Starts a replica named `name` (its config `dir/<name>.yaml`) on the same cluster directory and CA as others.
pub fn start_replica(dir: &Path, name: &str) -> Control {
    start_with(dir, name, "")
}

/// [`start_replica`] with `extra` appended to its config file.
pub fn start_with(dir: &Path, name: &str, extra: &str) -> Control {
    let (grpc, monitoring) = (free_port(), free_port());
    std::fs::write(dir.join("token"), "node-one-token\n").unwrap();
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "configDir: {d}/cluster\ncaDir: {d}/ca\ngrpcAddr: {grpc}\nmonitoringAddr: {monitoring}\nnodeTokens: [{{node: node1, tokenFile: {d}/token}}]\n{extra}",
            d = dir.display()
        ),
    )
    .unwrap();
    let process = Command::new(env!("CARGO_BIN_EXE_control"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Reaped)
        .unwrap();
    Control {
        process,
        dir: dir.to_path_buf(),
        grpc,
        monitoring,
    }
}

impl Control {
    /// How node1's ztunnel reaches it.
    pub fn plane(&self) -> ControlPlane {
        ControlPlane {
            address: format!("https://{}", self.grpc),
            root_cert: self.dir.join("ca/root-cert.pem"),
            tls_name: "istiod.istio-system.svc".into(),
            token_file: self.dir.join("token"),
        }
    }

    /// GET on the monitoring port: the status code and body.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(self.monitoring).ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let code = out.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, out))
    }

    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics")?;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}

pub fn node(name: &str) -> mesh_proto::envoy::config::core::v3::Node {
    mesh_proto::envoy::config::core::v3::Node {
        id: format!("ztunnel~0.0.0.0~{name}.istio-system~istio-system.svc.cluster.local"),
        ..Default::default()
    }
}

/// A proxy that records each response's (resources, removed) counts.
#[derive(Clone, Default)]
pub struct Recording(pub Arc<Mutex<Vec<(usize, usize)>>>);

impl XdsHandler for Recording {
    fn type_urls(&self) -> Vec<String> {
        vec![mesh_proto::ADDRESS_TYPE_URL.into()]
    }
    fn versions(&self, _: &str) -> HashMap<String, String> {
        HashMap::new()
    }
    fn apply(&mut self, r: &DeltaDiscoveryResponse) -> Result<(), String> {
        self.0
            .lock()
            .unwrap()
            .push((r.resources.len(), r.removed_resources.len()));
        Ok(())
    }
}

/// A fresh test directory whose `cluster/` holds an ambient namespace `shop`.
pub fn cluster_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mesh-control-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("cluster")).unwrap();
    std::fs::write(
        dir.join("cluster/namespace.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n",
    )
    .unwrap();
    dir
}

/// Pod `web-<n>` of `shop` on node1, at an address of its own.
pub fn pod_yaml(n: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web-{n}, namespace: shop, labels: {{app: web}}}}\nspec: {{nodeName: node1, serviceAccountName: web, containers: [{{name: c, image: x}}]}}\nstatus: {{podIP: 198.18.{}.{}}}\n",
        n / 250,
        n % 250 + 1
    )
}

/// Polls `f` until it holds; fails the test after `deadline`.
pub fn wait(what: &str, deadline: std::time::Duration, f: impl Fn() -> bool) {
    let end = std::time::Instant::now() + deadline;
    while !f() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl Control {
    /// Waits until `/ready` answers 200.
    pub fn wait_ready(&self) {
        wait(
            "the control plane to be ready",
            std::time::Duration::from_secs(20),
            || self.get("/ready").is_some_and(|(c, _)| c == 200),
        );
    }

    /// A proxy (node1's) with an xDS stream open on `rt`, once it has its first response.
    pub fn proxy(&self, rt: &tokio::runtime::Runtime) -> Recording {
        let seen = Recording::default();
        rt.spawn(mesh_core::control::run_xds(
            self.plane(),
            node("node1"),
            seen.clone(),
        ));
        wait(
            "a proxy's first response",
            std::time::Duration::from_secs(30),
            || !seen.0.lock().unwrap().is_empty(),
        );
        seen
    }
}
