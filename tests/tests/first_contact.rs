//! A newcomer's first steps, as written: the README's "Running the mesh by hand" section (its shell blocks in
//! order, in one bash, from a directory whose `examples/` and `target/debug/` are the repository's and the built
//! binaries, inside a network namespace the test makes, the "node", so nothing touches the host's network), the
//! local run with `--fault`, and every binary's `--version`. The docs cannot rot without this failing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mesh_tests::{bin, sh};

const SECTION: &str = "## Running the mesh by hand";
const NODE: &str = "mesh-ex-node";
/// The pods `examples/pods.sh` makes (netns `mesh-ex-<name>`).
const PODS: [&str; 4] = ["sleep", "order-v1", "order-v2", "waypoint"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `sh` code blocks of the README section, in order, as one script.
fn section_script(readme: &str) -> String {
    let start = readme
        .find(SECTION)
        .expect("README has the by-hand section");
    let body = &readme[start + SECTION.len()..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    let mut script = String::new();
    let mut in_block = false;
    for line in body.lines() {
        match (in_block, line.trim_end()) {
            (false, "```sh") => in_block = true,
            (true, "```") => in_block = false,
            (true, l) => {
                script.push_str(l);
                script.push('\n');
            }
            _ => {}
        }
    }
    script
}

/// Removes whatever the section (or a failed run of it) left: processes in the node and pod namespaces, the
/// namespaces themselves.
fn cleanup() {
    let names = PODS
        .iter()
        .map(|p| format!("mesh-ex-{p}"))
        .chain([NODE.to_string()]);
    for ns in names {
        if !Path::new("/run/netns").join(&ns).exists() {
            continue;
        }
        if let Ok(pids) = sh("ip", &["netns", "pids", &ns]) {
            for pid in pids.split_whitespace().filter_map(|p| p.parse().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = sh("ip", &["netns", "del", &ns]);
    }
}

struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        cleanup();
    }
}

/// A working directory like the repository root: `examples/` and `target/debug/` (wherever cargo built).
fn workdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mesh-by-hand-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("target")).unwrap();
    std::os::unix::fs::symlink(repo().join("examples"), dir.join("examples")).unwrap();
    let bins = bin("control").unwrap().parent().unwrap().to_path_buf();
    std::os::unix::fs::symlink(bins, dir.join("target/debug")).unwrap();
    dir
}

/// The child's exit status, polled until `limit`; past it the child is killed and `None` returned.
fn exit_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log(name: &str) -> String {
    std::fs::read_to_string(Path::new("/tmp/mesh-example").join(name)).unwrap_or_default()
}

