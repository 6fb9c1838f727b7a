//! The subset of Go's text/template and Helm's functions that the mesh's own charts use, so `meshctl install`
//! renders the charts themselves (one source of truth) without Helm. Anything outside the subset is an error
//! naming the template and the action, never a silent difference: a chart edit that needs more fails the
//! comparison test against the real Helm engine.
//!
//! Actions: `{{ pipeline }}`, `if`/`else`/`else if`, `with`/`else`, `range`, `define`, comments, `{{-`/`-}}`
//! trimming. Operands: `.`, `.A.B`, `$`, strings, integers, booleans, `(pipeline)`. Functions: `include`,
//! `toYaml`, `fromYamlArray`, `nindent`, `indent`, `quote`, `printf` (`%s`, `%d`, `%v`), `default`, `sha256sum`,
//! `not`, `and`, `or`, `eq`, `ne`, `gt`, `lt`, `int`, and `.Files.Get`.

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("{template}: {reason}")]
pub struct TemplateError {
    pub template: String,
    pub reason: String,
}

#[derive(Clone, Debug)]
enum Node {
    Text(String),
    Action(String),
    If(Vec<(String, Vec<Node>)>, Vec<Node>),
    With(String, Vec<Node>, Vec<Node>),
    Range(String, Vec<Node>),
}

/// One tag or text run, after trimming.
#[derive(Debug)]
enum Piece {
    Text(String),
    Tag(String),
}

/// Parsed templates by name: every file, and every `define` in any file.
#[derive(Default)]
pub struct Engine {
    templates: BTreeMap<String, Vec<Node>>,
    files: BTreeMap<String, String>,
}

fn lex(name: &str, src: &str) -> Result<Vec<Piece>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut text = &rest[..open];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[open + 2..];
        let trim_left = after.starts_with("- ");
        let close = after.find("}}").ok_or_else(|| TemplateError {
            template: name.into(),
            reason: "unclosed action".into(),
        })?;
        let mut inner = &after[..close];
        trim_next = inner.ends_with(" -");
        if trim_left {
            text = text.trim_end();
            inner = &inner[1..];
        }
        if trim_next {
            inner = &inner[..inner.len() - 1];
        }
        out.push(Piece::Text(text.to_string()));
        let inner = inner.trim();
        if !(inner.starts_with("/*") && inner.ends_with("*/")) {
            out.push(Piece::Tag(inner.to_string()));
        }
        rest = &after[close + 2..];
    }
    let text = if trim_next { rest.trim_start() } else { rest };
    out.push(Piece::Text(text.to_string()));
    Ok(out)
}

struct Parser<'a> {
    name: &'a str,
    pieces: std::vec::IntoIter<Piece>,
    defines: Vec<(String, Vec<Node>)>,
}

impl Parser<'_> {
    fn err(&self, reason: impl Into<String>) -> TemplateError {
        TemplateError {
            template: self.name.into(),
            reason: reason.into(),
        }
    }

    /// Nodes up to an `end`, `else` or `else if` (returned), or the end of input.
    fn block(&mut self) -> Result<(Vec<Node>, Option<String>), TemplateError> {
        let mut nodes = Vec::new();
        while let Some(p) = self.pieces.next() {
            let tag = match p {
                Piece::Text(t) => {
                    if !t.is_empty() {
                        nodes.push(Node::Text(t));
                    }
                    continue;
                }
                Piece::Tag(t) => t,
            };
            let (word, rest) = tag.split_once(' ').unwrap_or((tag.as_str(), ""));
            let rest = rest.trim().to_string();
            match word {
                "end" | "else" => return Ok((nodes, Some(tag.clone()))),
                "if" => nodes.push(self.if_chain(rest)?),
                "with" => {
                    let (body, end) = self.block()?;
                    let otherwise = match end.as_deref() {
                        Some("else") => self.expect_end()?,
                        Some("end") => Vec::new(),
                        _ => return Err(self.err("`with` without `end`")),
                    };
                    nodes.push(Node::With(rest, body, otherwise));
                }
                "range" => {
                    let body = self.expect_end()?;
                    nodes.push(Node::Range(rest, body));
                }
                "define" => {
                    let name =
                        unquote(&rest).ok_or_else(|| self.err("define needs a quoted name"))?;
                    let body = self.expect_end()?;
                    self.defines.push((name, body));
                }
                "template" | "block" => {
                    return Err(self.err(format!("`{word}` is not supported; use include")))
                }
                _ => nodes.push(Node::Action(tag)),
            }
        }
        Ok((nodes, None))
    }

    fn expect_end(&mut self) -> Result<Vec<Node>, TemplateError> {
        match self.block()? {
            (body, Some(e)) if e == "end" => Ok(body),
            _ => Err(self.err("block without `end`")),
        }
    }

    fn if_chain(&mut self, first: String) -> Result<Node, TemplateError> {
        let mut arms = Vec::new();
        let mut cond = first;
        loop {
            let (body, end) = self.block()?;
            arms.push((cond, body));
            match end.as_deref() {
                Some("end") => return Ok(Node::If(arms, Vec::new())),
                Some("else") => return Ok(Node::If(arms, self.expect_end()?)),
                Some(e) if e.starts_with("else if ") => {
                    cond = e["else if ".len()..].trim().to_string()
                }
                _ => return Err(self.err("`if` without `end`")),
            }
        }
    }
}

