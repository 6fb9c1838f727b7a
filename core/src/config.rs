//! Typed config loading: a YAML file, then environment variables, then validation by the component.

use std::path::Path;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("environment variable {name}={value:?}: {reason}")]
    Env {
        name: String,
        value: String,
        reason: String,
    },
    #[error("config field {field}: {reason}")]
    Invalid { field: String, reason: String },
}

/// Parses a YAML file into `T`; errors name the file, and serde's message names the field and line.
pub fn load_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    mesh_primitives::yaml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        reason: mesh_primitives::suggest::explain_unknown_field(&e.to_string()),
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
