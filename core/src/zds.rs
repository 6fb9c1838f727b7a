//! The transport of Istio's ZDS protocol (node agent ⇄ ztunnel): a unix SEQPACKET socket carrying one protobuf
//! message per packet, with a pod's network namespace passed beside a message as an SCM_RIGHTS descriptor.
//!
//! Blocking on purpose: a node sees a few messages a second at most, and each side handles them on a thread of
//! its own, so neither the agent's nor ztunnel's runtime ever waits on the other process.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use prost::Message;
use rustix::net::{
    self, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

/// Largest message either side sends (a pod's name, namespace and account: well under 1 KiB).
const MAX_MESSAGE: usize = 64 * 1024;

/// One end of a ZDS connection.
#[derive(Debug)]
pub struct ZdsSocket(OwnedFd);

impl ZdsSocket {
    /// Connects to the agent's socket.
    pub fn connect(path: &Path) -> io::Result<Self> {
        let fd = seqpacket()?;
        net::connect(&fd, &SocketAddrUnix::new(path)?)?;
        Ok(Self(fd))
    }

    /// A bound-together pair, for tests.
    pub fn pair() -> io::Result<(Self, Self)> {
        let (a, b) = net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        Ok((Self(a), Self(b)))
    }

    /// Bounds every later receive (`None`: wait forever); a receive that times out fails with `WouldBlock`.
    pub fn set_recv_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        net::sockopt::set_socket_timeout(&self.0, net::sockopt::Timeout::Recv, timeout)?;
        Ok(())
    }

    /// Sends `msg` as one packet, with `fd` beside it.
    pub fn send(&self, msg: &impl Message, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        self.send_bytes(&msg.encode_to_vec(), fd)
    }

    /// Sends an already encoded message (or, in tests, bytes that are not one).
    pub fn send_bytes(&self, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("no room for the descriptor"));
        }
        let sent = net::sendmsg(
            &self.0,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        )?;
        if sent != bytes.len() {
            return Err(io::Error::other("message sent in part"));
        }
        Ok(())
    }

    /// Receives one message and the descriptor that came with it; `None` when the peer closed.
    pub fn recv<M: Message + Default>(&self) -> io::Result<Option<(M, Option<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = net::recvmsg(
            &self.0,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        // Every descriptor that arrived is owned (and closed when dropped) before anything can fail.
        let mut fds: Vec<OwnedFd> = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(iter) = m {
                fds.extend(iter);
            }
        }
        if got.bytes == 0 {
            return Ok(None);
        }
        if got.flags.contains(ReturnFlags::TRUNC) || got.flags.contains(ReturnFlags::CTRUNC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "message or descriptors truncated",
            ));
        }
        if fds.len() > 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} descriptors with one message; expected at most one",
                    fds.len()
                ),
            ));
        }
        let msg = M::decode(&buf[..got.bytes])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Some((msg, fds.pop())))
    }
}

impl AsFd for ZdsSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// The agent's listening socket.
#[derive(Debug)]
pub struct ZdsListener(OwnedFd);

impl ZdsListener {
    /// Binds `path`, replacing a socket file left by an earlier run.
    pub fn bind(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(path);
        let fd = seqpacket()?;
        net::bind(&fd, &SocketAddrUnix::new(path)?)?;
        net::listen(&fd, 16)?;
        Ok(Self(fd))
    }

    pub fn accept(&self) -> io::Result<ZdsSocket> {
        Ok(ZdsSocket(net::accept_with(&self.0, SocketFlags::CLOEXEC)?))
    }
}

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::istio::workload::zds::{self, workload_request::Payload};
    use std::io::{Read, Seek, Write};

    #[test]
    fn message_and_descriptor_cross_together() {
        let (a, b) = ZdsSocket::pair().unwrap();
        let mut file = tempfile();
        file.write_all(b"netns").unwrap();
        let req = zds::WorkloadRequest {
            payload: Some(Payload::Add(zds::AddWorkload {
                uid: "u1".into(),
                workload_info: None,
            })),
        };
        a.send(&req, Some(file.as_fd())).unwrap();
        let (got, fd) = b.recv::<zds::WorkloadRequest>().unwrap().unwrap();
        assert_eq!(got, req);
        // The descriptor is the same open file: its offset is shared.
        let mut same = std::fs::File::from(fd.expect("descriptor passed"));
        same.rewind().unwrap();
        let mut s = String::new();
        same.read_to_string(&mut s).unwrap();
        assert_eq!(s, "netns");
        drop(a);
        assert!(b.recv::<zds::WorkloadRequest>().unwrap().is_none(), "EOF");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let (a, b) = ZdsSocket::pair().unwrap();
        let raw = rustix::net::send(&a.0, &[0xff, 0xff, 0xff], SendFlags::empty()).unwrap();
        assert_eq!(raw, 3);
        let err = b.recv::<zds::WorkloadRequest>().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    fn tempfile() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("zds-test-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }
}
