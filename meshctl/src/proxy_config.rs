//! `meshctl proxy-config` and `meshctl logs-level`: what a running proxy holds, read from its admin port
//! (`/config_dump`, as `istioctl proxy-config` reads a ztunnel's or Envoy's), printed as a table or as JSON; and
//! its log level changed at runtime (`POST /logging?level=`).
//!
//! A process is named by its admin address (`127.0.0.1:15000`, or just the port). ztunnel and waypoints listen
//! on 127.0.0.1 in their own network namespace, so meshctl runs there: `ip netns exec NODE meshctl ...` here,
//! `kubectl exec` or a port-forward in a cluster.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use clap::ValueEnum;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach the admin port {addr}: {source} (is the proxy running, and is meshctl in its network namespace?)")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr} is not an admin address (host:port, or a port)")]
    Address { addr: String },
    #[error("{addr}{path}: {reason}")]
    Reply {
        addr: String,
        path: String,
        reason: String,
    },
    #[error("this process has no {section} in its /config_dump ({which})")]
    Missing {
        section: &'static str,
        which: &'static str,
    },
}

/// What `proxy-config` shows.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Section {
    /// Workloads the proxy knows (name, address, node, identity).
    Workloads,
    /// Services and their VIPs, ports and waypoint.
    Services,
    /// Authorization policies in force (ztunnel).
    Policies,
    /// Certificates held, with their expiry and renewal.
    Certs,
    /// L7 routes per service (waypoint).
    Routes,
    /// Upstream clusters with active requests, connections and ejected hosts (waypoint).
    Clusters,
}

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// `127.0.0.1:15000`, `localhost:15000`, or a bare port (on 127.0.0.1).
fn normalize(addr: &str) -> Result<String, AdminError> {
    let port_only = addr.trim_start_matches(':');
    if port_only.parse::<u16>().is_ok() {
        return Ok(format!("127.0.0.1:{port_only}"));
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(addr.into()),
        _ => Err(AdminError::Address { addr: addr.into() }),
    }
}

/// `meshctl dashboard`: the mesh page on the control plane's monitoring address.
pub fn dashboard_url(addr: &str) -> Result<String, AdminError> {
    Ok(format!("http://{}/dashboard", normalize(addr)?))
}

/// One HTTP/1.0 request to an admin port: the status and the body.
fn request(addr: &str, method: &str, path: &str) -> Result<(u16, String), AdminError> {
    let connect = |source| AdminError::Connect {
        addr: addr.into(),
        source,
    };
    let target = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(connect)?
        .next()
        .ok_or_else(|| AdminError::Address { addr: addr.into() })?;
    let mut stream =
        TcpStream::connect_timeout(&target, Duration::from_secs(5)).map_err(connect)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(connect)?;
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(connect)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(connect)?;
    let text = String::from_utf8_lossy(&raw);
    let reply = |reason: String| AdminError::Reply {
        addr: addr.into(),
        path: path.into(),
        reason,
    };
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| reply("not an HTTP reply".into()))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| reply("not an HTTP reply".into()))?;
    Ok((status, body.to_string()))
}

/// Percent-encodes a query value (`info,access=off` → `info%2Caccess%3Doff`).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `meshctl logs-level`: sets the process's log filter (`RUST_LOG` syntax) and returns what it now is.
pub fn logs_level(addr: &str, level: &str) -> Result<String, AdminError> {
    let addr = normalize(addr)?;
    let path = format!("/logging?level={}", encode(level));
    let (status, body) = request(&addr, "POST", &path)?;
    if status != 200 {
        return Err(AdminError::Reply {
            addr,
            path,
            reason: format!("HTTP {status}: {}", body.trim()),
        });
    }
    Ok(body)
}

/// `meshctl proxy-config`: the section of the process's `/config_dump`, as a table or as JSON.
pub fn proxy_config(section: Section, addr: &str, output: Output) -> Result<String, AdminError> {
    let addr = normalize(addr)?;
    let (status, body) = request(&addr, "GET", "/config_dump")?;
    let reply = |reason: String| AdminError::Reply {
        addr: addr.clone(),
        path: "/config_dump".into(),
        reason,
    };
    if status != 200 {
        return Err(reply(format!("HTTP {status}: {}", body.trim())));
    }
    let dump: Value = serde_json::from_str(&body).map_err(|e| reply(e.to_string()))?;
    let (items, header, row) = section.view(&dump)?;
    Ok(match output {
        Output::Json => {
            serde_json::to_string_pretty(&items).expect("a JSON value serializes") + "\n"
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = items
                .as_array()
                .map(|a| a.iter().map(row).collect())
                .unwrap_or_default();
            table(header, &rows)
        }
    })
}

type Row = fn(&Value) -> Vec<String>;

