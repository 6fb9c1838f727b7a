//! A small Kubernetes-like cluster made of Linux network namespaces, running the real mesh processes.
//!
//! - an underlay namespace with a bridge joins the nodes (198.19.0.<n>/24);
//! - each node is a namespace; its pods are namespaces attached to the node's bridge by the real CNI `bridge`
//!   and `host-local` plugins (198.18.<n>.0/24), as a container runtime would;
//! - each node runs a real node agent (`mesh-cni-agent`) and a real `ztunnel`, which gets its pods from the agent
//!   over ZDS; mesh pods are enrolled by the real `mesh-cni` plugin through the agent (iptables inside the pod).
//!
//! Everything is torn down on drop. Names carry a per-cluster prefix so tests run side by side.

pub mod bench;
pub mod control;
pub mod http;
pub mod kube_api;
pub mod live;
pub mod net;
pub mod prometheus;
pub mod seed;
pub mod waypoint;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use mesh_core::netns::NetNs;

pub const CNI_DIR: &str = "/usr/lib/cni";

/// Why netns tests cannot run here, if they cannot (probed once per process).
pub fn skip_reason() -> Option<String> {
    static REASON: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    REASON.get_or_init(probe).clone()
}

fn probe() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces, iptables)".into());
    }
    for tool in ["ip", "iptables-restore", "tcpdump"] {
        if which(tool).is_none() {
            return Some(format!(
                "{tool} not installed (run scripts/test.sh, which installs it)"
            ));
        }
    }
    if !Path::new(CNI_DIR).join("bridge").exists() {
        return Some(format!(
            "{CNI_DIR}/bridge missing (Debian package containernetworking-plugins)"
        ));
    }
    let probe = format!("mesh-probe-{}", std::process::id());
    if !run_ok("ip", &["netns", "add", &probe]) {
        return Some("cannot create network namespaces here".into());
    }
    run_ok("ip", &["netns", "del", &probe]);
    None
}

/// Skips the calling test (returns from it) with a printed reason when netns tests cannot run.
/// Under CI (`CI` set) a skip is a failure: CI runs as root and must run every test.
#[macro_export]
macro_rules! require_netns {
    () => {
        if let Some(reason) = $crate::skip_reason() {
            if std::env::var_os("CI").is_some() {
                panic!("CI must run netns tests, but: {reason}");
            }
            eprintln!("SKIPPED: {reason}");
            return;
        }
    };
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .chain(
            ["/usr/sbin", "/sbin"]
                .iter()
                .map(|d| Path::new(d).join(tool)),
        )
        .find(|p| p.exists())
}

fn run_ok(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a command, failing with its stderr.
pub fn sh(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where the workspace's binaries are (next to the running test or tool).
pub fn bin(name: &str) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MESH_BIN_DIR") {
        return Ok(PathBuf::from(dir).join(name));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("test binary has a directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "{} not built: run `cargo build --workspace --bins` first",
            p.display()
        );
    }
    Ok(p)
}

/// Polls `f` until it returns `Some` or the deadline passes.
pub fn poll<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub node: usize,
    pub service_account: String,
    pub labels: Vec<(String, String)>,
    /// Enrolled in the mesh (ambient) or not.
    pub mesh: bool,
}

impl PodSpec {
    pub fn mesh(name: &str, node: usize) -> Self {
        Self {
            name: name.into(),
            namespace: "default".into(),
            node,
            service_account: name.into(),
            labels: vec![("app".into(), name.into())],
            mesh: true,
        }
    }
    pub fn plain(name: &str, node: usize) -> Self {
        Self {
            mesh: false,
            ..Self::mesh(name, node)
        }
    }

    /// A pod running a waypoint for Gateway `name` (Istio's label and service account naming; not captured).
    pub fn waypoint(name: &str, node: usize) -> Self {
        Self {
            mesh: false,
            labels: vec![(waypoint::GATEWAY_NAME_LABEL.into(), name.into())],
            ..Self::mesh(name, node)
        }
    }

    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.into();
        self
    }

    pub fn with_labels(mut self, labels: &[(&str, &str)]) -> Self {
        self.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }

    pub fn is_waypoint(&self) -> bool {
        self.labels
            .iter()
            .any(|(k, _)| k == waypoint::GATEWAY_NAME_LABEL)
    }
}