#[test]
fn the_readme_by_hand_section_runs_as_written() {
    mesh_tests::require_netns!();
    let script = section_script(&std::fs::read_to_string(repo().join("README.md")).unwrap());
    for piece in [
        "target/debug/control",
        "target/debug/ztunnel",
        "target/debug/waypoint",
    ] {
        assert!(script.contains(piece), "the section no longer runs {piece}");
    }
    cleanup();
    let _cleanup = Cleanup;
    let dir = workdir();
    sh("ip", &["netns", "add", NODE]).unwrap();
    sh("ip", &["-n", NODE, "link", "set", "lo", "up"]).unwrap();
    let out_file = dir.join("stdout");
    let err_file = dir.join("stderr");
    let mut child = Command::new("ip")
        .args([
            "netns", "exec", NODE, "bash", "-euo", "pipefail", "-c", &script,
        ])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    let status = exit_within(&mut child, Duration::from_secs(180));
    let stdout = std::fs::read_to_string(&out_file).unwrap();
    let stderr = std::fs::read_to_string(&err_file).unwrap();
    let context = format!(
        "status {status:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- control.log\n{}\n--- ztunnel.log\n{}\n--- waypoint.log\n{}\n--- agent.log\n{}",
        log("control.log"),
        log("ztunnel.log"),
        log("waypoint.log"),
        log("agent.log")
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "the section failed\n{context}"
    );
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    // `x-canary: true` always reaches the canary (v2).
    assert!(lines.contains(&"version=v2"), "no canary reply\n{context}");
    // The 90/10 split over 100 requests: v2 ~ Binomial(100, 0.1), sd 3; 1..=30 fails once in ~40,000 runs.
    let count = |version: &str| -> usize {
        lines
            .iter()
            .find_map(|l| l.strip_suffix(&format!(" version={version}"))?.parse().ok())
            .unwrap_or(0)
    };
    let (v1, v2) = (count("v1"), count("v2"));
    assert_eq!(v1 + v2, 100, "not every request was routed\n{context}");
    assert!(
        (1..=30).contains(&v2),
        "split off: v1 {v1}, v2 {v2}\n{context}"
    );
    // ztunnel's metrics count mutual-TLS connections.
    let mtls = lines.iter().find_map(|l| {
        l.strip_prefix("mTLS connection series: ")?
            .parse::<usize>()
            .ok()
    });
    assert!(
        mtls.is_some_and(|n| n >= 1),
        "no mutual_tls series\n{context}"
    );
    // It cleaned up after itself: no socket in the run directory (the agent removes its own on SIGTERM, ztunnel
    // makes none), no pod namespace.
    let run = Path::new("/tmp/mesh-example/run");
    let sockets: Vec<_> = std::fs::read_dir(run)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_type()
                .is_ok_and(|t| std::os::unix::fs::FileTypeExt::is_socket(&t))
        })
        .map(|e| e.path())
        .collect();
    assert!(sockets.is_empty(), "left behind: {sockets:?}\n{context}");
    for p in PODS {
        assert!(
            !Path::new("/run/netns")
                .join(format!("mesh-ex-{p}"))
                .exists(),
            "pod {p} left behind\n{context}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `examples/cluster` holds the seed's manifests byte for byte (the ones the other tests load), so the by-hand
/// setup runs the user's own YAML, unchanged.
#[test]
fn the_example_cluster_holds_the_seed_unchanged() {
    let seed = repo().join("model/tests/seed");
    let mut n = 0;
    for entry in std::fs::read_dir(&seed).unwrap() {
        let path = entry.unwrap().path();
        let copy = repo()
            .join("examples/cluster")
            .join(path.file_name().unwrap());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&copy).unwrap_or_default(),
            "{} differs from {}",
            copy.display(),
            path.display()
        );
        n += 1;
    }
    assert_eq!(n, 4, "the seed has four manifests");
}

