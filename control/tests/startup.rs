//! A (re)starting control plane serves nothing before its first config is published: a proxy that connects while
//! it loads 3,000 objects gets them all in its first response, and is never told to remove anything (it used to
//! get an empty snapshot first and delete everything it held). The real binary, in file mode, on loopback.

mod process;

use std::time::{Duration, Instant};

use process::Recording;

const PODS: usize = 3000;

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
    let control = process::start(&dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen = Recording::default();
    // The proxy starts dialing at once, while the control plane is still loading.
    rt.spawn(mesh_core::control::run_xds(
        control.plane(),
        process::node("node1"),
        seen.clone(),
    ));
    let mut ready_codes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.0.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no xDS response within 60 s");
        if let Some((code, _)) = control.get("/ready") {
            ready_codes.push(code);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let responses = seen.0.lock().unwrap().clone();
    assert_eq!(
        responses[0],
        (PODS, 0),
        "the first response holds every workload"
    );
    assert!(
        responses.iter().all(|(_, removed)| *removed == 0),
        "{responses:?}"
    );
    assert_eq!(control.get("/ready").map(|(code, _)| code), Some(200));
    // While loading, /ready said so (if it was asked before the first publish).
    assert!(
        ready_codes.iter().all(|c| *c == 503 || *c == 200),
        "{ready_codes:?}"
    );
    drop(control);
    rt.shutdown_background();
    let _ = std::fs::remove_dir_all(&dir);
}
