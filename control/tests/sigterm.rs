//! A stopping control plane does not wait for its proxies: with 100 proxies holding xDS streams, SIGTERM ends
//! every stream (UNAVAILABLE, so proxies reconnect elsewhere) and the process exits well inside its drain
//! deadline. The real binary, in file mode, on loopback.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_core::control::{ControlPlane, XdsHandler};
use mesh_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;

const PROXIES: usize = 100;

/// A proxy that counts the responses it gets (the first one is the initial snapshot).
struct Counting(Arc<AtomicUsize>);

impl XdsHandler for Counting {
    fn type_urls(&self) -> Vec<String> {
        vec![mesh_proto::ADDRESS_TYPE_URL.into()]
    }
    fn versions(&self, _: &str) -> HashMap<String, String> {
        HashMap::new()
    }
    fn apply(&mut self, _: &DeltaDiscoveryResponse) -> Result<(), String> {
        self.0.fetch_add(1, Ordering::AcqRel);
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

fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn wait_for(what: &str, deadline: Duration, f: impl Fn() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn sigterm_with_100_open_streams_exits_promptly() {
    let dir = std::env::temp_dir().join(format!("mesh-control-sigterm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("cluster")).unwrap();
    let (grpc, monitoring) = (free_port(), free_port());
    write(&dir.join("token"), "node-one-token\n");
    write(
        &dir.join("control.yaml"),
        &format!(
            "configDir: {d}/cluster\ncaDir: {d}/ca\ngrpcAddr: {grpc}\nmonitoringAddr: {monitoring}\nnodeTokens: [{{node: node1, tokenFile: {d}/token}}]\n",
            d = dir.display()
        ),
    );
    let mut control = Command::new(env!("CARGO_BIN_EXE_control"))
        .args(["--config"])
        .arg(dir.join("control.yaml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Reaped)
        .unwrap();
    wait_for("the control plane", Duration::from_secs(20), || {
        dir.join("ca/root-cert.pem").exists() && metric(monitoring, "pilot_xds").is_some()
    });

    let rt = tokio::runtime::Runtime::new().unwrap();
    let responses = Arc::new(AtomicUsize::new(0));
    let cp = ControlPlane {
        address: format!("https://{grpc}"),
        root_cert: dir.join("ca/root-cert.pem"),
        tls_name: "istiod.istio-system.svc".into(),
        token_file: dir.join("token"),
    };
    for i in 0..PROXIES {
        let node = mesh_proto::envoy::config::core::v3::Node {
            id: format!("ztunnel~0.0.0.0~proxy-{i}.istio-system~istio-system.svc.cluster.local"),
            ..Default::default()
        };
        rt.spawn(mesh_core::control::run_xds(
            cp.clone(),
            node,
            Counting(responses.clone()),
        ));
    }
    wait_for("100 connected proxies", Duration::from_secs(30), || {
        metric(monitoring, "pilot_xds") == Some(PROXIES as f64)
    });
    assert!(
        responses.load(Ordering::Acquire) >= PROXIES,
        "each got its snapshot"
    );

    let stopped = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(control.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = loop {
        if let Some(s) = control.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM with {PROXIES} streams open"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = stopped.elapsed();
    assert!(status.success(), "{status}");
    // Streams end at once; the 5 s drain deadline is only for calls that do not.
    assert!(took < Duration::from_secs(3), "exit took {took:?}");
    eprintln!("control exited {took:?} after SIGTERM with {PROXIES} xDS streams open");
    rt.shutdown_background();
    let _ = std::fs::remove_dir_all(&dir);
}