pub struct Pod {
    pub spec: PodSpec,
    pub netns: String,
    pub ip: IpAddr,
    pub container_id: String,
    app: Option<Child>,
    enrolled: bool,
}

impl Pod {
    /// The pod's uid, as the runtime passes it (K8S_POD_UID) and a mock API server would list it.
    pub fn uid(&self) -> String {
        format!("uid-{}", self.netns)
    }
}

pub struct Node {
    pub name: String,
    pub netns: String,
    pub run_dir: PathBuf,
    pub config: PathBuf,
    ztunnel: Option<Child>,
    agent: Option<Child>,
}

pub struct Cluster {
    pub prefix: String,
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub services: Vec<serde_json::Value>,
    pub underlay: String,
    pub mode: Mode,
    control: Option<Child>,
    /// Labels of the `default` namespace (control-plane mode), e.g. `istio.io/use-waypoint`.
    pub namespace_labels: Vec<(String, String)>,
    /// Other processes the cluster owns (waypoints), killed with it.
    pub(crate) children: Vec<(String, Child)>,
}

/// Where ztunnels get workloads and certificates from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A local state file and the development CA (ztunnel standalone).
    Local,
    /// The control plane (`control`), in file mode, at 198.19.0.254 on the underlay.
    ControlPlane,
}

impl Cluster {
    /// Builds `nodes` nodes and `pods`, writes the mesh state, starts ztunnels and enrolls the mesh pods.
    pub fn start(nodes: usize, pods: Vec<PodSpec>) -> Result<Self> {
        Self::start_with(nodes, pods, Mode::Local)
    }

    pub fn start_with(nodes: usize, pods: Vec<PodSpec>, mode: Mode) -> Result<Self> {
        Self::start_configured(nodes, pods, mode, "")
    }

    /// Like [`Cluster::start_with`], with `ztunnel_yaml` appended to every ztunnel's config.
    pub fn start_configured(
        nodes: usize,
        pods: Vec<PodSpec>,
        mode: Mode,
        ztunnel_yaml: &str,
    ) -> Result<Self> {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("m{}x{id}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("mesh-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut c = Cluster {
            underlay: format!("{prefix}-net"),
            prefix,
            dir,
            nodes: Vec::new(),
            pods: Vec::new(),
            services: Vec::new(),
            mode,
            control: None,
            namespace_labels: Vec::new(),
            children: Vec::new(),
        };
        c.build_underlay()?;
        for i in 1..=nodes {
            c.add_node(i, nodes, ztunnel_yaml)?;
        }
        for spec in pods {
            c.add_pod(spec)?;
        }
        c.write_state()?;
        if mode == Mode::ControlPlane {
            c.start_control()?;
        }
        for i in 0..c.nodes.len() {
            c.start_agent(i)?;
            c.start_ztunnel(i)?;
        }
        for i in 0..c.pods.len() {
            if c.pods[i].spec.mesh {
                c.enroll(i)?;
            }
        }
        Ok(c)
    }

    fn build_underlay(&self) -> Result<()> {
        sh("ip", &["netns", "add", &self.underlay])?;
        let u = self.underlay.as_str();
        sh("ip", &["-n", u, "link", "add", "br0", "type", "bridge"])?;
        sh("ip", &["-n", u, "link", "set", "br0", "up"])?;
        sh("ip", &["-n", u, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn add_node(&mut self, i: usize, total: usize, extra: &str) -> Result<()> {
        let netns = format!("{}-n{i}", self.prefix);
        sh("ip", &["netns", "add", &netns])?;
        let peer = format!("{}n{i}", self.prefix);
        sh(
            "ip",
            &[
                "link",
                "add",
                "eth0",
                "netns",
                &netns,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "netns",
                &self.underlay,
            ],
        )?;
        sh(
            "ip",
            &[
                "-n",
                &self.underlay,
                "link",
                "set",
                &peer,
                "master",
                "br0",
                "up",
            ],
        )?;
        sh(
            "ip",
            &[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("198.19.0.{i}/24"),
                "dev",
                "eth0",
            ],
        )?;
        sh("ip", &["-n", &netns, "link", "set", "eth0", "up"])?;
        sh("ip", &["-n", &netns, "link", "set", "lo", "up"])?;
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &netns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )?;
        for j in (1..=total).filter(|j| *j != i) {
            sh(
                "ip",
                &[
                    "-n",
                    &netns,
                    "route",
                    "add",
                    &format!("198.18.{j}.0/24"),
                    "via",
                    &format!("198.19.0.{j}"),
                ],
            )?;
        }
        let run_dir = self.dir.join(format!("run-n{i}"));
        std::fs::create_dir_all(&run_dir)?;
        let config = self.dir.join(format!("ztunnel-n{i}.yaml"));
        let source = match self.mode {
            Mode::Local => format!(
                "localStateFile: {}\ndevCaDir: {}\n",
                self.state_file().display(),
                self.ca_dir().display()
            ),
            Mode::ControlPlane => self.control_plane_ref(i)?,
        };
        let yaml = format!(
            "nodeName: node{i}\n{source}runDir: {}\nstatePollInterval: 200ms\ndrainTimeout: 5s\n{extra}",
            run_dir.display()
        );
        std::fs::write(&config, yaml)?;
        self.nodes.push(Node {
            name: format!("node{i}"),
            netns,
            run_dir,
            config,
            ztunnel: None,
            agent: None,
        });
        Ok(())
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.yaml")
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    fn cni_conf(&self, node: usize) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "meshnet",
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": format!("198.18.{}.0/24", node + 1)}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": self.dir.join(format!("ipam-n{}", node + 1)),
            }
        })
    }

