//! A (re)starting control plane serves nothing before its first config is published: a proxy that connects while
//! it loads 3,000 objects gets them all in its first response, and is never told to remove anything (it used to
//! get an empty snapshot first and delete everything it held). The real binary, in file mode, on loopback.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_core::control::{ControlPlane, XdsHandler};
use mesh_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;

const PODS: usize = 3000;

/// Every response's (resources, removed) counts.
struct Recording(Arc<Mutex<Vec<(usize, usize)>>>);

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

/// Kills the control plane when the test ends, even by a failed assertion (else it outlives the test and holds
/// the test runner's output pipe open).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn ready(addr: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /ready HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_proxy_connecting_during_startup_gets_the_whole_config_first() {
    let dir = std::env::temp_dir().join(format!("mesh-control-startup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = dir.join("cluster");
    std::fs::create_dir_all(&cluster).unwrap();
    std::fs::write(
        cluster.join("namespace.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n",
    )
    .unwrap();
    for file in 0..PODS / 500 {
        let pods: String = (0..500)
            .map(|i| {
                let n = file * 500 + i;
                format!(
                    "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web-{n}, namespace: shop, labels: {{app: web}}}}\nspec: {{nodeName: node1, serviceAccountName: web, containers: [{{name: c, image: x}}]}}\nstatus: {{podIP: 198.18.{}.{}}}\n",
                    n / 250,
                    n % 250 + 1
                )
            })
            .collect();
        std::fs::write(cluster.join(format!("pods-{file}.yaml")), pods).unwrap();
    }
    let (grpc, monitoring) = (free_port(), free_port());
    std::fs::write(dir.join("token"), "node-one-token\n").unwrap();
    std::fs::write(
        dir.join("control.yaml"),
        format!(
            "configDir: {d}/cluster\ncaDir: {d}/ca\ngrpcAddr: {grpc}\nmonitoringAddr: {monitoring}\nnodeTokens: [{{node: node1, tokenFile: {d}/token}}]\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let control = Command::new(env!("CARGO_BIN_EXE_control"))
        .arg("--config")
        .arg(dir.join("control.yaml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Reaped)
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let cp = ControlPlane {
        address: format!("https://{grpc}"),
        root_cert: dir.join("ca/root-cert.pem"),
        tls_name: "istiod.istio-system.svc".into(),
        token_file: dir.join("token"),
    };
    // The proxy starts dialing at once, while the control plane is still loading.
    rt.spawn(mesh_core::control::run_xds(
        cp,
        mesh_proto::envoy::config::core::v3::Node {
            id: "ztunnel~0.0.0.0~node1.istio-system~istio-system.svc.cluster.local".into(),
            ..Default::default()
        },
        Recording(seen.clone()),
    ));
    let mut ready_codes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no xDS response within 60 s");
        if let Some(code) = ready(monitoring) {
            ready_codes.push(code);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let responses = seen.lock().unwrap().clone();
    assert_eq!(
        responses[0],
        (PODS, 0),
        "the first response holds every workload"
    );
    assert!(
        responses.iter().all(|(_, removed)| *removed == 0),
        "{responses:?}"
    );
    assert_eq!(ready(monitoring), Some(200));
    // While loading, /ready said so (if it was asked before the first publish).
    assert!(
        ready_codes.iter().all(|c| *c == 503 || *c == 200),
        "{ready_codes:?}"
    );
    drop(control);
    rt.shutdown_background();
    let _ = std::fs::remove_dir_all(&dir);
}