fn unquote(s: &str) -> Option<String> {
    serde_json::from_str::<String>(s.trim()).ok()
}

impl Engine {
    /// Adds a template file (its top level is a template of that name; its `define`s are templates too).
    pub fn add(&mut self, name: &str, src: &str) -> Result<(), TemplateError> {
        let mut p = Parser {
            name,
            pieces: lex(name, src)?.into_iter(),
            defines: Vec::new(),
        };
        let (nodes, end) = p.block()?;
        if let Some(e) = end {
            return Err(p.err(format!("unexpected `{e}`")));
        }
        for (n, body) in p.defines {
            self.templates.insert(n, body);
        }
        self.templates.insert(name.to_string(), nodes);
        Ok(())
    }

    /// A file `.Files.Get` can read (chart-relative path).
    pub fn add_file(&mut self, path: &str, text: &str) {
        self.files.insert(path.to_string(), text.to_string());
    }

    /// Renders template `name` with `dot` (`$` is `dot` too).
    pub fn render(&self, name: &str, dot: &Value) -> Result<String, TemplateError> {
        let nodes = self.templates.get(name).ok_or_else(|| TemplateError {
            template: name.into(),
            reason: "no such template".into(),
        })?;
        let cx = Cx {
            engine: self,
            name,
            root: dot,
        };
        let mut out = String::new();
        cx.nodes(nodes, dot, &mut out)?;
        Ok(out)
    }
}

