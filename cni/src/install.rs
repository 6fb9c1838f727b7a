//! The node agent's installer (`mesh-cni-install`, run by the cni chart's DaemonSet): puts `mesh-cni` into the
//! host's CNI bin directory and chains it into the node's primary CNI network config, as Istio's install-cni
//! does; on the way out it removes both, leaving the original config byte-identical.
//!
//! The primary config is the one the runtime uses: the first `*.conflist`, `*.conf` or `*.json` file of the
//! config directory in name order. A `.conflist` gets `mesh-cni` appended to its `plugins`; a single-plugin
//! `.conf`/`.json` becomes a `.conflist` of the original plugin plus `mesh-cni` (the original file is removed, so
//! the runtime does not pick it first). The original bytes are kept beside it in a dot-file the runtime ignores,
//! and restored on uninstall unless someone else has edited the config since, in which case only our entry is
//! taken out of their version.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The plugin type the runtime runs: the binary's name in the CNI bin directory.
pub const PLUGIN: &str = "mesh-cni";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("no CNI network config (*.conflist, *.conf, *.json) in {0}: is the cluster's network plugin installed? mesh-cni chains onto it")]
    NoConfig(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a CNI network config: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where to install, and what `mesh-cni` is told.
#[derive(Debug, Clone)]
pub struct Install {
    /// The `mesh-cni` binary to copy.
    pub plugin_binary: PathBuf,
    /// The host's CNI bin directory (as mounted in the installer's container).
    pub bin_dir: PathBuf,
    /// The host's CNI config directory (as mounted).
    pub conf_dir: PathBuf,
    /// The host directory ztunnel shares with the plugin (the plugin's `ztunnel.runDir`).
    pub ztunnel_run_dir: PathBuf,
}

/// What [`Install::install`] changed, for [`Install::uninstall`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The chained config as written.
    pub config: PathBuf,
    /// The original config's path and the dot-file holding its bytes.
    pub original: PathBuf,
    pub backup: PathBuf,
}

impl Install {
    /// Copies the plugin and chains it; idempotent (a config that already chains `mesh-cni` is left alone).
    pub fn install(&self) -> Result<Installed, InstallError> {
        self.copy_plugin()?;
        let original = primary_config(&self.conf_dir)?;
        let backup = backup_path(&original);
        let bytes = fs::read(&original).map_err(io_err(&original))?;
        let conf = parse(&original, &bytes)?;
        if chains_us(&conf) {
            // Installed before (the installer restarted): find what that install saved.
            let (original_path, backup) = find_backup(&self.conf_dir, &original)?;
            return Ok(Installed {
                config: original,
                original: original_path,
                backup,
            });
        }
        let (config, chained) = self.chain(&original, conf);
        write_atomically(&backup, &bytes)?;
        write_atomically(&config, pretty(&chained).as_bytes())?;
        if config != original {
            fs::remove_file(&original).map_err(io_err(&original))?;
        }
        Ok(Installed {
            config,
            original,
            backup,
        })
    }

    /// Removes the plugin binary and our config changes. Restores the original bytes when the chained config is
    /// as we wrote it; otherwise removes just our plugin entry from whatever is there now.
    pub fn uninstall(&self, done: &Installed) -> Result<(), InstallError> {
        if let Ok(bytes) = fs::read(&done.backup) {
            let current = fs::read(&done.config).ok();
            let ours = current
                .as_deref()
                .and_then(|c| parse(&done.config, c).ok())
                .map(unchain);
            let untouched = match (&ours, parse(&done.original, &bytes)) {
                // Our entry out of the current file gives the original back: nobody else changed it.
                (Some(now), Ok(orig)) => same_plugins(now, &orig, &done.config, &done.original),
                _ => false,
            };
            if untouched || current.is_none() {
                if done.config != done.original {
                    let _ = fs::remove_file(&done.config);
                }
                write_atomically(&done.original, &bytes)?;
            } else if let Some(now) = ours {
                write_atomically(&done.config, pretty(&now).as_bytes())?;
            }
            fs::remove_file(&done.backup).map_err(io_err(&done.backup))?;
        }
        let bin = self.bin_dir.join(PLUGIN);
        match fs::remove_file(&bin) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&bin)(e)),
            _ => Ok(()),
        }
    }

    fn copy_plugin(&self) -> Result<(), InstallError> {
        let bytes = fs::read(&self.plugin_binary).map_err(io_err(&self.plugin_binary))?;
        let dest = self.bin_dir.join(PLUGIN);
        write_atomically(&dest, &bytes)?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).map_err(io_err(&dest))
    }

    /// The chained config and where it goes.
    fn chain(&self, original: &Path, conf: Value) -> (PathBuf, Value) {
        let ours = json!({"type": PLUGIN, "ztunnel": {"runDir": self.ztunnel_run_dir}});
        if conf.get("plugins").is_some() {
            let mut list = conf;
            if let Some(plugins) = list.get_mut("plugins").and_then(Value::as_array_mut) {
                plugins.push(ours);
            }
            return (original.to_path_buf(), list);
        }
        let mut single = conf;
        let obj = single.as_object_mut();
        let name = obj
            .as_ref()
            .and_then(|o| o.get("name").cloned())
            .unwrap_or_else(|| json!("k8s-pod-network"));
        let version = obj
            .as_ref()
            .and_then(|o| o.get("cniVersion").cloned())
            .unwrap_or_else(|| json!("1.0.0"));
        if let Some(o) = obj {
            o.remove("name");
            o.remove("cniVersion");
        }
        let list = json!({"cniVersion": version, "name": name, "plugins": [single, ours]});
        (original.with_extension("conflist"), list)
    }
}

