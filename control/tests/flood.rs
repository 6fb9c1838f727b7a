//! 15012 under a flood of useless connections: 2,000 idle and 200 slow (one byte a second) TCP connections while a
//! proxy keeps its xDS stream and a new proxy connects. The control plane raises its own descriptor limit (it is
//! started with the test's, often 1,024), stays ready, serves both proxies, and closes the idle connections at the
//! handshake timeout; past `maxConnections` new connections are closed at once and counted. Real binary, loopback.

mod process;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const IDLE: usize = 2000;
const SLOW: usize = 200;

fn add_pod(dir: &std::path::Path, n: usize) {
    std::fs::write(
        dir.join(format!("cluster/pod-{n}.yaml")),
        process::pod_yaml(n),
    )
    .unwrap();
}

#[test]
fn idle_and_slow_connections_do_not_starve_proxies() {
    let dir = process::cluster_dir("flood");
    // Started before the test raises its own limit: the control plane must raise its own.
    let control = process::start(&dir);
    control.wait_ready();
    mesh_core::socket::raise_fd_limit();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let early = control.proxy(&rt);

    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| TcpStream::connect(control.grpc).expect("connect"))
        .collect();
    let slow: Vec<TcpStream> = (0..SLOW)
        .map(|_| TcpStream::connect(control.grpc).expect("connect"))
        .collect();
    let mut slow_sample = slow[0].try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let dripping = {
        let (stop, mut slow) = (stop.clone(), slow);
        std::thread::spawn(move || {
            // The start of a TLS ClientHello, one byte per connection per second.
            let hello = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                for s in &mut slow {
                    let _ = s.write_all(&hello[i % hello.len()..][..1]);
                }
                i += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    // Held open: the control plane stays ready, the early stream gets a push, a new proxy joins.
    assert_eq!(control.get("/ready").map(|(c, _)| c), Some(200));
    add_pod(&dir, 0);
    process::wait(
        "the push on the early stream",
        Duration::from_secs(20),
        || early.0.lock().unwrap().len() == 2,
    );
    // A new proxy during the flood: it gets its first response.
    let _late = control.proxy(&rt);

    // Idle connections are closed at the handshake timeout (10 s).
    let mut sample = idle.into_iter().next().unwrap();
    sample
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 1];
    let started = Instant::now();
    match sample.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the server should close an idle connection: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    // A slow client (one byte a second, never a whole ClientHello) is closed at the same timeout.
    slow_sample
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match slow_sample.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the server should close a slow connection: {other:?}"),
    }
    stop.store(true, Ordering::Relaxed);
    dripping.join().unwrap();
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn past_max_connections_new_ones_are_closed_and_counted() {
    let dir = process::cluster_dir("cap");
    let control = process::start_with(&dir, "control", "maxConnections: 100\n");
    control.wait_ready();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let early = control.proxy(&rt);
    let held: Vec<TcpStream> = (0..150)
        .map(|_| TcpStream::connect(control.grpc).expect("connect"))
        .collect();
    process::wait("refusals counted", Duration::from_secs(10), || {
        control
            .metric("mesh_control_connections_refused_total")
            .is_some_and(|v| v >= 50.0)
    });
    // The established stream is one of the 100 and keeps working.
    add_pod(&dir, 0);
    process::wait(
        "the push on the early stream",
        Duration::from_secs(20),
        || early.0.lock().unwrap().len() == 2,
    );
    drop(held);
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}
