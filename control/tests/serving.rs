//! The control plane's serving certificate on 15012 renews itself: with a 3 s lifetime it is replaced every
//! 1.5 s, an xDS stream opened before the first renewal keeps flowing (never reconnects), and a proxy that
//! arrives after several renewals joins (it would fail with "certificate expired" on the first one).

mod process;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

/// The certificate the control plane presents now: (serial, lifetime in seconds).
async fn served(addr: std::net::SocketAddr, root: &std::path::Path) -> (Vec<u8>, i64) {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(root).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(mesh_core::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            ServerName::try_from("istiod.istio-system.svc").unwrap(),
            tcp,
        )
        .await
        .expect("the current serving certificate verifies");
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let v = cert.validity();
    (
        cert.raw_serial().to_vec(),
        v.not_after.timestamp() - v.not_before.timestamp(),
    )
}

#[test]
fn the_serving_certificate_rotates_under_traffic_and_new_proxies_still_join() {
    let dir = process::cluster_dir("serving");
    let control = process::start_with(&dir, "control", "servingCertificateTtl: 3s\n");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let early = control.proxy(&rt);

    // Three renewals observed by fresh handshakes, each certificate living about its 3 s (plus a small backdate).
    let root = dir.join("ca/root-cert.pem");
    let mut serials = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while serials.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "saw only {} serving certificates",
            serials.len()
        );
        let (serial, lifetime) = rt.block_on(served(control.grpc, &root));
        assert!((3..=4).contains(&lifetime), "lifetime {lifetime}s");
        serials.insert(serial);
        std::thread::sleep(Duration::from_millis(200));
    }

    // The early stream never broke: one response, one connected stream, and it still receives pushes.
    assert_eq!(
        early.0.lock().unwrap().len(),
        1,
        "the early proxy reconnected"
    );
    // A proxy joining after the renewals: it gets its first response.
    let _late = control.proxy(&rt);
    process::wait("both streams counted", Duration::from_secs(30), || {
        control.metric("pilot_xds") == Some(2.0)
    });
    std::fs::write(
        dir.join("cluster/pod.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: shop}\nspec: {nodeName: node1, serviceAccountName: web, containers: [{name: c, image: x}]}\nstatus: {podIP: 198.18.0.1}\n",
    )
    .unwrap();
    process::wait(
        "the push to reach the early stream",
        Duration::from_secs(30),
        || early.0.lock().unwrap().len() == 2,
    );
    assert_eq!(early.0.lock().unwrap()[1], (1, 0));
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}