struct Cx<'a> {
    engine: &'a Engine,
    name: &'a str,
    root: &'a Value,
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// How `{{ x }}` prints a value (Helm prints a missing one as nothing).
pub fn print(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Cx<'_> {
    fn err(&self, reason: impl Into<String>) -> TemplateError {
        TemplateError {
            template: self.name.into(),
            reason: reason.into(),
        }
    }

    fn nodes(&self, nodes: &[Node], dot: &Value, out: &mut String) -> Result<(), TemplateError> {
        for n in nodes {
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Action(a) => out.push_str(&print(&self.pipeline(a, dot)?)),
                Node::If(arms, otherwise) => {
                    let mut taken = false;
                    for (cond, body) in arms {
                        if truthy(&self.pipeline(cond, dot)?) {
                            self.nodes(body, dot, out)?;
                            taken = true;
                            break;
                        }
                    }
                    if !taken {
                        self.nodes(otherwise, dot, out)?;
                    }
                }
                Node::With(p, body, otherwise) => {
                    let v = self.pipeline(p, dot)?;
                    if truthy(&v) {
                        self.nodes(body, &v, out)?;
                    } else {
                        self.nodes(otherwise, dot, out)?;
                    }
                }
                Node::Range(p, body) => match self.pipeline(p, dot)? {
                    Value::Array(items) => {
                        for item in &items {
                            self.nodes(body, item, out)?;
                        }
                    }
                    Value::Object(map) => {
                        let mut keys: Vec<_> = map.keys().collect();
                        keys.sort();
                        for k in keys {
                            self.nodes(body, &map[k], out)?;
                        }
                    }
                    Value::Null => {}
                    other => return Err(self.err(format!("range over {other}"))),
                },
            }
        }
        Ok(())
    }

    fn pipeline(&self, src: &str, dot: &Value) -> Result<Value, TemplateError> {
        let tokens = tokenize(src).map_err(|r| self.err(format!("{{{{ {src} }}}}: {r}")))?;
        let mut acc: Option<Value> = None;
        for cmd in tokens.split(|t| t == "|") {
            if cmd.is_empty() {
                return Err(self.err(format!("{{{{ {src} }}}}: empty command")));
            }
            acc = Some(
                self.command(cmd, dot, acc.take())
                    .map_err(|r| self.err(format!("{{{{ {src} }}}}: {r}")))?,
            );
        }
        acc.ok_or_else(|| self.err("empty action"))
    }

    /// One command; `piped` is the previous command's value, passed as the last argument.
    fn command(
        &self,
        words: &[String],
        dot: &Value,
        piped: Option<Value>,
    ) -> Result<Value, String> {
        let head = &words[0];
        let is_fn = head.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && !matches!(head.as_str(), "true" | "false" | "nil");
        if !is_fn && head != ".Files.Get" {
            if words.len() > 1 || piped.is_some() {
                return Err(format!("{head} is not a function"));
            }
            return self.operand(head, dot);
        }
        let mut args = words[1..]
            .iter()
            .map(|w| self.operand(w, dot))
            .collect::<Result<Vec<_>, _>>()?;
        args.extend(piped);
        if head == ".Files.Get" {
            let path = args.first().map(print).unwrap_or_default();
            return Ok(Value::String(
                self.engine.files.get(&path).cloned().unwrap_or_default(),
            ));
        }
        self.call(head, args)
    }

    fn operand(&self, w: &str, dot: &Value) -> Result<Value, String> {
        if let Some(inner) = w.strip_prefix('(').and_then(|w| w.strip_suffix(')')) {
            return self.pipeline(inner, dot).map_err(|e| e.reason);
        }
        if w.starts_with('"') {
            return unquote(w)
                .map(Value::String)
                .ok_or_else(|| format!("bad string {w}"));
        }
        if let Ok(n) = w.parse::<i64>() {
            return Ok(Value::from(n));
        }
        match w {
            "true" => return Ok(Value::Bool(true)),
            "false" => return Ok(Value::Bool(false)),
            "nil" => return Ok(Value::Null),
            "." => return Ok(dot.clone()),
            "$" => return Ok(self.root.clone()),
            _ => {}
        }
        let (base, path) = if let Some(p) = w.strip_prefix("$.") {
            (self.root, p)
        } else if let Some(p) = w.strip_prefix('.') {
            (dot, p)
        } else {
            return Err(format!("unknown operand {w}"));
        };
        let mut v = base;
        for field in path.split('.') {
            v = match v {
                Value::Object(m) => m.get(field).unwrap_or(&Value::Null),
                Value::Null => &Value::Null,
                other => return Err(format!("field {field} of a non-map {other}")),
            };
        }
        Ok(v.clone())
    }

    fn call(&self, f: &str, args: Vec<Value>) -> Result<Value, String> {
        let arity = |n: usize| {
            if args.len() == n {
                Ok(())
            } else {
                Err(format!("{f} takes {n} arguments, got {}", args.len()))
            }
        };
        let s = |v: &Value| print(v);
        Ok(match f {
            "include" => {
                arity(2)?;
                let name = s(&args[0]);
                let nodes = self
                    .engine
                    .templates
                    .get(&name)
                    .ok_or_else(|| format!("include of unknown template {name:?}"))?;
                let mut out = String::new();
                self.nodes(nodes, &args[1], &mut out)
                    .map_err(|e| e.reason)?;
                Value::String(out)
            }
            "toYaml" => {
                arity(1)?;
                Value::String(
                    super::yaml::to_yaml(&args[0])
                        .trim_end_matches('\n')
                        .to_string(),
                )
            }
            "fromYamlArray" => {
                arity(1)?;
                mesh_primitives::yaml::from_str::<Vec<Value>>(&s(&args[0]))
                    .map(Value::Array)
                    .map_err(|e| format!("fromYamlArray: {e}"))?
            }
            "nindent" | "indent" => {
                arity(2)?;
                let n = args[0].as_u64().ok_or("indent width must be a number")? as usize;
                let pad = " ".repeat(n);
                let body: Vec<String> = s(&args[1])
                    .split('\n')
                    .map(|l| format!("{pad}{l}"))
                    .collect();
                let body = body.join("\n");
                Value::String(if f == "nindent" {
                    format!("\n{body}")
                } else {
                    body
                })
            }
            "quote" => Value::String(
                args.iter()
                    .map(|a| serde_json::to_string(&s(a)).expect("strings serialize"))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            "printf" => Value::String(printf(&args)?),
            "default" => {
                arity(2)?;
                if truthy(&args[1]) {
                    args[1].clone()
                } else {
                    args[0].clone()
                }
            }
            "sha256sum" => {
                arity(1)?;
                Value::String(super::sha256_hex(s(&args[0]).as_bytes()))
            }
            "not" => {
                arity(1)?;
                Value::Bool(!truthy(&args[0]))
            }
            "and" => args
                .iter()
                .find(|a| !truthy(a))
                .or(args.last())
                .cloned()
                .unwrap_or_default(),
            "or" => args
                .iter()
                .find(|a| truthy(a))
                .or(args.last())
                .cloned()
                .unwrap_or_default(),
            "eq" | "ne" => {
                arity(2)?;
                Value::Bool((args[0] == args[1]) == (f == "eq"))
            }
            "gt" | "lt" => {
                arity(2)?;
                let (a, b) = (number(&args[0])?, number(&args[1])?);
                Value::Bool(if f == "gt" { a > b } else { a < b })
            }
            "int" => {
                arity(1)?;
                Value::from(number(&args[0])? as i64)
            }
            other => {
                return Err(format!(
                    "function {other:?} is not supported by meshctl's renderer"
                ))
            }
        })
    }
}