/// The runtime's choice: the first network config file in name order.
pub fn primary_config(dir: &Path) -> Result<PathBuf, InstallError> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            let ext = p.extension().and_then(|e| e.to_str());
            !hidden && matches!(ext, Some("conflist" | "conf" | "json")) && p.is_file()
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoConfig(dir.to_path_buf()))
}

fn backup_path(original: &Path) -> PathBuf {
    let name = original
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("config");
    original.with_file_name(format!(".{name}.mesh-cni-original"))
}

/// The backup an earlier install left for `config` (which may have been a `.conf` turned `.conflist`).
fn find_backup(dir: &Path, config: &Path) -> Result<(PathBuf, PathBuf), InstallError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let backup = entry.path();
        let Ok(original) = original_of(&backup) else {
            continue;
        };
        if original == config || original.with_extension("conflist") == config {
            return Ok((original, backup));
        }
    }
    Err(InstallError::Invalid {
        path: config.to_path_buf(),
        reason: "it chains mesh-cni but no backup of the original is left; remove the mesh-cni entry by hand"
            .into(),
    })
}

fn original_of(backup: &Path) -> Result<PathBuf, InstallError> {
    let name = backup
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix('.'))
        .and_then(|n| n.strip_suffix(".mesh-cni-original"))
        .ok_or_else(|| InstallError::Invalid {
            path: backup.to_path_buf(),
            reason: "not a mesh-cni backup name".into(),
        })?;
    Ok(backup.with_file_name(name))
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Value, InstallError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| InstallError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let ok = v.get("plugins").is_some_and(Value::is_array) || v.get("type").is_some();
    if !ok {
        return Err(InstallError::Invalid {
            path: path.to_path_buf(),
            reason: "neither `plugins` (a conflist) nor `type` (a single plugin)".into(),
        });
    }
    Ok(v)
}

fn chains_us(conf: &Value) -> bool {
    conf.get("plugins")
        .and_then(Value::as_array)
        .is_some_and(|p| p.iter().any(|e| e["type"] == PLUGIN))
}

/// The config without our entry.
fn unchain(mut conf: Value) -> Value {
    if let Some(plugins) = conf.get_mut("plugins").and_then(Value::as_array_mut) {
        plugins.retain(|e| e["type"] != PLUGIN);
    }
    conf
}

