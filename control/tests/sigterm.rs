//! A stopping control plane does not wait for its proxies: with 100 proxies holding xDS streams, SIGTERM ends
//! every stream (UNAVAILABLE, so proxies reconnect elsewhere) and the process exits well inside its drain
//! deadline. The real binary, in file mode, on loopback.

mod process;

use std::time::{Duration, Instant};

use process::Recording;

const PROXIES: usize = 100;

fn wait_for(what: &str, deadline: Duration, f: impl Fn() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_with_100_open_streams_exits_promptly() {
    let dir = std::env::temp_dir().join(format!("mesh-control-sigterm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("cluster")).unwrap();
    let mut control = process::start(&dir);
    wait_for("the control plane", Duration::from_secs(20), || {
        control.get("/ready").is_some_and(|(code, _)| code == 200)
    });

    let rt = tokio::runtime::Runtime::new().unwrap();
    let responses = Recording::default();
    for i in 0..PROXIES {
        rt.spawn(mesh_core::control::run_xds(
            control.plane(),
            process::node(&format!("proxy-{i}")),
            responses.clone(),
        ));
    }
    wait_for("100 connected proxies", Duration::from_secs(30), || {
        control.metric("pilot_xds") == Some(PROXIES as f64)
    });
    // A stream is counted before its first response is written.
    wait_for("each proxy's snapshot", Duration::from_secs(30), || {
        responses.0.lock().unwrap().len() >= PROXIES
    });

    let stopped = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(control.process.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = loop {
        if let Some(s) = control.process.0.try_wait().unwrap() {
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
