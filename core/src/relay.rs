//! Bidirectional copy whose idle connections hold no buffer.
//!
//! `tokio::io::copy_bidirectional` gives each direction of each connection its own buffer for the connection's
//! whole life. A proxy with thousands of mostly idle connections then pays for thousands of buffers (tens of KiB
//! each once touched). Here a direction borrows a buffer from a per-thread free list only for the time a read
//! has data in flight: a read that would block hands the buffer back, so an idle connection holds none and
//! the buffers in use are bounded by the connections actually moving bytes.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::buffers::{give, take};

/// The first read of a direction uses this much; each read that fills its buffer doubles the next one, up to the
/// relay's maximum, so a bulk transfer soon moves large chunks and an interactive one never borrows more.
const FIRST_READ: usize = 16 * 1024;

/// One direction: read into a borrowed buffer, write it all, repeat; at EOF shut the writer down.
struct Half {
    size: usize,
    max: usize,
    buf: Option<Box<[u8]>>,
    pos: usize,
    end: usize,
    eof: bool,
    done: bool,
    flush: bool,
    total: u64,
}

impl Half {
    fn new(max: usize) -> Self {
        Self {
            size: FIRST_READ.min(max),
            max,
            buf: None,
            pos: 0,
            end: 0,
            eof: false,
            done: false,
            flush: false,
            total: 0,
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(self.total));
            }
            if self.pos == self.end && !self.eof {
                let mut buf = self.buf.take().unwrap_or_else(|| take(self.size));
                let mut rb = ReadBuf::new(&mut buf);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Pending => {
                        give(buf);
                        // Nothing more to read for now: push out what the writer may still hold.
                        if self.flush {
                            ready!(w.as_mut().poll_flush(cx))?;
                            self.flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => {
                        give(buf);
                        return Poll::Ready(Err(e));
                    }
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.eof = true;
                            give(buf);
                        } else {
                            self.pos = 0;
                            self.end = n;
                            self.total += n as u64;
                            if n == buf.len() && self.size < self.max {
                                self.size = (self.size * 2).min(self.max);
                            }
                            self.buf = Some(buf);
                        }
                    }
                }
            }
            if let Some(buf) = &self.buf {
                while self.pos < self.end {
                    let n = ready!(w.as_mut().poll_write(cx, &buf[self.pos..self.end]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    self.pos += n;
                    self.flush = true;
                }
                // Written out: a buffer of the wrong size (the read size grew) goes back now.
                if buf.len() != self.size {
                    if let Some(buf) = self.buf.take() {
                        give(buf);
                    }
                }
            }
            if self.eof {
                if let Some(buf) = self.buf.take() {
                    give(buf);
                }
                ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
            }
        }
    }
}

impl Drop for Half {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            give(buf);
        }
    }
}

/// Copies `a` → `b` and `b` → `a` until both reach EOF, propagating half-closes; returns the bytes copied
/// (a→b, b→a). `buffer` is the most one read moves at once (reads start smaller and grow while they fill up).
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B, buffer: usize) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut ab, mut ba) = (Half::new(buffer), Half::new(buffer));
    let (mut ab_n, mut ba_n) = (None, None);
    poll_fn(|cx| {
        if ab_n.is_none() {
            if let Poll::Ready(r) = ab.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b)) {
                ab_n = Some(r?);
            }
        }
        if ba_n.is_none() {
            if let Poll::Ready(r) = ba.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a)) {
                ba_n = Some(r?);
            }
        }
        match (ab_n, ba_n) {
            (Some(x), Some(y)) => Poll::Ready(Ok((x, y))),
            _ => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_with_half_close() {
        let (mut client, mut a) = tokio::io::duplex(1024);
        let (mut b, mut server) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move { copy_bidirectional(&mut a, &mut b, 4096).await });
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let p = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&p).await.expect("write");
            client.shutdown().await.expect("half-close");
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.expect("read back");
            back
        });
        let mut got = Vec::new();
        server
            .read_to_end(&mut got)
            .await
            .expect("server reads to EOF");
        assert_eq!(got, payload);
        server.write_all(b"reply").await.expect("reply");
        server.shutdown().await.expect("server half-close");
        assert_eq!(writer.await.expect("join"), b"reply");
        let (ab, ba) = relay.await.expect("join").expect("relay");
        assert_eq!((ab, ba), (100_000, 5));
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer() {
        let (_client, mut a) = tokio::io::duplex(64);
        let (mut b, _server) = tokio::io::duplex(64);
        crate::buffers::clear();
        let mut relay = Box::pin(copy_bidirectional(&mut a, &mut b, 8192));
        // One poll: both directions find nothing to read and give their buffers back.
        let polled = poll_fn(|cx| Poll::Ready(relay.as_mut().poll(cx))).await;
        assert!(polled.is_pending());
        let free = crate::buffers::free();
        assert_eq!(free, 1, "the borrowed buffer is back on the free list");
    }
}
