//! "Did you mean ...?" for a misspelt field, kind or setting: the known name closest to what was written.

/// The candidate closest to `word` when it is close enough to be a slip (edit distance ≤ 2, and less than half
/// the word), e.g. `weigth` → `weight`, `mod` → `mode`, `VirtualServce` → `VirtualService`.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = 2.min(word.chars().count().saturating_sub(1) / 2 + 1);
    candidates
        .into_iter()
        .map(|c| {
            (
                distance(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}

/// Levenshtein distance, with an adjacent transposition counted as one edit.
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// A config parser's "unknown field `x`, expected one of a, b, ..." as one line, with a suggestion added when
/// one of the expected names is close (the parser's source excerpt that follows is dropped).
pub fn explain_unknown_field(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default();
    let Some((before, rest)) = first.split_once("unknown field `") else {
        return message.to_string();
    };
    let Some((field, after)) = rest.split_once('`') else {
        return message.to_string();
    };
    let expected = after
        .split_once("expected one of ")
        .map(|(_, list)| list)
        .unwrap_or_default();
    let candidates = expected
        .split(", ")
        .map(|c| c.trim_matches(|ch: char| ch == '`' || ch.is_whitespace()));
    match did_you_mean(field, candidates) {
        Some(s) => format!("{before}unknown field `{field}` (did you mean `{s}`?){after}"),
        None => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("nodeNmae", ["nodeName", "runDir"]),
            Some("nodeName")
        );
        assert_eq!(did_you_mean("colour", ["mode", "mtls"]), None);
        let e = explain_unknown_field(
            "unknown field `nodeNmae`, expected one of `nodeName`, `runDir` at line 2",
        );
        assert_eq!(e, "unknown field `nodeNmae` (did you mean `nodeName`?), expected one of `nodeName`, `runDir` at line 2");
    }
}
