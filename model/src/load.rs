//! Reading a directory of YAML into a [`ConfigSet`], keeping the last good version of anything that breaks.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::validate::validate_object;
use super::{ConfigSet, Diagnostic, Kind, Object, ObjectKey, Severity};

/// Why a whole file (or directory) could not be read. Reported as a [`Diagnostic`] without an object.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read: {0}")]
    Io(#[from] io::Error),
    #[error("invalid YAML, the whole file is rejected: {0}")]
    Yaml(#[from] mesh_primitives::yaml::Error),
    #[error("directories nested deeper than {0} levels are not read (symlink loop?)")]
    TooDeep(usize),
}

/// Deeper than this is almost surely a symlink loop.
const MAX_DEPTH: usize = 16;

/// What became of one YAML document, in file order.
#[derive(Clone)]
enum Outcome {
    Accepted(Box<Object>),
    /// Invalid: the previous version of this object, if any, is kept.
    Rejected(ObjectKey),
}

/// One file's documents, parsed.
#[derive(Clone)]
struct Parsed {
    outcomes: Vec<Outcome>,
    diagnostics: Vec<Diagnostic>,
    /// Some document could not even be identified (no kind or name), so we cannot tell which object it was
    /// meant to be: the file's previous objects are kept.
    unidentified: bool,
}

fn file_diag(file: Option<&Path>, reason: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        kind: String::new(),
        namespace: String::new(),
        name: String::new(),
        path: String::new(),
        reason,
        file: file.map(Path::to_path_buf),
    }
}

/// Format a serde_ignored path the way serde_path_to_error does: `spec.http[0].foo`.
fn ignored_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match p {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        P::Map { parent, key } => match ignored_path(parent) {
            s if s.is_empty() => key.clone(),
            s => format!("{s}.{key}"),
        },
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

/// Drops mapping entries whose value is null, as the API server does: `labels:` with nothing after it means no
/// labels, not an error.
fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Deserialize into `T`, returning the fields it ignored; on failure, the field path and the reason.
fn typed<T: DeserializeOwned>(mut value: Value) -> Result<(T, Vec<String>), (String, String)> {
    strip_nulls(&mut value);
    let mut ignored = Vec::new();
    let mut record = |p: serde_ignored::Path<'_>| ignored.push(ignored_path(&p));
    let de = serde_ignored::Deserializer::new(value, &mut record);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(t) => Ok((t, ignored)),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            Err((path, e.into_inner().to_string()))
        }
    }
}

fn typed_object(kind: Kind, value: Value) -> Result<(Object, Vec<String>), (String, String)> {
    fn wrap<T: DeserializeOwned>(
        value: Value,
        variant: fn(T) -> Object,
    ) -> Result<(Object, Vec<String>), (String, String)> {
        typed::<T>(value).map(|(t, ignored)| (variant(t), ignored))
    }
    match kind {
        Kind::Namespace => wrap(value, Object::Namespace),
        Kind::Pod => wrap(value, Object::Pod),
        Kind::Service => wrap(value, Object::Service),
        Kind::EndpointSlice => wrap(value, Object::EndpointSlice),
        Kind::WorkloadEntry => wrap(value, Object::WorkloadEntry),
        Kind::VirtualService => wrap(value, Object::VirtualService),
        Kind::DestinationRule => wrap(value, Object::DestinationRule),
        Kind::PeerAuthentication => wrap(value, Object::PeerAuthentication),
        Kind::AuthorizationPolicy => wrap(value, Object::AuthorizationPolicy),
        Kind::TrafficSplit => wrap(value, Object::TrafficSplit),
        Kind::Gateway => wrap(value, Object::Gateway),
        Kind::HttpRoute => wrap(value, Object::HttpRoute),
        Kind::GrpcRoute => wrap(value, Object::GrpcRoute),
    }
}

fn str_field<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
}

