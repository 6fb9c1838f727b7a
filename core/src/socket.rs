//! Socket helpers for transparent capture: original destination and the mesh's socket mark.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;

use mesh_primitives::backoff::Backoff;
use socket2::{Domain, Protocol, Socket, Type};

/// The destination a redirected (iptables `REDIRECT`) connection was originally sent to.
pub fn original_dst<S: AsFd>(sock: &S) -> io::Result<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    if let Ok(v4) = getsockopt(sock, sockopt::OriginalDst) {
        let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
        return Ok(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(v4.sin_port),
        )));
    }
    let v6 = getsockopt(sock, sockopt::Ip6tOriginalDst).map_err(io::Error::from)?;
    let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
    Ok(SocketAddr::V6(SocketAddrV6::new(
        ip,
        u16::from_be(v6.sin6_port),
        0,
        0,
    )))
}

/// A TCP socket for `addr`'s family with Nagle off, ready to connect: for sockets no redirection can capture.
pub fn tcp_socket(addr: &SocketAddr) -> io::Result<tokio::net::TcpSocket> {
    let s = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    s.set_nodelay(true)?;
    Ok(s)
}

/// A non-blocking TCP socket for `addr`'s family carrying the mesh mark, ready to connect.
pub fn marked_tcp_socket(addr: &SocketAddr) -> io::Result<tokio::net::TcpSocket> {
    let sock = Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    sock.set_mark(crate::MESH_SOCKET_MARK)?;
    sock.set_nonblocking(true)?;
    sock.set_tcp_nodelay(true)?;
    Ok(tokio::net::TcpSocket::from_std_stream(sock.into()))
}

/// A listening socket with `SO_REUSEADDR` (a restarted proxy rebinds at once) and the mesh mark.
pub fn marked_listener(
    addr: SocketAddr,
    transparent_ok: bool,
) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_mark(crate::MESH_SOCKET_MARK)?;
    if transparent_ok {
        // Lets a listener on a wildcard address accept redirected connections for any destination.
        let _ = sock.set_ip_transparent_v4(true);
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

/// Raises the open-file soft limit to the hard limit: a proxy holds two sockets per connection.
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Accepts the next connection from `accept` (a listener's `accept`). A failed accept (EMFILE, ENFILE, ENOBUFS,
/// ...) is logged and retried after a jittered, growing delay instead of at once, so a process out of file
/// descriptors waits for some to close rather than spinning; a success resets the delay.
pub async fn accept_retrying<T, F, Fut>(what: &str, backoff: &mut Backoff, mut accept: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = io::Result<T>>,
{
    loop {
        match accept().await {
            Ok(v) => {
                backoff.reset();
                return v;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(listener = what, error = %e, retry_in = ?delay, "accept failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The backoff every accept loop uses: 5 ms doubling to 1 s.
pub fn accept_backoff() -> Backoff {
    Backoff::new(
        std::time::Duration::from_millis(5),
        std::time::Duration::from_secs(1),
    )
}
