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
    serde_yaml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        reason: e.to_string(),
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

/// Durations in config files are written as Istio writes them: `30s`, `500ms`, `5m`, `1h`.
pub mod duration {
    use std::time::Duration;

    pub fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        let (num, unit) = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .map(|i| s.split_at(i))
            .ok_or_else(|| format!("duration {s:?} needs a unit (ms, s, m, h)"))?;
        let n: f64 = num
            .parse()
            .map_err(|_| format!("duration {s:?} has no number"))?;
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => {
                return Err(format!(
                    "duration {s:?} has unknown unit {unit:?} (ms, s, m, h)"
                ))
            }
        };
        Ok(Duration::from_secs_f64(secs))
    }

    pub fn format(d: &Duration) -> String {
        if d.subsec_millis() == 0 {
            format!("{}s", d.as_secs())
        } else {
            format!("{}ms", d.as_millis())
        }
    }

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(d))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        #[test]
        fn parses_istio_durations() {
            assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
            assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
            assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
            assert!(parse("5").is_err());
            assert!(parse("5d").is_err());
        }
    }
}
