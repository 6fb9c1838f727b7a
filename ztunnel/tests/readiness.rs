//! Readiness tells the truth: ztunnel answers 503 on `/healthz/ready`, naming what it waits for, until the node
//! agent's snapshot arrived and a first workload config is loaded (here the control plane is unreachable, so it
//! stays unready); the waypoint likewise until it has config and its certificate. No root: no pods.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use mesh_core::control::ControlPlane;
use mesh_core::zds::ZdsListener;
use mesh_proto::istio::workload::zds::{
    workload_request::Payload, SnapshotSent, WorkloadRequest, WorkloadResponse, ZdsHello,
};

fn free() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn ready(addr: SocketAddr) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /healthz/ready HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        code,
        out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string(),
    )
}

fn until(what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A control plane nobody answers at, with a real root and token file so the client can be built.
fn unreachable_control_plane(dir: &std::path::Path) -> ControlPlane {
    let ca = mesh_core::ca::CertificateAuthority::generate("cluster.local").unwrap();
    std::fs::write(dir.join("root.pem"), ca.root_pem()).unwrap();
    std::fs::write(dir.join("token"), "t\n").unwrap();
    ControlPlane {
        address: format!("https://{}", free()),
        root_cert: dir.join("root.pem"),
        tls_name: "istiod.istio-system.svc".into(),
        token_file: dir.join("token"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnel_is_not_ready_without_pods_and_config() {
    let dir = std::env::temp_dir().join(format!("zt-ready-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let readiness = free();
    let cfg = ztunnel::config::Config {
        node_name: "n1".into(),
        control_plane: Some(unreachable_control_plane(&dir)),
        run_dir: dir.join("run"),
        admin_addr: free(),
        metrics_addr: free(),
        readiness_addr: readiness,
        ..Default::default()
    };
    let zt = ztunnel::Ztunnel::start(cfg).await.unwrap();
    let (code, body) = tokio::task::spawn_blocking(move || ready(readiness))
        .await
        .unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("node agent's pods"), "{body}");

    // A node agent with no pods: its snapshot is all ztunnel waits for from it.
    let listener = ZdsListener::bind(&dir.join("run/ztunnel.sock")).unwrap();
    let agent = std::thread::spawn(move || {
        let sock = listener.accept().unwrap();
        let (hello, _) = sock.recv::<ZdsHello>().unwrap().unwrap();
        assert_eq!(hello.version, 1);
        let done = WorkloadRequest {
            payload: Some(Payload::SnapshotSent(SnapshotSent {})),
        };
        sock.send(&done, None).unwrap();
        let _ = sock.recv::<WorkloadResponse>().unwrap();
        sock
    });
    tokio::task::spawn_blocking(move || {
        until("the snapshot to be applied", || {
            ready(readiness).1.contains("first workload config")
        });
        // The control plane never answers: still unready, saying why.
        assert_eq!(ready(readiness).0, 503);
    })
    .await
    .unwrap();
    let _agent = agent.join().unwrap();
    zt.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