fn parse_document(value: Value, index: usize, file: Option<&Path>, out: &mut Parsed) {
    let doc = |reason: &str| file_diag(file, format!("document {index}: {reason}"));
    if value.is_null() {
        return; // an empty document, e.g. after a trailing `---`
    }
    if !value.is_object() {
        out.diagnostics.push(doc("not a mapping"));
        out.unidentified = true;
        return;
    }
    let (Some(api_version), Some(kind_name)) = (
        str_field(&value, &["apiVersion"]),
        str_field(&value, &["kind"]),
    ) else {
        out.diagnostics
            .push(doc("apiVersion and kind are required"));
        out.unidentified = true;
        return;
    };
    if api_version == "v1" && kind_name == "List" {
        let items = value
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for item in items {
            parse_document(item, index, file, out);
        }
        return;
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let name = str_field(&value, &["metadata", "name"])
        .unwrap_or_default()
        .to_string();
    let raw_ns = str_field(&value, &["metadata", "namespace"]).unwrap_or_default();
    let Some(kind) = Kind::from_group_kind(group, kind_name) else {
        // In a group the mesh serves, an unknown kind is a mistake (`VirtualServce`): an error, and the file's
        // previous objects are kept. Other groups' kinds (Deployments, ...) are not the mesh's business.
        let ours: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|k| !k.group().is_empty() && k.group() == group)
            .collect();
        let known_elsewhere = crate::fields::UNSUPPORTED_KINDS.contains(&(group, kind_name));
        let (severity, reason) = if ours.is_empty() || known_elsewhere {
            (
                Severity::Warning,
                format!("unsupported kind {api_version} {kind_name}: skipped"),
            )
        } else {
            out.unidentified = true;
            let hint = crate::fields::did_you_mean(kind_name, ours.iter().map(|k| k.name()))
                .map(|s| format!(" (did you mean {s}?)"))
                .unwrap_or_default();
            let known: Vec<&str> = ours.iter().map(|k| k.name()).collect();
            (
                Severity::Error,
                format!(
                    "unknown kind {kind_name} in {group}{hint}; it has {}",
                    known.join(", ")
                ),
            )
        };
        out.diagnostics.push(Diagnostic {
            severity,
            kind: kind_name.to_string(),
            namespace: raw_ns.to_string(),
            name,
            path: "kind".into(),
            reason,
            file: file.map(Path::to_path_buf),
        });
        return;
    };
    let namespace = match (kind.namespaced(), raw_ns) {
        (false, _) => String::new(),
        (true, "") => "default".to_string(),
        (true, ns) => ns.to_string(),
    };
    let key = ObjectKey {
        kind,
        namespace,
        name,
    };
    let diag = |severity, path: &str, reason: String| {
        Diagnostic::new(severity, &key, path, reason).in_file(file.map(Path::to_path_buf))
    };
    if key.name.is_empty() {
        out.diagnostics.push(diag(
            Severity::Error,
            "metadata.name",
            "required".to_string(),
        ));
        out.unidentified = true;
        return;
    }
    if !kind.versions().contains(&version) {
        let accepted = kind.versions().join(", ");
        out.diagnostics.push(diag(
            Severity::Error,
            "apiVersion",
            format!("unsupported version {version:?} (accepted: {accepted})"),
        ));
        out.outcomes.push(Outcome::Rejected(key));
        return;
    }
    let (mut object, ignored) = match typed_object(kind, value) {
        Ok(parsed) => parsed,
        Err((path, reason)) => {
            out.diagnostics.push(diag(Severity::Error, &path, reason));
            out.outcomes.push(Outcome::Rejected(key));
            return;
        }
    };
    object.metadata_mut().namespace = key.namespace.clone();
    let mut rejected = false;
    if let Some(published) = crate::fields::published(kind) {
        for path in ignored.iter().filter(|p| p.starts_with("spec.")) {
            let reason = match published.place(path) {
                crate::fields::Placement::Published => {
                    let field = crate::fields::leaf(path);
                    out.diagnostics.push(diag(
                        Severity::Warning,
                        path,
                        format!(
                            "{field} is part of the {kind} API but not supported by this mesh; ignored"
                        ),
                    ));
                    continue;
                }
                crate::fields::Placement::Unknown {
                    field,
                    sibling: Some(s),
                    ..
                } => format!(
                    "unknown field {field} (did you mean {s}?); the {kind} API has no such field"
                ),
                crate::fields::Placement::Unknown {
                    field,
                    elsewhere: Some(at),
                    ..
                } => format!("{field} is not a field here; the {kind} API has it at {at}"),
                crate::fields::Placement::Unknown { field, .. } => {
                    format!("unknown field {field}; the {kind} API has no such field")
                }
            };
            rejected = true;
            out.diagnostics.push(diag(Severity::Error, path, reason));
        }
    }
    for finding in validate_object(&object) {
        rejected |= finding.severity == Severity::Error;
        out.diagnostics
            .push(diag(finding.severity, &finding.path, finding.reason));
    }
    out.outcomes.push(if rejected {
        Outcome::Rejected(key)
    } else {
        Outcome::Accepted(Box::new(object))
    });
}