/// Whether `now` (ours removed) is what `orig` was: the same plugins, as a conflist or a single plugin.
fn same_plugins(now: &Value, orig: &Value, now_path: &Path, orig_path: &Path) -> bool {
    if now_path == orig_path {
        return now == orig;
    }
    let plugins = now.get("plugins").and_then(Value::as_array);
    let mut single = orig.clone();
    if let Some(o) = single.as_object_mut() {
        o.remove("name");
        o.remove("cniVersion");
    }
    plugins.is_some_and(|p| p.len() == 1 && p[0] == single)
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("a JSON value always serializes");
    s.push('\n');
    s
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), InstallError> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dirs {
        root: PathBuf,
        install: Install,
    }

    impl Drop for Dirs {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    fn dirs(name: &str) -> Dirs {
        let root =
            std::env::temp_dir().join(format!("mesh-cni-install-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for d in ["bin", "net.d"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("mesh-cni-src"), b"\x7fELF plugin").unwrap();
        let install = Install {
            plugin_binary: root.join("mesh-cni-src"),
            bin_dir: root.join("bin"),
            conf_dir: root.join("net.d"),
            ztunnel_run_dir: "/var/run/ztunnel".into(),
        };
        Dirs { root, install }
    }

    // As a cluster's network plugin leaves it: key order and spacing of its own.
    const CONFLIST: &str = "{\n  \"cniVersion\": \"0.4.0\", \"name\": \"k8s-pod-network\",\n  \"plugins\": [\n    {\"type\": \"bridge\", \"bridge\": \"cni0\", \"ipam\": {\"type\": \"host-local\", \"subnet\": \"198.18.0.0/16\"}},\n    {\"type\": \"portmap\", \"capabilities\": {\"portMappings\": true}}\n  ]\n}\n";

    #[test]
    fn a_conflist_is_chained_and_restored_byte_identical() {
        let d = dirs("conflist");
        let conf = d.install.conf_dir.join("10-bridge.conflist");
        fs::write(&conf, CONFLIST).unwrap();
        fs::write(d.install.conf_dir.join("99-other.conflist"), CONFLIST).unwrap();
        let done = d.install.install().unwrap();
        assert_eq!(done.config, conf, "the first config in name order");
        let chained: Value = serde_json::from_slice(&fs::read(&conf).unwrap()).unwrap();
        let types: Vec<&str> = chained["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["bridge", "portmap", "mesh-cni"]);
        assert_eq!(
            chained["plugins"][2]["ztunnel"]["runDir"],
            "/var/run/ztunnel"
        );
        assert_eq!(
            fs::read(d.install.bin_dir.join("mesh-cni")).unwrap(),
            b"\x7fELF plugin"
        );
        // Installing again (a restarted installer) changes nothing.
        let again = d.install.install().unwrap();
        assert_eq!(again, done);
        assert_eq!(
            serde_json::from_slice::<Value>(&fs::read(&conf).unwrap()).unwrap(),
            chained
        );
        d.install.uninstall(&done).unwrap();
        assert_eq!(
            fs::read_to_string(&conf).unwrap(),
            CONFLIST,
            "byte-identical"
        );
        assert!(!d.install.bin_dir.join("mesh-cni").exists());
        assert!(!done.backup.exists(), "no leftovers");
        let left: Vec<_> = fs::read_dir(&d.install.conf_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }

    #[test]
    fn a_single_plugin_conf_becomes_a_conflist_and_comes_back() {
        let d = dirs("conf");
        let conf = d.install.conf_dir.join("10-flannel.conf");
        let original = "{\"cniVersion\":\"0.3.1\",\"name\":\"cbr0\",\"type\":\"flannel\",\"delegate\":{\"isDefaultGateway\":true}}";
        fs::write(&conf, original).unwrap();
        let done = d.install.install().unwrap();
        assert_eq!(done.config, d.install.conf_dir.join("10-flannel.conflist"));
        assert!(
            !conf.exists(),
            "the runtime must not pick the unchained .conf"
        );
        let list: Value = serde_json::from_slice(&fs::read(&done.config).unwrap()).unwrap();
        assert_eq!(list["name"], "cbr0");
        assert_eq!(list["cniVersion"], "0.3.1");
        assert_eq!(list["plugins"][0]["type"], "flannel");
        assert_eq!(list["plugins"][1]["type"], "mesh-cni");
        assert_eq!(
            d.install.install().unwrap(),
            done,
            "a restarted installer finds its backup"
        );
        d.install.uninstall(&done).unwrap();
        assert_eq!(fs::read_to_string(&conf).unwrap(), original);
        assert!(!done.config.exists());
    }

    #[test]
    fn an_edit_by_someone_else_is_kept_and_only_our_entry_removed() {
        let d = dirs("edited");
        let conf = d.install.conf_dir.join("10-bridge.conflist");
        fs::write(&conf, CONFLIST).unwrap();
        let done = d.install.install().unwrap();
        let mut v: Value = serde_json::from_slice(&fs::read(&conf).unwrap()).unwrap();
        v["plugins"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "bandwidth"}));
        fs::write(&conf, v.to_string()).unwrap();
        d.install.uninstall(&done).unwrap();
        let after: Value = serde_json::from_slice(&fs::read(&conf).unwrap()).unwrap();
        let types: Vec<&str> = after["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["bridge", "portmap", "bandwidth"]);
    }

    #[test]
    fn no_network_config_is_a_clear_error() {
        let d = dirs("empty");
        fs::write(d.install.conf_dir.join(".hidden.conflist"), CONFLIST).unwrap();
        fs::write(d.install.conf_dir.join("README"), "not a config").unwrap();
        let e = d.install.install().unwrap_err();
        assert!(matches!(e, InstallError::NoConfig(_)), "{e}");
        assert!(e.to_string().contains("network plugin installed"), "{e}");
        fs::write(d.install.conf_dir.join("10-bad.conf"), "{\"name\": \"x\"}").unwrap();
        let e = d.install.install().unwrap_err();
        assert!(
            e.to_string()
                .contains("10-bad.conf is not a CNI network config"),
            "{e}"
        );
    }
}
