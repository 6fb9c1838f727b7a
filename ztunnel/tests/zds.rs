//! ztunnel's side of ZDS against a peer that speaks Istio's wire format byte for byte (as istio-cni's node agent
//! does), and against one that does not: every request is acknowledged, bad ones with a reason, and garbage ends
//! the connection without harming ztunnel. No root: no real namespace is passed (the netns suites do that).

use std::os::fd::AsFd;
use std::sync::Arc;

use mesh_core::ca::CertificateAuthority;
use mesh_core::certs::{CertManager, Issuer};
use mesh_core::drain::Drain;
use mesh_core::workload::state::StateStore;
use mesh_core::zds::ZdsSocket;
use mesh_proto::istio::workload::zds::{workload_response, WorkloadResponse, ZdsHello};
use mesh_proto::prost::Message;
use prometheus_client::registry::Registry;
use ztunnel::config::Config;
use ztunnel::inpod::Pods;
use ztunnel::metrics::Metrics;
use ztunnel::proxy::ProxyCtx;

fn pods(drain: &Drain) -> Arc<Pods> {
    let cfg = Arc::new(Config {
        node_name: "n1".into(),
        ..Config::default()
    });
    let ctx = Arc::new(ProxyCtx {
        certs: Arc::new(CertManager::new(
            Issuer::Dev(Box::new(
                CertificateAuthority::generate(&cfg.trust_domain).unwrap(),
            )),
            cfg.certificate_ttl,
        )),
        cfg,
        state: StateStore::default(),
        metrics: Metrics::register(&mut Registry::default()),
        drain: drain.watch(),
        conns: Default::default(),
    });
    Arc::new(Pods::new(ctx))
}

/// The ack's error text ("" on success).
fn ack(agent: &ZdsSocket) -> String {
    let (resp, _) = agent
        .recv::<WorkloadResponse>()
        .unwrap()
        .expect("an answer");
    match resp.payload {
        Some(workload_response::Payload::Ack(a)) => a.error,
        None => panic!("response without an ack"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaks_istio_zds_and_survives_garbage() {
    let drain = Drain::new();
    let pods = pods(&drain);
    let (agent, zt) = ZdsSocket::pair().unwrap();
    let p = pods.clone();
    let session = std::thread::spawn(move || ztunnel::inpod::zds::session(&p, &zt));

    let (hello, fd) = agent.recv::<ZdsHello>().unwrap().expect("hello");
    assert!(fd.is_none());
    assert_eq!(
        hello.encode_to_vec(),
        [0x08, 0x01],
        "ZdsHello{{version: V1}}"
    );

    // WorkloadRequest{add: AddWorkload{uid: "u1", workload_info: {name: "web", namespace: "prod"}}}, encoded
    // by hand from Istio's field numbers, without the namespace descriptor it requires.
    let info = [
        0x0a, 0x03, b'w', b'e', b'b', 0x12, 0x04, b'p', b'r', b'o', b'd',
    ];
    let mut add = vec![0x0a, 0x02, b'u', b'1', 0x12, info.len() as u8];
    add.extend_from_slice(&info);
    let mut req = vec![0x0a, add.len() as u8];
    req.extend_from_slice(&add);
    agent.send_bytes(&req, None).unwrap();
    let e = ack(&agent);
    assert!(
        e.contains("pod u1") && e.contains("no network namespace"),
        "{e}"
    );

    // A descriptor that is not a network namespace: refused with the reason, nothing enrolled.
    let not_a_netns = std::fs::File::open("/proc/self/stat").unwrap();
    agent.send_bytes(&req, Some(not_a_netns.as_fd())).unwrap();
    let e = ack(&agent);
    assert!(e.contains("reading its network namespace"), "{e}");

    // keep (field 5) before the snapshot, then snapshot_sent (field 3): ztunnel is synced, with no pods.
    assert!(!pods.synced());
    agent
        .send_bytes(&[0x2a, 0x04, 0x0a, 0x02, b'u', b'2'], None)
        .unwrap();
    assert_eq!(ack(&agent), "");
    agent.send_bytes(&[0x1a, 0x00], None).unwrap();
    assert_eq!(ack(&agent), "");
    assert!(pods.synced());
    assert!(pods.dump().is_empty());

    // A second snapshot_sent would name no pod and stop them all: refused.
    agent.send_bytes(&[0x1a, 0x00], None).unwrap();
    assert!(ack(&agent).contains("snapshot already sent"));
    // keep after the snapshot is a protocol error; del (uid is field 2) of an unknown pod is fine.
    agent
        .send_bytes(&[0x2a, 0x04, 0x0a, 0x02, b'u', b'2'], None)
        .unwrap();
    assert!(ack(&agent).contains("after the snapshot"));
    agent
        .send_bytes(&[0x12, 0x04, 0x12, 0x02, b'u', b'3'], None)
        .unwrap();
    assert_eq!(ack(&agent), "");
    // A request with only a field ztunnel does not know (a newer agent) is refused, not fatal; bytes that are
    // no protobuf end the session.
    agent.send_bytes(&[0x38, 0x01], None).unwrap();
    assert!(ack(&agent).contains("without a payload"));
    agent.send_bytes(&[0xff, 0xff, 0xff, 0xff], None).unwrap();
    let ended = session.join().expect("the session thread does not panic");
    assert!(ended.is_err(), "garbage ends the connection: {ended:?}");
}
