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
    // Through a generic value first, so a type error can name the field path rather than only a position.
    let value: serde_json::Value = mesh_primitives::yaml::from_str(&text)
        .map_err(|e| parse(e.without_snippet().to_string()))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let reason = mesh_primitives::suggest::explain_unknown_field(&e.into_inner().to_string());
        parse(match field.as_str() {
            "." => reason,
            _ => format!("{field}: {reason}"),
        })
    })
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
