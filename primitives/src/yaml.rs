//! YAML with one set of rules for everything the mesh reads: API objects, our own config files, the local state
//! file. YAML 1.2 booleans only (`yes`, `on` stay strings, as in serde_yaml and kubectl's strict decoding of
//! string fields), duplicate keys are errors, merge keys (`<<`) are expanded.

pub use serde_saphyr::Error;
pub use serde_saphyr::SerializeError;

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
    }
}

/// One document into `T`; the error names the line and column.
pub fn from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Error> {
    serde_saphyr::from_str_with_options(text, options())
}

/// Every document of a multi-document stream (`---`-separated); empty documents are skipped.
pub fn from_multiple<T: serde::de::DeserializeOwned>(text: &str) -> Result<Vec<T>, Error> {
    serde_saphyr::from_multiple_with_options(text, options())
}

pub fn to_string<T: serde::Serialize>(value: &T) -> Result<String, SerializeError> {
    serde_saphyr::to_string(value)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn rules() {
        let m: BTreeMap<String, serde_json::Value> =
            from_str("a: yes\nb: true\nc: 90\nd: '90'\n").unwrap();
        assert_eq!(m["a"], serde_json::json!("yes"));
        assert_eq!(m["b"], serde_json::json!(true));
        assert_eq!(m["c"], serde_json::json!(90));
        assert_eq!(m["d"], serde_json::json!("90"));
        assert!(from_str::<BTreeMap<String, u8>>("a: 1\na: 2\n").is_err());
        let merged: BTreeMap<String, BTreeMap<String, u8>> =
            from_str("base: &b {x: 1}\nderived:\n  <<: *b\n  y: 2\n").unwrap();
        assert_eq!(merged["derived"].len(), 2);
        let docs: Vec<serde_json::Value> = from_multiple("a: 1\n---\n---\nb: 2\n").unwrap();
        assert_eq!(docs.len(), 2);
        let text = to_string(&m).unwrap();
        assert_eq!(
            from_str::<BTreeMap<String, serde_json::Value>>(&text).unwrap(),
            m
        );
    }
}
