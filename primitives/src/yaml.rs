//! YAML with one set of rules for everything the mesh reads: API objects, our own config files, the local state
//! file. The rules keep what the earlier parser (serde_yaml 0.9, YAML 1.2) did, so no file changes meaning:
//! YAML 1.2 booleans only (`yes`, `on` stay strings), `0755` and `1_000` stay strings in untyped values,
//! duplicate keys are errors, merge keys (`<<`) are expanded. The parser's budget is raised to sizes a
//! generated cluster directory reaches (tens of thousands of documents), while still bounding depth.

pub use serde_saphyr::Error;
pub use serde_saphyr::SerializeError;

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        budget: serde_saphyr::budget! {
            max_documents: 1_000_000,
            max_nodes: 100_000_000,
            max_events: 200_000_000,
            max_total_scalar_bytes: 1 << 30,
            max_reader_input_bytes: Some(1 << 30),
            max_depth: 256,
        },
    }
}

/// One document into `T`; the error names the line and column. A file with no document (empty, comments only,
/// a lone `---` or `null`) reads as an empty mapping, so a struct with defaults takes them.
pub fn from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Error> {
    let docs: Vec<serde::de::IgnoredAny> =
        serde_saphyr::from_multiple_with_options(text, options())?;
    if docs.is_empty() {
        return serde_saphyr::from_str_with_options("{}", options());
    }
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
            from_str("a: yes\nb: true\nc: 90\nd: '90'\ne: 0755\nf: 1_000\n").unwrap();
        assert_eq!(m["e"], serde_json::json!("0755"));
        assert_eq!(m["f"], serde_json::json!("1_000"));
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
        for nothing in ["", "# only a comment\n", "---\n", "null\n"] {
            let empty: BTreeMap<String, u8> = from_str(nothing).unwrap();
            assert!(empty.is_empty(), "{nothing:?}");
        }
        let many = "a: 1\n---\n".repeat(5000);
        assert_eq!(
            from_multiple::<serde_json::Value>(&many).unwrap().len(),
            5000
        );
        let text = to_string(&m).unwrap();
        assert_eq!(
            from_str::<BTreeMap<String, serde_json::Value>>(&text).unwrap(),
            m
        );
    }
}
