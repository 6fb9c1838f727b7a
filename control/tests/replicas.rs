//! Two control-plane replicas on the same config and CA (file mode, the real binary): a proxy connected to one
//! that stops reconnects to the other and resyncs without a full resend: it presents the versions it holds
//! (`initial_resource_versions`), and the other replica, whose versions are the same hashes of the same bytes,
//! sends nothing it already has. Later changes arrive from the new replica as usual.

mod process;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_core::control::XdsHandler;
use mesh_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;

const PODS: usize = 200;

/// A proxy that keeps what it receives (name → version) and records each response's counts.
#[derive(Clone, Default)]
struct Holding {
    held: Arc<Mutex<HashMap<String, String>>>,
    responses: Arc<Mutex<Vec<(usize, usize)>>>,
}

impl XdsHandler for Holding {
    fn type_urls(&self) -> Vec<String> {
        vec![mesh_proto::ADDRESS_TYPE_URL.into()]
    }
    fn versions(&self, _: &str) -> HashMap<String, String> {
        self.held.lock().unwrap().clone()
    }
    fn apply(&mut self, r: &DeltaDiscoveryResponse) -> Result<(), String> {
        let mut held = self.held.lock().unwrap();
        for name in &r.removed_resources {
            held.remove(name);
        }
        for res in &r.resources {
            held.insert(res.name.clone(), res.version.clone());
        }
        self.responses
            .lock()
            .unwrap()
            .push((r.resources.len(), r.removed_resources.len()));
        Ok(())
    }
}

/// A TCP forwarder standing in for the control plane's Service: new connections go to the current target.
fn service(target: Arc<Mutex<SocketAddr>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let to = *target.lock().unwrap();
            let Ok(upstream) = TcpStream::connect(to) else {
                continue;
            };
            for (mut r, mut w) in [
                (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                (upstream, client),
            ] {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = r.read(&mut buf) {
                        if n == 0 || w.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = w.shutdown(std::net::Shutdown::Both);
                    let _ = r.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    addr
}

#[test]
fn a_proxy_moves_to_the_other_replica_without_a_full_resend() {
    let dir = process::cluster_dir("replicas");
    let cluster = dir.join("cluster");
    let pods: Vec<String> = (0..PODS).map(process::pod_yaml).collect();
    std::fs::write(cluster.join("pods.yaml"), pods.join("---\n")).unwrap();
    let a = process::start_replica(&dir, "a");
    process::wait("replica a ready", Duration::from_secs(30), || {
        a.get("/ready").is_some_and(|(c, _)| c == 200)
    });
    // The second replica finds the first one's CA: one root for both.
    let b = process::start_replica(&dir, "b");
    process::wait("replica b ready", Duration::from_secs(30), || {
        b.get("/ready").is_some_and(|(c, _)| c == 200)
    });

    let target = Arc::new(Mutex::new(a.grpc));
    let front = service(target.clone());
    let mut plane = a.plane();
    plane.address = format!("https://{front}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = Holding::default();
    rt.spawn(mesh_core::control::run_xds(
        plane,
        process::node("node1"),
        proxy.clone(),
    ));
    process::wait(
        "the proxy to hold every workload",
        Duration::from_secs(30),
        || proxy.held.lock().unwrap().len() == PODS,
    );
    let before = proxy.responses.lock().unwrap().len();
    let held_before = proxy.held.lock().unwrap().clone();

    // Replica a stops; the Service now leads to b.
    *target.lock().unwrap() = b.grpc;
    drop(a);
    process::wait(
        "the proxy to resync with replica b",
        Duration::from_secs(30),
        || proxy.responses.lock().unwrap().len() > before,
    );
    process::wait(
        "replica b to count the stream",
        Duration::from_secs(30),
        || b.metric("pilot_xds") == Some(1.0),
    );
    let after: Vec<(usize, usize)> = proxy.responses.lock().unwrap()[before..].to_vec();
    assert_eq!(
        after,
        [(0, 0)],
        "the other replica resent what the proxy held"
    );
    assert_eq!(*proxy.held.lock().unwrap(), held_before);

    // A change afterwards comes from b, alone.
    std::fs::write(cluster.join("more.yaml"), process::pod_yaml(PODS)).unwrap();
    process::wait(
        "the new pod from replica b",
        Duration::from_secs(30),
        || proxy.held.lock().unwrap().len() == PODS + 1,
    );
    let last = *proxy.responses.lock().unwrap().last().unwrap();
    assert_eq!(last, (1, 0), "only the new workload is sent");
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}
