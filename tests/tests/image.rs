//! The images, built offline by scripts/build-image.sh (umoci) from the debug binaries, run for real with runc:
//! each starts its component's binary as the Dockerfile's target does (entrypoint and user), and that binary runs
//! inside the image (its libraries are there) and names itself.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Root and the two tools, or the reason the test cannot run (CI has all three and must run it).
fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("runc needs root".into());
    }
    ["umoci", "runc"]
        .into_iter()
        .find(|t| Command::new(t).arg("--version").output().is_err())
        .map(|t| format!("{t} not installed (scripts/deps.sh installs it as root)"))
}

#[test]
fn each_image_runs_its_component_as_the_dockerfile_says() {
    if let Some(reason) = skip_reason() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the image test, but: {reason}"
        );
        eprintln!("SKIPPED: {reason}");
        return;
    }
    let work = std::env::temp_dir().join(format!("mesh-image-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let oci = work.join("oci");
    let built = Command::new(repo().join("scripts/build-image.sh"))
        .arg(repo().join("target/debug"))
        .arg(&oci)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    // (tag, entrypoint, uid, what --version prints)
    let cases = [
        (
            "control",
            "/usr/local/bin/control",
            65532,
            format!("control {version}"),
        ),
        (
            "ztunnel",
            "/usr/local/bin/ztunnel",
            0,
            format!("ztunnel {version}"),
        ),
        (
            "waypoint",
            "/usr/local/bin/waypoint",
            65532,
            format!("waypoint {version}"),
        ),
        (
            "cni",
            "/usr/local/bin/mesh-cni-agent",
            0,
            format!("mesh-cni-agent {version}"),
        ),
    ];
    for (tag, entry, uid, expected) in cases {
        // The same image as the Dockerfile's target.
        assert!(
            dockerfile.contains(&format!("AS {tag}")),
            "Dockerfile target {tag}"
        );
        assert!(
            dockerfile.contains(&format!("ENTRYPOINT [\"{entry}\"]")),
            "Dockerfile entrypoint {entry}"
        );
        let bundle = work.join(tag);
        let unpacked = Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:{tag}", oci.display()))
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(
            unpacked.status.success(),
            "{}",
            String::from_utf8_lossy(&unpacked.stderr)
        );
        let config_path = bundle.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
        assert_eq!(
            config["process"]["args"],
            serde_json::json!([entry]),
            "{tag} entrypoint"
        );
        assert_eq!(config["process"]["user"]["uid"], uid, "{tag} user");
        let mut runs = vec![(vec![entry, "--version"], expected)];
        if tag == "cni" {
            // The agent installs each pod's rules with iptables inside the pod's namespace: it ships with it.
            runs.push((
                vec!["/usr/sbin/iptables-restore", "--version"],
                "iptables-restore v".into(),
            ));
        }
        for (n, (args, expected)) in runs.into_iter().enumerate() {
            config["process"]["args"] = serde_json::json!(args);
            config["process"]["terminal"] = false.into();
            std::fs::write(&config_path, config.to_string()).unwrap();
            let ran = Command::new("runc")
                .args(["run", "--bundle"])
                .arg(&bundle)
                .arg(format!("mesh-image-test-{tag}-{n}-{}", std::process::id()))
                .output()
                .unwrap();
            assert!(
                ran.status.success(),
                "{tag} {args:?}: {}",
                String::from_utf8_lossy(&ran.stderr)
            );
            let out = String::from_utf8_lossy(&ran.stdout);
            assert!(
                out.trim().starts_with(&expected),
                "{tag} {args:?}: {out:?}, expected {expected:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&work);
}