fn number(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a number")),
        Value::String(s) if s.trim().is_empty() => Ok(0.0),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a number")),
        Value::Null => Ok(0.0),
        other => Err(format!("{other} is not a number")),
    }
}

fn printf(args: &[Value]) -> Result<String, String> {
    let fmt = args.first().map(print).ok_or("printf needs a format")?;
    let mut rest = args[1..].iter();
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('s' | 'd' | 'v') => {
                out.push_str(&print(rest.next().ok_or("printf: too few arguments")?))
            }
            other => {
                return Err(format!(
                    "printf verb %{} is not supported",
                    other.unwrap_or(' ')
                ))
            }
        }
    }
    Ok(out)
}

/// Splits an action into words: strings and parenthesized groups stay whole; `|` is a word of its own.
fn tokenize(src: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = src.chars().peekable();
    let flush = |cur: &mut String, out: &mut Vec<String>| {
        if !cur.is_empty() {
            out.push(std::mem::take(cur));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => flush(&mut cur, &mut out),
            '|' => {
                flush(&mut cur, &mut out);
                out.push("|".into());
            }
            '"' => {
                cur.push(c);
                while let Some(d) = chars.next() {
                    cur.push(d);
                    if d == '\\' {
                        cur.push(chars.next().ok_or("unterminated string")?);
                    } else if d == '"' {
                        break;
                    }
                }
            }
            '(' => {
                let mut depth = 1;
                cur.push(c);
                for d in chars.by_ref() {
                    cur.push(d);
                    depth += match d {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    if depth == 0 {
                        break;
                    }
                }
                if depth != 0 {
                    return Err("unbalanced parenthesis".into());
                }
            }
            _ => cur.push(c),
        }
    }
    flush(&mut cur, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, dot: Value) -> String {
        let mut e = Engine::default();
        e.add("t", src).unwrap();
        e.render("t", &dot).unwrap()
    }

    #[test]
    fn trimming_and_blocks_follow_go() {
        let dot = json!({"Values": {"on": true, "list": ["a", "b"], "m": {"k": "v"}}});
        assert_eq!(
            render("a\n{{- if .Values.on }}\nyes\n{{- end }}\nb", dot.clone()),
            "a\nyes\nb"
        );
        assert_eq!(
            render("{{ range .Values.list }}[{{ . }}]{{ end }}", dot.clone()),
            "[a][b]"
        );
        assert_eq!(
            render("{{ with .Values.m }}{{ .k }}{{ end }}", dot.clone()),
            "v"
        );
        assert_eq!(
            render("{{ with .Values.none }}x{{ else }}y{{ end }}", dot.clone()),
            "y"
        );
        assert_eq!(
            render(
                "{{ if .Values.no }}1{{ else if .Values.on }}2{{ else }}3{{ end }}",
                dot.clone()
            ),
            "2"
        );
        assert_eq!(render("x {{/* note */}} y", dot), "x  y");
    }

    #[test]
    fn helm_functions() {
        let dot = json!({"Values": {"tag": "", "n": 3, "res": {"limits": {"cpu": "1"}}}, "Chart": {"AppVersion": "0.1.0"}});
        assert_eq!(
            render(
                r#"{{ .Values.tag | default .Chart.AppVersion | quote }}"#,
                dot.clone()
            ),
            "\"0.1.0\""
        );
        assert_eq!(
            render(
                r#"{{ printf "%s/x:%s" "r" (.Values.tag | default "t") }}"#,
                dot.clone()
            ),
            "r/x:t"
        );
        assert_eq!(
            render("a:{{- toYaml .Values.res | nindent 2 }}", dot.clone()),
            "a:\n  limits:\n    cpu: \"1\""
        );
        assert_eq!(
            render(r#"{{ if gt (int "2") 1 }}big{{ end }}"#, dot.clone()),
            "big"
        );
        let mut e = Engine::default();
        e.add("h", r#"{{- define "x" -}}v={{ .Values.n }}{{- end }}"#)
            .unwrap();
        e.add("t", r#"{{ include "x" . | quote }}"#).unwrap();
        assert_eq!(e.render("t", &dot).unwrap(), "\"v=3\"");
    }

    #[test]
    fn what_is_not_supported_is_an_error() {
        let mut e = Engine::default();
        e.add("t", "{{ lookup \"v1\" }}").unwrap();
        let err = e.render("t", &json!({})).unwrap_err().to_string();
        assert!(
            err.contains("lookup") && err.contains("not supported"),
            "{err}"
        );
        assert!(Engine::default().add("u", "{{ if .x }}").is_err());
    }
}
