//! A waypoint that has no config and no certificate yet (its control plane does not answer, as when its token is
//! refused) says so on `/healthz/ready` with 503, instead of reporting ready while refusing every request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

fn free() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waypoint_without_config_or_certificate_is_not_ready() {
    let dir = std::env::temp_dir().join(format!("wp-ready-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ca = mesh_core::ca::CertificateAuthority::generate("cluster.local").unwrap();
    std::fs::write(dir.join("root.pem"), ca.root_pem()).unwrap();
    std::fs::write(dir.join("token"), "refused\n").unwrap();
    let readiness = free();
    let cfg = waypoint::config::Config {
        name: "waypoint".into(),
        namespace: "shop".into(),
        control_plane: Some(mesh_core::control::ControlPlane {
            address: format!("https://{}", free()),
            root_cert: dir.join("root.pem"),
            tls_name: "istiod.istio-system.svc".into(),
            token_file: dir.join("token"),
        }),
        hbone_addr: free(),
        admin_addr: free(),
        metrics_addr: free(),
        readiness_addr: readiness,
        ..Default::default()
    };
    let wp = waypoint::Waypoint::start(cfg).await.unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(readiness).unwrap();
        s.write_all(b"GET /healthz/ready HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(
        out.starts_with("HTTP/1.1 503") || out.starts_with("HTTP/1.0 503"),
        "{out}"
    );
    assert!(
        out.contains("waiting for a first config from the control plane"),
        "{out}"
    );
    wp.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