fn parse_text(text: &str, file: Option<&Path>) -> Result<Parsed, LoadError> {
    // Read every document before judging any: a syntax error anywhere rejects the whole file.
    let docs: Vec<Value> = mesh_primitives::yaml::from_multiple(text)?;
    let mut parsed = Parsed {
        outcomes: Vec::new(),
        diagnostics: Vec::new(),
        unidentified: false,
    };
    if docs.is_empty() {
        // Not wrong (its objects, if it had any, are gone), but rarely meant: say so.
        parsed.diagnostics.push(Diagnostic {
            severity: Severity::Warning,
            ..file_diag(
                file,
                "the file holds no object (it is empty, or only comments)".into(),
            )
        });
    }
    for (index, value) in docs.into_iter().enumerate() {
        parse_document(value, index, file, &mut parsed);
    }
    Ok(parsed)
}

/// Parse and validate one file's text (for `meshctl`-style checks of a single file): the valid objects
/// and every diagnostic. Namespaced objects without a namespace get `default`.
pub fn load_str(text: &str, file: Option<&Path>) -> (Vec<Object>, Vec<Diagnostic>) {
    match parse_text(text, file) {
        Ok(p) => p.into_objects(),
        Err(e) => (Vec::new(), vec![file_diag(file, e.to_string())]),
    }
}

/// Parse and validate one object already decoded (as the Kubernetes API serves it): the same checks as
/// [`load_str`] without a round trip through text.
pub fn load_value(value: Value) -> (Vec<Object>, Vec<Diagnostic>) {
    let mut parsed = Parsed {
        outcomes: Vec::new(),
        diagnostics: Vec::new(),
        unidentified: false,
    };
    parse_document(value, 0, None, &mut parsed);
    parsed.into_objects()
}

impl Parsed {
    fn into_objects(self) -> (Vec<Object>, Vec<Diagnostic>) {
        let objects = self
            .outcomes
            .into_iter()
            .filter_map(|o| match o {
                Outcome::Accepted(obj) => Some(*obj),
                Outcome::Rejected(_) => None,
            })
            .collect();
        (objects, self.diagnostics)
    }
}

