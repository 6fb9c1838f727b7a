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