    fn cni(
        &self,
        plugin: &Path,
        command: &str,
        pod: &Pod,
        conf: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let node = &self.nodes[pod.spec.node];
        let mut child = Command::new("ip")
            .args(["netns", "exec", &node.netns])
            .arg(plugin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_NETNS", format!("/run/netns/{}", pod.netns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_DIR)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={}",
                    pod.spec.namespace,
                    pod.spec.name,
                    pod.uid()
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running CNI plugin {}", plugin.display()))?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "CNI {} {command} for {} failed: {stdout} {}",
                plugin.display(),
                pod.spec.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if stdout.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        Ok(serde_json::from_str(&stdout)?)
    }

    fn add_pod(&mut self, spec: PodSpec) -> Result<()> {
        let netns = format!("{}-{}", self.prefix, spec.name);
        sh("ip", &["netns", "add", &netns])?;
        sh("ip", &["-n", &netns, "link", "set", "lo", "up"])?;
        let mut pod = Pod {
            container_id: netns.clone(),
            netns,
            ip: IpAddr::from([0, 0, 0, 0]),
            spec,
            app: None,
            enrolled: false,
        };
        let result = self.cni(
            &Path::new(CNI_DIR).join("bridge"),
            "ADD",
            &pod,
            &self.cni_conf(pod.spec.node),
        )?;
        let addr = result["ips"][0]["address"]
            .as_str()
            .ok_or_else(|| anyhow!("bridge plugin returned no IP: {result}"))?;
        pod.ip = addr.split('/').next().unwrap_or_default().parse()?;
        let app = Command::new("ip")
            .args(["netns", "exec", &pod.netns])
            .arg(bin("mesh-testapp")?)
            .env("POD_NAME", &pod.spec.name)
            .env(
                "POD_VERSION",
                pod.spec
                    .labels
                    .iter()
                    .find(|(k, _)| k == "version")
                    .map_or("", |(_, v)| v.as_str()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        pod.app = Some(app);
        let ns = NetNs::named(&pod.netns)?;
        poll("test app to listen", Duration::from_secs(10), || {
            ns.run(|| TcpStream::connect(("127.0.0.1", 8080)).ok())
                .ok()
                .flatten()
        })?;
        self.pods.push(pod);
        Ok(())
    }

    /// Adds a service (ClusterIP `vip`) selecting pods by `app` label, and waits until every running ztunnel
    /// has it (each polls its source on its own schedule; tests must not race them).
    pub fn add_service(
        &mut self,
        name: &str,
        vip: &str,
        port: u16,
        target: u16,
        app: &str,
    ) -> Result<()> {
        self.add_service_spec(serde_json::json!({
            "name": name, "namespace": "default", "vip": vip,
            "ports": [{"port": port, "targetPort": target}],
            "selector": {"app": app},
        }))
    }

    /// Adds a service given in the state file's shape (`name`, `namespace`, `vip`, `ports`, `selector`, and in
    /// control-plane mode optional `labels`), and waits until every running ztunnel has it.
    pub fn add_service_spec(&mut self, spec: serde_json::Value) -> Result<()> {
        let name = spec["name"].as_str().context("service name")?.to_string();
        self.services.push(spec);
        self.write_state()?;
        if self.mode == Mode::ControlPlane && self.control.is_none() {
            return Ok(());
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].ztunnel.is_none() {
                continue;
            }
            poll(
                &format!("node{} to see service {name}", i + 1),
                Duration::from_secs(20),
                || {
                    let dump = self.config_dump(i).ok()?;
                    let services = dump["state"]["services"].as_array()?;
                    services.iter().any(|s| s["name"] == name).then_some(())
                },
            )?;
        }
        Ok(())
    }

    /// Writes the mesh state (workloads of mesh pods, services) that every ztunnel watches.
    pub fn write_state(&self) -> Result<()> {
        if self.mode == Mode::ControlPlane {
            return self.write_config_dir();
        }
        let workloads: Vec<serde_json::Value> = self
            .pods
            .iter()
            .filter(|p| p.spec.mesh)
            .map(|p| {
                let labels: serde_json::Map<String, serde_json::Value> =
                    p.spec.labels.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
                serde_json::json!({
                    "name": p.spec.name, "namespace": p.spec.namespace, "serviceAccount": p.spec.service_account,
                    "ip": p.ip, "node": self.nodes[p.spec.node].name, "labels": labels,
                })
            })
            .collect();
        let state = serde_json::json!({"workloads": workloads, "services": self.services});
        let tmp = self.state_file().with_extension("tmp");
        std::fs::write(&tmp, mesh_primitives::yaml::to_string(&state)?)?;
        std::fs::rename(&tmp, self.state_file())?;
        Ok(())
    }

    pub fn start_ztunnel(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        let log = self.dir.join(format!("ztunnel-n{}.log", i + 1));
        let config = node.config.as_os_str().to_owned();
        let child = spawn_in_node(
            &node.netns,
            "ztunnel",
            &["--config".as_ref(), &config],
            &log,
        )?;
        node.ztunnel = Some(child);
        let netns = node.netns.clone();
        poll("ztunnel to be ready", Duration::from_secs(20), || {
            http_get(&netns, "127.0.0.1:15021", "/healthz/ready")
                .ok()
                .filter(|(s, _)| *s == 200)
        })
        .with_context(|| format!("ztunnel log: {}", self.ztunnel_log(i)))?;
        Ok(())
    }

    /// Starts the node agent (`mesh-cni-agent`, local mode) of node `i`: ztunnel gets the node's pods from it.
    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        let log = self.dir.join(format!("agent-n{}.log", i + 1));
        let run_dir = node.run_dir.as_os_str().to_owned();
        let args = [
            "--mode".as_ref(),
            "local".as_ref(),
            "--run-dir".as_ref(),
            run_dir.as_os_str(),
        ];
        let child = spawn_in_node(&node.netns, "mesh-cni-agent", &args, &log)?;
        node.agent = Some(child);
        let sock = node.run_dir.join("mesh-cni.sock");
        poll("node agent to listen", Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&sock).ok()
        })
        .with_context(|| format!("agent log: {}", self.agent_log(i)))?;
        Ok(())
    }

    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("agent-n{}.log", i + 1))).unwrap_or_default()
    }

    /// SIGKILL (crash) or SIGTERM the node's agent.
    pub fn signal_agent(&mut self, i: usize, sig: nix::sys::signal::Signal) -> Option<Child> {
        let child = self.nodes[i].agent.take()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
        Some(child)
    }

    pub fn ztunnel_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("ztunnel-n{}.log", i + 1)))
            .unwrap_or_default()
    }

    /// SIGKILL (crash) or SIGTERM (drain) the node's ztunnel.
    pub fn signal_ztunnel(&mut self, i: usize, sig: nix::sys::signal::Signal) -> Option<Child> {
        let child = self.nodes[i].ztunnel.take()?;
        // `ip netns exec` execs the binary, so the child pid is ztunnel's.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
        Some(child)
    }

    fn cni_chain_conf(&self, pod: &Pod, prev: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.0.0", "name": "meshnet", "type": "mesh-cni",
            "prevResult": prev,
            "ztunnel": {"runDir": self.nodes[pod.spec.node].run_dir},
        })
    }

    pub fn enroll(&mut self, i: usize) -> Result<()> {
        let pod = &self.pods[i];
        let prev = serde_json::json!({"cniVersion": "1.0.0", "ips": [{"address": format!("{}/24", pod.ip)}]});
        self.cni(
            &bin("mesh-cni")?,
            "ADD",
            pod,
            &self.cni_chain_conf(pod, prev),
        )?;
        self.pods[i].enrolled = true;
        Ok(())
    }

    pub fn unenroll(&mut self, i: usize) -> Result<()> {
        let pod = &self.pods[i];
        self.cni(
            &bin("mesh-cni")?,
            "DEL",
            pod,
            &self.cni_chain_conf(pod, serde_json::Value::Null),
        )?;
        self.pods[i].enrolled = false;
        Ok(())
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.spec.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in the cluster"))
    }

    pub fn pod_index(&self, name: &str) -> usize {
        self.pods
            .iter()
            .position(|p| p.spec.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in the cluster"))
    }

    /// ztunnel's admin or metrics endpoint on node `i` (inside the node's namespace).
    pub fn node_get(&self, i: usize, addr: &str, path: &str) -> Result<(u16, String)> {
        http_get(&self.nodes[i].netns, addr, path)
    }

    pub fn metrics(&self, i: usize) -> Result<String> {
        Ok(self.node_get(i, "127.0.0.1:15020", "/metrics")?.1)
    }

    pub fn config_dump(&self, i: usize) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &self.node_get(i, "127.0.0.1:15000", "/config_dump")?.1,
        )?)
    }

    /// Starts a packet capture of everything node 1 sends to or receives from the other nodes (its underlay port).
    pub fn capture(&self) -> Result<net::Capture> {
        let port = format!("{}n1", self.prefix);
        let file = self
            .dir
            .join(format!("cap-{}.pcap", NEXT.fetch_add(1, Ordering::Relaxed)));
        let cap = net::Capture::start(&self.underlay, &port, &file)?;
        // Node 1 to node 2's discard port: nothing listens, the SYN and RST cross the captured link.
        Ok(match self.nodes.get(1) {
            Some(_) => {
                cap.with_sentinel(&self.nodes[0].netns, SocketAddr::from(([198, 19, 0, 2], 9)))
            }
            None => cap,
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut c) = self.control.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &mut self.nodes {
            for mut c in [n.ztunnel.take(), n.agent.take()].into_iter().flatten() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for p in &mut self.pods {
            if let Some(mut c) = p.app.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            run_ok("ip", &["netns", "del", &p.netns]);
        }
        for n in &self.nodes {
            run_ok("ip", &["netns", "del", &n.netns]);
        }
        run_ok("ip", &["netns", "del", &self.underlay]);
        if std::env::var_os("MESH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs one of the mesh's binaries inside a node's network namespace, its output appended to `log` (a restarted
/// process adds to its predecessor's log), at `MESH_LOG` (default info).
fn spawn_in_node(
    netns: &str,
    binary: &str,
    args: &[&std::ffi::OsStr],
    log: &Path,
) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Ok(Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(bin(binary)?)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("MESH_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?)
}

/// A minimal HTTP/1.0 GET from inside network namespace `netns`.
pub fn http_get(netns: &str, addr: &str, path: &str) -> Result<(u16, String)> {
    let addr: SocketAddr = addr.parse()?;
    let mut s = net::connect_in(netns, addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP response: {resp:?}"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
