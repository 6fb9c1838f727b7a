//! Typed config loading: a YAML file, then environment variables, then validation by the component.

use std::path::Path;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path}: {reason}")]
    Parse {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("environment variable {name}={value:?}: {reason}")]
    Env {
        name: String,
        value: String,
        reason: String,
    },
    #[error("config field {field}: {reason}")]
    Invalid { field: String, reason: String },
}

/// Parses a YAML file (`what`: "config file", "local state file") into `T`. An error is one line naming the file
/// and the field (`controlPlane.tokenFile: ...`), with a did-you-mean for a misspelt key; a syntax error names
/// the line and column instead.
pub fn load_yaml<T: serde::de::DeserializeOwned>(
    what: &'static str,
    path: &Path,
) -> Result<T, ConfigError> {
    let parse = |reason: String| ConfigError::Parse {
        what,
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        what,
        path: path.display().to_string(),
        source,
    })?;
    // Typed first (the YAML library's own scalar rules: `version: 2` is a fine string); only on failure again
    // through a generic value, so the error can name the field path rather than a position.
    let typed = match mesh_primitives::yaml::from_str(&text) {
        Ok(t) => return Ok(t),
        Err(e) => e.without_snippet().to_string(),
    };
    let value: serde_json::Value = mesh_primitives::yaml::from_str(&text)
        .map_err(|e| parse(e.without_snippet().to_string()))?;
    let explain = mesh_primitives::suggest::explain_unknown_field;
    Err(parse(
        match serde_path_to_error::deserialize::<_, T>(value) {
            Err(e) => match e.path().to_string().as_str() {
                "." => explain(&e.into_inner().to_string()),
                field => format!("{field}: {}", explain(&e.into_inner().to_string())),
            },
            // The generic route accepted what the typed one refused: the typed error it is.
            Ok(_) => explain(&typed),
        },
    ))
}

/// Reads `name` from the environment into `slot` when set.
pub fn env_override<T: FromStr>(name: &str, slot: &mut T) -> Result<(), ConfigError>
where
    T::Err: std::fmt::Display,
{
    if let Ok(value) = std::env::var(name) {
        *slot = value.parse().map_err(|e: T::Err| ConfigError::Env {
            name: name.to_string(),
            value: value.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// What `--help` adds after the flags: the environment variables a process reads (each with the config key it
/// overrides), every config file key with its default, and the exit codes, so nothing a process reads is
/// invisible.
pub fn help_text<T: serde::Serialize + Default>(env: &[(&str, &str)]) -> String {
    let mut out = String::from("Environment variables (they override the config file):\n");
    for (name, what) in env {
        out.push_str(&format!("  {name:<18} {what}\n"));
    }
    out.push_str("  RUST_LOG           log filter (default info), e.g. debug or ztunnel=debug\n");
    out.push_str("  LOG_FORMAT         json for one JSON object per log line (default: text)\n");
    out.push_str("\nConfig file keys and their defaults (YAML):\n");
    let yaml = mesh_primitives::yaml::to_string(&T::default()).unwrap_or_default();
    for line in yaml.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(EXIT_CODES);
    out
}

/// The exit codes of every mesh process (`mesh_core::process::report`, and clap for usage errors).
pub const EXIT_CODES: &str = "\nExit codes: 0 stopped cleanly (SIGTERM drains first); 1 a fatal error, one line on stderr naming \
the setting or file at fault; 2 a command-line usage error.\n";

/// The names `source` (a config module's text) reads from the environment: what its help must list.
pub fn env_names_read(source: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for marker in ["env_override(\"", "env::var(\"", "var(\""] {
        for part in source.split(marker).skip(1) {
            if let Some((name, _)) = part.split_once('"') {
                if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !name.is_empty() {
                    out.insert(name.to_string());
                }
            }
        }
    }
    out
}

/// For a config module's test: `Err` naming the variables its source reads but `env` does not list, or lists but
/// it does not read.
pub fn check_env_listed(source: &str, env: &[(&str, &str)]) -> Result<(), String> {
    let read = env_names_read(source);
    let listed: std::collections::BTreeSet<String> =
        env.iter().map(|(n, _)| n.to_string()).collect();
    if read == listed {
        Ok(())
    } else {
        Err(format!(
            "read but not listed: {:?}; listed but not read: {:?}",
            read.difference(&listed).collect::<Vec<_>>(),
            listed.difference(&read).collect::<Vec<_>>()
        ))
    }
}

#[cfg(test)]
mod load_tests {
    use super::*;

    fn file(name: &str, text: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("mesh-config-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn scalars_read_as_the_yaml_library_reads_them_and_errors_name_the_field() {
        // `version: 2` is a string label, as it always was.
        let p = file(
            "state.yaml",
            "workloads:\n- {name: w, namespace: d, ip: 198.18.1.2, node: n, labels: {version: 2}}\n",
        );
        let state: crate::workload::state::LocalState = load_yaml("local state file", &p).unwrap();
        assert_eq!(state.workloads[0].labels["version"], "2");
        let p = file(
            "bad.yaml",
            "workloads:\n- {name: w, namespace: d, ip: not-an-ip, node: n}\n",
        );
        let err = load_yaml::<crate::workload::state::LocalState>("local state file", &p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("workloads[0].ip: "), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
