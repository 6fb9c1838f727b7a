//! The benchmark suite's smoke run (figures are not asserted: CI machines are noisy): `mesh-bench-l4 --smoke`
//! must bring up every path, carry traffic over each, and fill its table.

use std::process::Command;

use mesh_tests::{bin, require_netns};

/// The figures of one table row, by column (`None` for "–").
fn row(table: &str, label: &str) -> Vec<Option<f64>> {
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("| {label}")))
        .unwrap_or_else(|| panic!("no row {label:?} in:\n{table}"));
    line.trim_matches('|')
        .split('|')
        .skip(1)
        .map(|c| c.trim().parse::<f64>().ok())
        .collect()
}

#[test]
fn the_l4_benchmark_measures_every_path() {
    require_netns!();
    let out = Command::new(bin("mesh-bench-l4").unwrap())
        .arg("--smoke")
        .env_remove("ISTIO_ZTUNNEL")
        .output()
        .expect("mesh-bench-l4 runs");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mesh-bench-l4 --smoke failed:\n{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Columns: direct, HAProxy, ours, ours / HAProxy.
    for streams in [1, 4] {
        let gbit = row(&table, &format!("throughput, {streams} conn(s)"));
        for (i, path) in ["direct", "HAProxy", "ours"].iter().enumerate() {
            assert!(
                gbit[i].is_some_and(|g| g > 0.0),
                "{path} carried nothing with {streams} connection(s):\n{table}"
            );
        }
        let cpu = row(
            &table,
            &format!("Gbit per proxy CPU-second, {streams} conn(s)"),
        );
        assert!(cpu[0].is_none(), "the direct path has no proxy");
        assert!(cpu[1].is_some() && cpu[2].is_some(), "{table}");
    }
    let echo = row(&table, "connect + 1-byte echo p50");
    assert!(
        echo[..3].iter().all(|v| v.is_some_and(|us| us > 0.0)),
        "{table}"
    );
    let per_conn = row(&table, "RSS per idle tunnelled connection");
    assert!(
        per_conn[2].is_some(),
        "ours has a per-connection figure:\n{table}"
    );
}
