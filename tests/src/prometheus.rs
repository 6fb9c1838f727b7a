//! Debian's real Prometheus server scraping the harness: it runs in node 1's network namespace (which reaches
//! every node, pod and the control plane), discovers its targets from a file the harness writes
//! (`file_sd_configs`), scrapes every second, and is asked through its HTTP API with PromQL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::{http_get, poll, Cluster};

const LISTEN: &str = "127.0.0.1:9090";

pub struct Prometheus {
    child: Child,
    netns: String,
    pub dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why Prometheus cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    match Command::new("prometheus").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("Debian's prometheus is not installed (apt-get install prometheus)".into()),
    }
}

/// One scrape target group: `job` label and `host:port` targets.
pub struct Targets {
    pub job: &'static str,
    pub targets: Vec<String>,
}

/// The harness's processes: both ztunnels (15020), the control plane (15014) and the named waypoints (15020).
pub fn mesh_targets(c: &Cluster, waypoints: &[&str]) -> Vec<Targets> {
    vec![
        Targets {
            job: "ztunnel",
            targets: (1..=c.nodes.len())
                .map(|i| format!("198.19.0.{i}:15020"))
                .collect(),
        },
        Targets {
            job: "control",
            targets: vec![format!("{}:15014", crate::control::CONTROL_IP)],
        },
        Targets {
            job: "waypoint",
            targets: waypoints
                .iter()
                .map(|w| format!("{}:15020", c.pod(w).ip))
                .collect(),
        },
    ]
}

impl Prometheus {
    /// Starts Prometheus on `targets` and waits until it has scraped every one of them once.
    pub fn start(c: &Cluster, targets: Vec<Targets>) -> Result<Self> {
        let dir = c.dir.join("prometheus");
        std::fs::create_dir_all(&dir)?;
        let sd: Vec<serde_json::Value> = targets
            .iter()
            .map(|t| serde_json::json!({"targets": t.targets, "labels": {"job": t.job}}))
            .collect();
        let sd_file = dir.join("targets.json");
        std::fs::write(&sd_file, serde_json::to_string_pretty(&sd)?)?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n- job_name: mesh\n  file_sd_configs:\n  - files: [{}]\n    refresh_interval: 1s\n",
            sd_file.display()
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let netns = c.nodes[0].netns.clone();
        let child = Command::new("ip")
            .args(["netns", "exec", &netns, "prometheus"])
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={LISTEN}"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting prometheus")?;
        let p = Prometheus { child, netns, dir };
        let expected: usize = targets.iter().map(|t| t.targets.len()).sum();
        poll(
            "prometheus to scrape every target",
            Duration::from_secs(60),
            || {
                let up = p.query("up").ok()?;
                (up.len() == expected && up.iter().all(|(_, v)| *v == 1.0)).then_some(())
            },
        )
        .with_context(|| format!("prometheus log: {}", p.log()))?;
        Ok(p)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: each series' labels and value.
    pub fn query(
        &self,
        promql: &str,
    ) -> Result<Vec<(serde_json::Map<String, serde_json::Value>, f64)>> {
        let (status, body) = http_get(
            &self.netns,
            LISTEN,
            &format!("/api/v1/query?query={}", encode(promql)),
        )?;
        let v: serde_json::Value = serde_json::from_str(&body).with_context(|| body.clone())?;
        if status != 200 || v["status"] != "success" {
            bail!("query {promql:?}: HTTP {status}: {body}");
        }
        let series = v["data"]["result"]
            .as_array()
            .ok_or_else(|| anyhow!("no result: {body}"))?;
        series
            .iter()
            .map(|s| {
                let labels = s["metric"].as_object().cloned().unwrap_or_default();
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .ok_or_else(|| anyhow!("no value in {s}"))?;
                Ok((labels, value))
            })
            .collect()
    }

    /// The sum of a query's series (0 when there are none).
    pub fn scalar(&self, promql: &str) -> Result<f64> {
        Ok(self.query(promql)?.iter().map(|(_, v)| v).sum())
    }

    /// A query's series by the value of one label.
    pub fn by(&self, promql: &str, label: &str) -> Result<std::collections::BTreeMap<String, f64>> {
        Ok(self
            .query(promql)?
            .into_iter()
            .map(|(l, v)| {
                (
                    l.get(label)
                        .and_then(|x| x.as_str())
                        .unwrap_or_default()
                        .to_string(),
                    v,
                )
            })
            .collect())
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A query a shipped Grafana dashboard runs: its file, the panel or variable, the PromQL.
#[derive(Debug)]
pub struct DashboardQuery {
    pub file: String,
    pub panel: String,
    pub promql: String,
}

/// Every query of the dashboards the control chart ships (`charts/control/dashboards/*.json`): each panel
/// target's `expr` with the template variables set to All (`.*`) and `$__rate_interval` to `window`, and each
/// `label_values(metric, label)` variable as `count by (label) (metric)`.
pub fn dashboard_queries(window: &str) -> Result<Vec<DashboardQuery>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/control/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let file = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("{file} is not JSON"))?;
        let mut panels: Vec<&serde_json::Value> = dashboard["panels"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        while let Some(panel) = panels.pop() {
            panels.extend(panel["panels"].as_array().into_iter().flatten());
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_default();
                let promql = ["$namespace", "$service", "$workload"]
                    .iter()
                    .fold(expr.replace("$__rate_interval", window), |q, var| {
                        q.replace(var, ".*")
                    });
                out.push(DashboardQuery {
                    file: file.clone(),
                    panel: panel["title"].as_str().unwrap_or_default().to_string(),
                    promql,
                });
            }
        }
        for var in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let query = var["query"].as_str().unwrap_or_default();
            if let Some(args) = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
            {
                let (metric, label) = args
                    .rsplit_once(',')
                    .with_context(|| format!("{file}: variable query {query:?}"))?;
                out.push(DashboardQuery {
                    file: file.clone(),
                    panel: format!("variable {}", var["name"].as_str().unwrap_or_default()),
                    promql: format!("count by ({}) ({})", label.trim(), metric.trim()),
                });
            }
        }
    }
    Ok(out)
}