impl Section {
    /// The items of this section in a dump (ztunnel's or a waypoint's), the table's header and a row maker.
    fn view(self, dump: &Value) -> Result<(Value, &'static [&'static str], Row), AdminError> {
        // ztunnel keeps its workload state under `state`, a waypoint at the top.
        let state = if dump["state"].is_object() {
            &dump["state"]
        } else {
            dump
        };
        let (items, header, row): (&Value, &'static [&'static str], Row) = match self {
            Section::Workloads => (
                &state["workloads"],
                &[
                    "NAMESPACE",
                    "NAME",
                    "IP",
                    "NODE",
                    "SERVICE ACCOUNT",
                    "PROTOCOL",
                ],
                |w| {
                    cols(
                        w,
                        &[
                            "namespace",
                            "name",
                            "ip",
                            "node",
                            "serviceAccount",
                            "protocol",
                        ],
                    )
                },
            ),
            Section::Services => (
                &state["services"],
                &["NAMESPACE", "NAME", "VIP", "PORTS", "WAYPOINT"],
                |s| {
                    let ports = s["ports"].as_array().into_iter().flatten();
                    let ports: Vec<String> = ports
                        .map(|p| format!("{}->{}", text(&p["port"]), text(&p["targetPort"])))
                        .collect();
                    let mut row = cols(s, &["namespace", "name", "vip"]);
                    row.extend([ports.join(","), text(&s["waypoint"])]);
                    row
                },
            ),
            Section::Policies => (&dump["authorizationPolicies"], &["POLICY"], |p| {
                vec![text(p)]
            }),
            Section::Certs => (
                &dump["certificates"],
                &["IDENTITY", "EXPIRES IN", "RENEWS IN", "RENEWAL FAILURES"],
                |c| {
                    let secs = |v: &Value| format!("{}s", text(v));
                    vec![
                        text(&c["identity"]),
                        secs(&c["expiresInSecs"]),
                        secs(&c["renewInSecs"]),
                        text(&c["renewalFailures"]),
                    ]
                },
            ),
            Section::Routes => (
                &dump["l7"]["services"],
                &["SERVICE", "ROUTES", "SUBSETS", "FROM"],
                |s| {
                    ["service", "routes", "subsets", "sources"]
                        .iter()
                        .map(|k| text(&s[*k]))
                        .collect()
                },
            ),
            Section::Clusters => (
                &dump["clusters"],
                &[
                    "CLUSTER",
                    "ACTIVE REQUESTS",
                    "CONNECTIONS",
                    "HTTP2 CONNECTIONS",
                    "EJECTED",
                ],
                |c| {
                    cols(
                        c,
                        &[
                            "name",
                            "activeRequests",
                            "connections",
                            "http2Connections",
                            "ejected",
                        ],
                    )
                },
            ),
        };
        if !items.is_array() {
            return Err(AdminError::Missing {
                section: self.name(),
                which: match self {
                    Section::Policies => "ztunnel has them",
                    Section::Routes | Section::Clusters => "a waypoint has them",
                    _ => "ztunnel and waypoints have them",
                },
            });
        }
        Ok((items.clone(), header, row))
    }

    fn name(self) -> &'static str {
        match self {
            Section::Workloads => "workloads",
            Section::Services => "services",
            Section::Policies => "policies",
            Section::Certs => "certs",
            Section::Routes => "routes",
            Section::Clusters => "clusters",
        }
    }
}

fn cols(v: &Value, keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| text(&v[*k])).collect()
}

/// A cell: strings as they are, lists comma-joined, nothing as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Left-aligned columns, two spaces apart, as `kubectl get` prints them.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_levels_and_tables() {
        assert_eq!(normalize("15000").unwrap(), "127.0.0.1:15000");
        assert_eq!(normalize(":15020").unwrap(), "127.0.0.1:15020");
        assert_eq!(normalize("10.0.0.1:15000").unwrap(), "10.0.0.1:15000");
        assert!(normalize("ztunnel").is_err());
        assert_eq!(encode("info,access=off"), "info%2Caccess%3Doff");
        let t = table(&["A", "LONGER"], &[vec!["wide cell".into(), "x".into()]]);
        assert_eq!(t, "A          LONGER\nwide cell  x\n");
        let dump = serde_json::json!({"state": {"workloads": [{"name": "w", "namespace": "n", "ip": "1.2.3.4"}]}});
        let (items, _, row) = Section::Workloads.view(&dump).unwrap();
        assert_eq!(row(&items[0])[..3], ["n", "w", "1.2.3.4"]);
        assert!(matches!(
            Section::Routes.view(&dump),
            Err(AdminError::Missing {
                section: "routes",
                ..
            })
        ));
    }
}
