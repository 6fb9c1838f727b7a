//! Linux network namespaces: run a closure with the current thread inside another namespace.
//!
//! A socket belongs to the namespace it was created in, so ztunnel creates a pod's listeners and its outgoing
//! sockets while briefly inside the pod's namespace, then returns; everything else runs in the node's namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
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
