//! A test workload: TCP echo (8080), whoami (8081: writes the peer address it saw, then closes) and a sink
//! (8082: reads to EOF, answers "<bytes> <sha256>").

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mesh_core::socket::raise_fd_limit();
    let echo = TcpListener::bind("0.0.0.0:8080").await?;
    let whoami = TcpListener::bind("0.0.0.0:8081").await?;
    let sink = TcpListener::bind("0.0.0.0:8082").await?;
    tokio::spawn(serve(echo, |mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    }));
    tokio::spawn(serve(whoami, |mut s| async move {
        let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let _ = s.write_all(format!("{peer}\n").as_bytes()).await;
        let _ = s.shutdown().await;
    }));
    serve(sink, |mut s| async move {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    hash.update(&buf[..n]);
                    total += n as u64;
                }
                Err(_) => return,
            }
        }
        let line = format!("{total} {}\n", hex::encode(hash.finalize()));
        let _ = s.write_all(line.as_bytes()).await;
        let _ = s.shutdown().await;
    })
    .await;
    Ok(())
}

async fn serve<F, Fut>(l: TcpListener, f: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        if let Ok((s, _)) = l.accept().await {
            tokio::spawn(f(s));
        }
    }
}
