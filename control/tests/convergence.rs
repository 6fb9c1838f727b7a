//! `pilot_proxy_convergence_time` measures how long a change takes to reach a proxy, not how old the config is
//! when a proxy connects: a proxy that connects after the config sat unchanged records nothing for its first
//! response, and a change pushed to it afterwards records about the push time. Real binary, loopback.

mod process;

use std::time::Duration;

/// One Pod on node1: a change every connected proxy is sent.
fn add_pod(dir: &std::path::Path) {
    std::fs::write(
        dir.join("cluster/pod.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: shop}\nspec: {nodeName: node1, serviceAccountName: web, containers: [{name: c, image: x}]}\nstatus: {podIP: 198.18.0.1}\n",
    )
    .unwrap();
}

#[test]
fn convergence_counts_pushed_changes_only() {
    let dir = process::cluster_dir("convergence");
    let control = process::start(&dir);
    control.wait_ready();
    // The config ages while nobody is connected (deliberately: this is what the old metric reported).
    std::thread::sleep(Duration::from_secs(2));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = control.proxy(&rt);
    add_pod(&dir);
    process::wait(
        "the change to reach the proxy",
        Duration::from_secs(20),
        || proxy.0.lock().unwrap().len() == 2,
    );
    process::wait(
        "its convergence to be recorded",
        Duration::from_secs(20),
        || {
            control
                .metric("pilot_proxy_convergence_time_count")
                .is_some_and(|c| c >= 1.0)
        },
    );
    // Only the change counts, and it took a moment: had the first response been recorded too, the config's
    // 2 s of age would be in the sum.
    assert_eq!(
        control.metric("pilot_proxy_convergence_time_count"),
        Some(1.0)
    );
    let sum = control.metric("pilot_proxy_convergence_time_sum").unwrap();
    assert!(sum < 1.0, "{sum} s recorded for one pushed change");
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}

/// File mode reacts to a change when it happens (inotify), not on its next poll: with a ten-minute poll, a new
/// Pod still reaches a connected proxy within seconds.
#[test]
fn a_file_change_is_picked_up_without_waiting_for_the_poll() {
    let dir = process::cluster_dir("inotify");
    let control = process::start_with(&dir, "control", "pollInterval: 10m\n");
    control.wait_ready();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = control.proxy(&rt);
    add_pod(&dir);
    process::wait(
        "the change to reach the proxy well before the next poll",
        Duration::from_secs(10),
        || proxy.0.lock().unwrap().len() == 2,
    );
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}