/// The local run (`scripts/run-local.sh --once --fault v1 --keep-logs DIR`): the demo's checks pass, then the
/// waypoint ejects the failing version; the logs are kept.
#[test]
fn the_local_run_shows_the_split_then_ejects_a_failing_version() {
    mesh_tests::require_netns!();
    let keep = std::env::temp_dir().join(format!("mesh-local-logs-{}", std::process::id()));
    let out = Command::new(bin("mesh-local").unwrap())
        .args(["--once", "--fault", "v1", "--keep-logs"])
        .arg(&keep)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!(
        "{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "mesh-local failed\n{context}");
    for line in [
        "outlier detection ejected order-v1 from cluster outbound|80|stable|",
        "ok: the mesh carried the demo traffic",
    ] {
        assert!(stdout.contains(line), "missing {line:?}\n{context}");
    }
    // While v1 is ejected, the 10% canary share still answers from v2, and nothing reaches v1.
    let during = stdout
        .lines()
        .find(|l| l.contains("200 requests while it is ejected"))
        .unwrap_or_else(|| panic!("no line for the ejection\n{context}"));
    assert!(during.contains("\"v2\""), "{during}");
    assert!(!during.contains("\"v1\""), "{during}");
    let control_log = std::fs::read_to_string(keep.join("control.log")).unwrap_or_default();
    assert!(
        control_log.contains("serving"),
        "--keep-logs kept no control.log in {}",
        keep.display()
    );
    let _ = std::fs::remove_dir_all(&keep);
}

/// The live local run (`scripts/run-local.sh` without `--once`): demo traffic and a table read from the proxies'
/// metrics, then Ctrl-C ends it cleanly, leaving no namespace behind.
#[test]
fn the_live_local_run_shows_its_table_and_ends_cleanly_on_ctrl_c() {
    mesh_tests::require_netns!();
    let out_file = std::env::temp_dir().join(format!("mesh-live-{}.out", std::process::id()));
    let mut child = Command::new(bin("mesh-local").unwrap())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&out_file).unwrap_or_default();
    let table = mesh_tests::poll("the live table", Duration::from_secs(90), || {
        let out = read();
        // A whole table: a rate for each version, then the edges, the waypoint's to both versions over mTLS.
        let last = out
            .rsplit("order-service through the waypoint")
            .next()?
            .to_string();
        let rate = |v: &str| -> Option<f64> {
            last.lines()
                .find(|l| l.trim_start().starts_with(v))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        (rate("v1")? > 0.0
            && rate("v2")? > 0.0
            && last.contains("waypoint -> order-v1  mutual_tls")
            && last.contains("waypoint -> order-v2  mutual_tls"))
        .then_some(last)
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let status = exit_within(&mut child, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("mesh-local did not end on Ctrl-C:\n{}", read()));
    let out = read();
    let _ = std::fs::remove_file(&out_file);
    table.unwrap_or_else(|e| panic!("{e}:\n{out}"));
    assert!(
        status.success() && out.contains("tearing down"),
        "{status:?}\n{out}"
    );
    // Its namespaces are named after the pods it printed: `netns <prefix>-sleep`.
    let prefix = out
        .split_whitespace()
        .find_map(|w| w.strip_suffix("-sleep"))
        .unwrap_or_else(|| panic!("no sleep pod in:\n{out}"))
        .to_string();
    let left = mesh_tests::sh("ip", &["netns", "list"]).unwrap();
    assert!(
        !left.contains(&format!("{prefix}-")),
        "namespaces left behind:\n{left}"
    );
}

/// `--version` of every binary says its own name, the version and the git commit it was built from.
#[test]
fn every_binary_says_its_name_version_and_commit() {
    let version = env!("CARGO_PKG_VERSION");
    for name in [
        "control",
        "ztunnel",
        "waypoint",
        "mesh-cni-agent",
        "mesh-cni",
        "meshctl",
        "mesh-local",
    ] {
        let out = Command::new(bin(name).unwrap())
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success(), "{name} --version failed");
        let line = String::from_utf8(out.stdout).unwrap();
        let commit = line
            .trim()
            .strip_prefix(&format!("{name} {version} (commit "))
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{name} --version printed {line:?}"));
        let hash = commit.strip_suffix("-dirty").unwrap_or(commit);
        assert!(
            hash == "unknown" || (hash.len() == 12 && hash.chars().all(|c| c.is_ascii_hexdigit())),
            "{name}: commit {commit:?}"
        );
    }
    let out = Command::new(bin("meshctl").unwrap())
        .arg("version")
        .output()
        .unwrap();
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .starts_with(&format!("meshctl {version} (commit ")));
}

/// A binary, its arguments and environment, and what its one-line error must say.
type Case = (
    &'static str,
    Vec<String>,
    Vec<(&'static str, String)>,
    String,
);

/// Each first-contact mistake the issue names ends the process at once (exit 1) with one line on stderr that
/// names the setting or file at fault.
#[test]
fn a_fatal_error_is_one_line_naming_the_setting_at_fault() {
    let dir = std::env::temp_dir().join(format!("mesh-fatal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("cluster")).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let not_pem = file("not.pem", "garbage\n");
    let token = file("token", "t0ken\n");
    let state = file("state.yaml", "workloads: []\nservices: []\n");
    let base = format!(
        "configDir: {0}/cluster\ncaDir: {0}/ca\ngrpcAddr: 127.0.0.1:0\nmonitoringAddr: 127.0.0.1:0\n",
        dir.display()
    );
    let waypoint = |root: &str, token: &str| {
        format!("name: wp\nnamespace: default\nhboneAddr: 127.0.0.1:0\nadminAddr: 127.0.0.1:0\nmetricsAddr: 127.0.0.1:0\nreadinessAddr: 127.0.0.1:0\ncontrolPlane: {{address: \"https://127.0.0.1:1\", rootCert: {root}, tokenFile: {token}}}\n")
    };
    let cases: Vec<Case> = vec![
        (
            "control",
            vec![
                "--config".into(),
                file("c1.yaml", &format!("{base}certificateTtl: 5 minutes\n")),
            ],
            vec![],
            "certificateTtl: invalid duration \"5 minutes\"".into(),
        ),
        (
            "control",
            vec![
                "--config".into(),
                file(
                    "c2.yaml",
                    &format!("{base}pluginCa: {{certChain: /nope.pem, key: /nope.key}}\n"),
                ),
            ],
            vec![],
            "pluginCa.certChain /nope.pem: No such file".into(),
        ),
        (
            "control",
            vec![
                "--config".into(),
                file(
                    "c3.yaml",
                    &format!("{base}pluginCa: {{certChain: {not_pem}, key: {not_pem}}}\n"),
                ),
            ],
            vec![],
            "no PEM certificate in the CA certificate chain".into(),
        ),
        (
            "control",
            vec!["--config".into(), file("c4.yaml", &base)],
            vec![("MONITORING_ADDR", busy.clone())],
            format!("cannot listen on {busy} for the monitoring port"),
        ),
        (
            "ztunnel",
            vec![],
            vec![
                ("NODE_NAME", "n1".into()),
                ("LOCAL_STATE_FILE", state.clone()),
                ("DEV_CA_DIR", format!("{}/devca", dir.display())),
                ("ZTUNNEL_RUN_DIR", format!("{}/run", dir.display())),
                ("ADMIN_ADDR", busy.clone()),
                ("METRICS_ADDR", "127.0.0.1:0".into()),
                ("READINESS_ADDR", "127.0.0.1:0".into()),
            ],
            "(stop what holds it, or move the port with adminAddr, env ADMIN_ADDR)".into(),
        ),
        (
            "ztunnel",
            vec![],
            vec![
                ("NODE_NAME", "n1".into()),
                ("LOCAL_STATE_FILE", "/nope/state.yaml".into()),
                ("DEV_CA_DIR", format!("{}/devca", dir.display())),
            ],
            "cannot read local state file /nope/state.yaml".into(),
        ),
        (
            "waypoint",
            vec![
                "--config".into(),
                file("w1.yaml", &waypoint(&not_pem, "/nope-token")),
            ],
            vec![],
            "controlPlane.tokenFile /nope-token: No such file".into(),
        ),
        (
            "waypoint",
            vec![
                "--config".into(),
                file("w2.yaml", &waypoint(&not_pem, &token)),
            ],
            vec![],
            format!("controlPlane.rootCert {not_pem}: holds no PEM certificate"),
        ),
    ];
    for (binary, args, env, expected) in cases {
        let mut child = Command::new(bin(binary).unwrap())
            .args(&args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = exit_within(&mut child, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{binary} {args:?} did not exit (expected: {expected})"));
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(1), "{binary} {args:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{binary} {args:?}: more than one line: {stderr}"
        );
        assert!(
            stderr.starts_with("error: ") && stderr.contains(&expected),
            "{binary} {args:?}: expected {expected:?} in {stderr:?}"
        );
    }
    drop(taken);
    let _ = std::fs::remove_dir_all(&dir);
}