fn is_yaml(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// Every `*.yaml`/`*.yml` under `dir`, sorted so loads are deterministic. Hidden entries are skipped: a
/// Kubernetes ConfigMap volume keeps its real files under `..data/` behind visible symlinks, which must be
/// read once, not twice. Directories that cannot be read are returned in `failed`.
fn list_files(
    dir: &Path,
    depth: usize,
    files: &mut Vec<PathBuf>,
    failed: &mut Vec<(PathBuf, LoadError)>,
) {
    if depth > MAX_DEPTH {
        failed.push((dir.to_path_buf(), LoadError::TooDeep(MAX_DEPTH)));
        return;
    }
    let entries = match fs::read_dir(dir).and_then(|rd| rd.collect::<Result<Vec<_>, _>>()) {
        Ok(entries) => entries,
        Err(e) => {
            failed.push((dir.to_path_buf(), e.into()));
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .into_iter()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    paths.sort();
    for path in paths {
        // `metadata` follows symlinks, so linked files and directories are read like real ones.
        match fs::metadata(&path) {
            Ok(m) if m.is_dir() => list_files(&path, depth + 1, files, failed),
            Ok(m) if m.is_file() && is_yaml(&path) => files.push(path),
            Ok(_) => {}
            Err(e) if is_yaml(&path) => failed.push((path, e.into())),
            Err(_) => {} // e.g. a dangling symlink that is not even YAML
        }
    }
}

/// Load every object under `dir`. Returns the new set and all diagnostics (errors and warnings).
///
/// Last-good retention: when `previous` is given, the previous version of an object is kept if
/// - the object is now invalid (any error diagnostic), or
/// - the file that held it could not be read or parsed, or holds a document that cannot be identified,
///   and the object is not (validly or not) declared anywhere else now.
///
/// Everything else is applied: changed valid objects are updated, removed objects disappear.
/// Declaring the same (kind, namespace, name) twice is an error on the second declaration (files are read
/// in path order); the first one stands.
pub fn load_dir(dir: &Path, previous: Option<&ConfigSet>) -> (ConfigSet, Vec<Diagnostic>) {
    DirCache::default().load(dir, previous)
}

/// What each file parsed into, by (path, modified time, length): a reload re-reads and re-parses only the files
/// that changed, so one edited file among many costs one file's parse.
#[derive(Default)]
pub struct DirCache {
    files: std::collections::HashMap<PathBuf, (Option<std::time::SystemTime>, u64, Parsed)>,
    parsed: u64,
}

impl DirCache {
    /// Files read and parsed so far (the others were served from the cache).
    pub fn files_parsed(&self) -> u64 {
        self.parsed
    }

    /// [`load_dir`], reusing what unchanged files parsed into last time.
    pub fn load(
        &mut self,
        dir: &Path,
        previous: Option<&ConfigSet>,
    ) -> (ConfigSet, Vec<Diagnostic>) {
        load_with(dir, previous, self)
    }

    fn parse(&mut self, file: &Path) -> Result<Parsed, LoadError> {
        let stamp = fs::metadata(file).map(|m| (m.modified().ok(), m.len()));
        if let Ok((modified, len)) = stamp {
            if let Some((m, l, parsed)) = self.files.get(file) {
                // A file rewritten within the clock's resolution keeps its stamp unless its length changed:
                // the modification time must also be old enough to be trusted.
                let settled = modified
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(2));
                if *m == modified && *l == len && settled {
                    return Ok(parsed.clone());
                }
            }
        }
        self.parsed += 1;
        let parsed = fs::read_to_string(file)
            .map_err(LoadError::from)
            .and_then(|text| parse_text(&text, Some(file)));
        match (&parsed, stamp) {
            (Ok(p), Ok((modified, len))) => {
                self.files
                    .insert(file.to_path_buf(), (modified, len, p.clone()));
            }
            _ => {
                self.files.remove(file);
            }
        }
        parsed
    }
}

fn load_with(
    dir: &Path,
    previous: Option<&ConfigSet>,
    cache: &mut DirCache,
) -> (ConfigSet, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let mut files = Vec::new();
    // Files or directories that could not be read: previous objects from under them are kept.
    let mut failed: Vec<PathBuf> = Vec::new();
    let mut unreadable = Vec::new();
    list_files(dir, 0, &mut files, &mut unreadable);
    for (path, e) in unreadable {
        diagnostics.push(file_diag(Some(&path), e.to_string()));
        failed.push(path);
    }

    let mut set = ConfigSet::new();
    let mut declared: BTreeMap<ObjectKey, PathBuf> = BTreeMap::new();
    let mut keep_previous = Vec::new();
    let listed: std::collections::HashSet<&PathBuf> = files.iter().collect();
    cache.files.retain(|f, _| listed.contains(f));
    for file in files {
        let parsed = match cache.parse(&file) {
            Ok(p) => p,
            Err(e) => {
                diagnostics.push(file_diag(Some(&file), e.to_string()));
                failed.push(file);
                continue;
            }
        };
        diagnostics.extend(parsed.diagnostics);
        if parsed.unidentified {
            failed.push(file.clone());
        }
        for outcome in parsed.outcomes {
            let key = match &outcome {
                Outcome::Accepted(o) => o.key(),
                Outcome::Rejected(k) => k.clone(),
            };
            if let Some(first) = declared.get(&key) {
                let reason = format!("duplicate: already defined in {}", first.display());
                diagnostics.push(
                    Diagnostic::error(&key, "metadata.name", reason).in_file(Some(file.clone())),
                );
                continue;
            }
            declared.insert(key.clone(), file.clone());
            match outcome {
                Outcome::Accepted(object) => {
                    set.insert(*object, Some(file.clone()));
                }
                Outcome::Rejected(key) => keep_previous.push(key),
            }
        }
    }

    if let Some(previous) = previous {
        for key in keep_previous {
            if let Some(entry) = previous.entry(&key) {
                set.insert(entry.object.clone(), entry.source.clone());
            }
        }
        for (key, entry) in previous.iter() {
            let from_failed = entry
                .source
                .as_ref()
                .is_some_and(|s| failed.iter().any(|f| s.starts_with(f)));
            if from_failed && !declared.contains_key(key) {
                set.insert(entry.object.clone(), entry.source.clone());
            }
        }
    }
    (set, diagnostics)
}
