//! Linux network namespaces: run a closure with the current thread inside another namespace.
//!
//! A socket belongs to the namespace it was created in, so ztunnel creates a pod's listeners and its outgoing
//! sockets while briefly inside the pod's namespace, then returns; everything else runs in the node's namespace.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::sched::{setns, CloneFlags};

/// The namespace threads live in outside [`NetNs::run`], opened once: `run` is on the per-connection path.
fn home() -> io::Result<&'static File> {
    static HOME: OnceLock<File> = OnceLock::new();
    if let Some(f) = HOME.get() {
        return Ok(f);
    }
    let f = File::open("/proc/thread-self/ns/net")?;
    Ok(HOME.get_or_init(|| f))
}

/// An open handle on a network namespace (holding it keeps the namespace alive).
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path)?;
        Ok(Self { file, path })
    }

    /// A namespace handed over as a descriptor (ZDS); named as `ls -l /proc/PID/ns/net` shows it.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let file = File::from(fd);
        let inode = file.metadata()?.ino();
        Ok(Self {
            file,
            path: PathBuf::from(format!("net:[{inode}]")),
        })
    }

    /// The namespace's identity: two handles on one namespace share it.
    pub fn inode(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.ino())
    }

    /// The addresses of the namespace's interfaces, without loopback and IPv6 link-local ones: a pod's IPs.
    pub fn addresses(&self) -> io::Result<Vec<IpAddr>> {
        self.run(|| -> io::Result<Vec<IpAddr>> {
            let mut out: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
                .map_err(io::Error::from)?
                .filter_map(|a| {
                    let addr = a.address?;
                    if let Some(v4) = addr.as_sockaddr_in() {
                        return Some(IpAddr::V4(v4.ip()));
                    }
                    addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                })
                .filter(|ip| match ip {
                    IpAddr::V4(v4) => !v4.is_loopback(),
                    IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local(),
                })
                .collect();
            out.sort();
            out.dedup();
            Ok(out)
        })?
    }

    /// The namespace of `ip netns add NAME`.
    pub fn named(name: &str) -> io::Result<Self> {
        Self::open(Path::new("/run/netns").join(name))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on this thread inside the namespace, then switches back to the process's own namespace.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        let back = home()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let out = f();
        // Failing to return would leave this worker thread in the pod's namespace: nothing safe remains to do.
        setns(back.as_fd(), CloneFlags::CLONE_NEWNET)
            .expect("returning a thread to its own network namespace cannot fail");
        Ok(out)
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}
