//! Client sockets inside a pod's namespace, and packet captures.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mesh_core::netns::NetNs;

/// A blocking TCP connection opened from inside `netns` (as the pod's app would: unmarked, so it is captured).
pub fn connect_in(netns: &str, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let ns = NetNs::named(netns).with_context(|| format!("opening netns {netns}"))?;
    let s = ns
        .run(|| TcpStream::connect_timeout(&addr, timeout))?
        .with_context(|| format!("connecting to {addr} from {netns}"))?;
    Ok(s)
}

/// A tokio TCP connection opened from inside `ns`.
pub async fn connect_in_async(ns: &NetNs, addr: SocketAddr) -> Result<tokio::net::TcpStream> {
    let sock = ns.run(tokio::net::TcpSocket::new_v4)??;
    Ok(sock.connect(addr).await?)
}

/// Sends `data`, half-closes, reads everything back.
pub fn exchange(netns: &str, addr: SocketAddr, data: &[u8]) -> Result<Vec<u8>> {
    let mut s = connect_in(netns, addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(data)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// The address the app's `whoami` port saw the connection come from.
pub fn whoami(netns: &str, ip: std::net::IpAddr) -> Result<SocketAddr> {
    let out = exchange(netns, SocketAddr::new(ip, 8081), b"")?;
    Ok(String::from_utf8(out)?.trim().parse()?)
}

/// A running `tcpdump` writing a pcap file.
pub struct Capture {
    child: Child,
    file: PathBuf,
    /// A connection attempt (from a namespace, to an address) whose packets cross the captured link: once they
    /// are in the file, everything sent before them is too, so stopping cannot lose packets.
    sentinel: Option<(String, SocketAddr)>,
}

impl Capture {
    pub fn start(netns: &str, iface: &str, file: &Path) -> Result<Self> {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "tcpdump",
                "--immediate-mode",
                "-i",
                iface,
                "-s",
                "0",
                "-U",
                "-n",
                "-w",
            ])
            .arg(file)
            .arg("tcp")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump")?;
        let stderr = child.stderr.take().context("tcpdump stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("listening on") => break,
                Some(Ok(_)) => continue,
                _ => bail!("tcpdump did not start"),
            }
        }
        // Keep reading so tcpdump's closing statistics never hit a closed pipe (SIGPIPE would lose packets).
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self {
            child,
            file: file.to_path_buf(),
            sentinel: None,
        })
    }

    /// Makes `finish` wait until a connection attempt from `netns` to `addr` has been captured.
    pub fn with_sentinel(mut self, netns: &str, addr: SocketAddr) -> Self {
        self.sentinel = Some((netns.to_string(), addr));
        self
    }

    /// Stops the capture (after its sentinel reached the file) and returns the raw pcap bytes.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        if let Some((ns, addr)) = self.sentinel.take() {
            let filter = format!("tcp port {}", addr.port());
            crate::poll("the capture to catch up", Duration::from_secs(10), || {
                // A closed port answers at once with RST; each attempt adds packets to look for.
                let _ = connect_in(&ns, addr, Duration::from_millis(200));
                (count_packets(&self.file, &filter).ok()? > 0).then_some(())
            })?;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
        Ok(std::fs::read(&self.file)?)
    }

    pub fn file(&self) -> &Path {
        &self.file
    }
}

/// Counts packets in a pcap file that match a tcpdump filter.
pub fn count_packets(file: &Path, filter: &str) -> Result<usize> {
    let out = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(file)
        .args(filter.split_whitespace())
        .stderr(Stdio::null())
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
