//! What a person sees when ztunnel cannot start: one line naming the file, the field and a likely fix, exit 1;
//! and logs without colour codes when they do not go to a terminal.

use std::process::Command;

#[test]
fn a_config_typo_is_one_line_with_a_suggestion() {
    let path = std::env::temp_dir().join(format!("zt-cli-{}.yaml", std::process::id()));
    std::fs::write(&path, "nodeName: n1\nnodeNmae: typo\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ztunnel"))
        .arg("--config")
        .arg(&path)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: invalid ztunnel config: config file "),
        "{stderr}"
    );
    assert!(
        stderr.contains("unknown field `nodeNmae` (did you mean `nodeName`?)"),
        "{stderr}"
    );
}

#[test]
fn logs_to_a_file_carry_no_colour_codes() {
    let dir = std::env::temp_dir().join(format!("zt-cli-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.yaml");
    std::fs::write(&state, "workloads: []\nservices: []\n").unwrap();
    // The admin port is taken: ztunnel logs its start-up, then fails to bind and exits.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ztunnel"))
        .env("NODE_NAME", "n1")
        .env("LOCAL_STATE_FILE", &state)
        .env("DEV_CA_DIR", dir.join("ca"))
        .env("ZTUNNEL_RUN_DIR", dir.join("run"))
        .env("ADMIN_ADDR", taken.local_addr().unwrap().to_string())
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("READINESS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let all = [out.stdout, out.stderr].concat();
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.contains("INFO") || text.contains("DEBUG"),
        "no log lines: {text}"
    );
    assert!(
        !all.contains(&0x1b),
        "ANSI escape in: {}",
        String::from_utf8_lossy(&all)
    );
}

fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        code,
        out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string(),
    )
}

fn free() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn log_level_changes_at_runtime_and_json_logs_on_request() {
    let dir = std::env::temp_dir().join(format!("zt-cli-logging-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.yaml");
    std::fs::write(&state, "workloads: []\nservices: []\n").unwrap();
    let admin = free();
    let log = dir.join("ztunnel.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ztunnel"))
        .env("NODE_NAME", "n1")
        .env("LOCAL_STATE_FILE", &state)
        .env("DEV_CA_DIR", dir.join("ca"))
        .env("ZTUNNEL_RUN_DIR", dir.join("run"))
        .env("ADMIN_ADDR", admin.to_string())
        .env("METRICS_ADDR", free().to_string())
        .env("READINESS_ADDR", free().to_string())
        .env("RUST_LOG", "info")
        .env("LOG_FORMAT", "json")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(admin).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "admin port never opened"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        http(admin, "GET", "/logging"),
        (200, "log filter: info\n".into())
    );
    assert_eq!(http(admin, "POST", "/logging?level=debug").0, 200);
    assert_eq!(http(admin, "GET", "/logging").1, "log filter: debug\n");
    let (code, body) = http(admin, "POST", "/logging?level=not%3Da%3Dfilter%3D");
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        http(admin, "GET", "/logging").1,
        "log filter: debug\n",
        "a bad filter changes nothing"
    );
    let _ = child.kill();
    let _ = child.wait();
    // Every line is one JSON object; debug lines appeared after the switch.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["level"] == "INFO"));
    let _ = std::fs::remove_dir_all(&dir);
}
