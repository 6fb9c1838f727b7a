//! `toYaml` as Helm writes it (block style, keys sorted, sequences at their key's indentation), for values the
//! charts embed. Strings are quoted whenever a plain scalar could read back as something else.

use serde_json::Value;

pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => map(m, 0, &mut out),
        Value::Array(a) if !a.is_empty() => seq(a, 0, &mut out),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn map(m: &serde_json::Map<String, Value>, indent: usize, out: &mut String) {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    for k in keys {
        out.push_str(&" ".repeat(indent));
        out.push_str(&string(k));
        out.push(':');
        value(&m[k], indent, out);
    }
}

/// After `key:` or `- `: a scalar on the same line, a block on the next ones.
fn value(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(c) if !c.is_empty() => {
            out.push('\n');
            map(c, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            seq(a, indent, out);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn seq(a: &[Value], indent: usize, out: &mut String) {
    for item in a {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match item {
            Value::Object(c) if !c.is_empty() => {
                // The first key on the dash's line, the others aligned under it.
                let mut block = String::new();
                map(c, indent + 2, &mut block);
                out.push(' ');
                out.push_str(&block[indent + 2..]);
            }
            other => value(other, indent + 2, out),
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

fn string(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '/')
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null" | "nan" | "inf"
        );
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("strings serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_yaml_parser() {
        let v = serde_json::json!({"b": [{"x": 1, "y": ["p", "q"]}, "yes", "", "10m"], "a": {"c": null, "d": true},
            "e": [], "f": {}, "g": "with: colon", "h": "0.5"});
        let text = to_yaml(&v);
        assert!(text.starts_with("a:\n  c: null\n"), "{text}");
        let back: Value = mesh_primitives::yaml::from_str(&text).unwrap();
        assert_eq!(back, v, "{text}");
    }
}
