//! I/O buffers lent per read, not owned per connection.
//!
//! A proxy holds many connections, most of them idle at any moment. A buffer owned by each connection costs
//! memory for every idle one; here a buffer is borrowed from a per-thread free list when a read has data, and
//! handed back as soon as that data has been passed on. [`Batched`] uses them to read a TLS connection in large
//! batches (one `recvfrom` for many TLS records, where rustls alone reads at most a record or so per call).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of free buffers kept per thread for reuse; more are freed when returned.
const KEEP_PER_THREAD: usize = 4 * 1024 * 1024;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `size` bytes: a free one of that size if the thread has one, else a new one.
pub(crate) fn take(size: usize) -> Box<[u8]> {
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        match f.iter().rposition(|b| b.len() == size) {
            Some(i) => f.swap_remove(i),
            None => vec![0u8; size].into_boxed_slice(),
        }
    })
}

/// Hands a buffer back for reuse (or frees it when the thread keeps enough).
pub(crate) fn give(buf: Box<[u8]>) {
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        let kept: usize = f.iter().map(|b| b.len()).sum();
        if kept + buf.len() <= KEEP_PER_THREAD {
            f.push(buf);
        }
    });
}

#[cfg(test)]
pub(crate) fn clear() {
    FREE.with(|f| f.borrow_mut().clear());
}

#[cfg(test)]
pub(crate) fn free() -> usize {
    FREE.with(|f| f.borrow().len())
}

/// Reads its inner stream `batch` bytes at a time into a borrowed buffer and serves smaller reads from it;
/// writes pass straight through. An idle connection holds no buffer.
pub struct Batched<T> {
    inner: T,
    batch: usize,
    buf: Option<Box<[u8]>>,
    pos: usize,
    end: usize,
}

impl<T> Batched<T> {
    pub fn new(inner: T, batch: usize) -> Self {
        Self {
            inner,
            batch,
            buf: None,
            pos: 0,
            end: 0,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Copies what is buffered into `out`; hands the buffer back once it is drained.
    fn serve(&mut self, out: &mut ReadBuf<'_>) {
        if let Some(buf) = &self.buf {
            let n = (self.end - self.pos).min(out.remaining());
            out.put_slice(&buf[self.pos..self.pos + n]);
            self.pos += n;
        }
        if self.pos == self.end {
            if let Some(buf) = self.buf.take() {
                give(buf);
            }
        }
    }
}

impl<T> Drop for Batched<T> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            give(buf);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Batched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.buf.is_some() {
            this.serve(out);
            return Poll::Ready(Ok(()));
        }
        if out.remaining() >= this.batch {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        let mut buf = take(this.batch);
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                this.pos = 0;
                this.end = n;
                this.buf = Some(buf);
                this.serve(out);
                Poll::Ready(Ok(()))
            }
            other => {
                give(buf);
                other
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Batched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_read_and_the_buffer_goes_back() {
        clear();
        let (mut far, near) = tokio::io::duplex(1 << 16);
        let mut b = Batched::new(near, 4096);
        far.write_all(&[7u8; 1000]).await.expect("write");
        let mut small = [0u8; 100];
        b.read_exact(&mut small).await.expect("first read");
        assert_eq!(small, [7u8; 100]);
        assert!(b.buf.is_some(), "the rest of the batch is held");
        let mut rest = [0u8; 900];
        b.read_exact(&mut rest).await.expect("rest");
        assert!(b.buf.is_none(), "drained: the buffer went back");
        assert_eq!(free(), 1);
        b.write_all(b"out").await.expect("writes pass through");
        let mut got = [0u8; 3];
        far.read_exact(&mut got).await.expect("far side reads");
        assert_eq!(&got, b"out");
        drop(far);
        assert_eq!(b.read(&mut small).await.expect("eof"), 0);
    }
}
