//! An established HBONE stream as an ordinary byte stream (`AsyncRead + AsyncWrite`).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Runs when the stream is dropped (the client pool uses it to count streams per connection).
pub(crate) type DropGuard = Box<dyn Send + Sync + Unpin>;

pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    pending: Bytes,
    /// An error that came after data the last read returned.
    deferred: Option<io::Error>,
    shut: bool,
    _guard: Option<DropGuard>,
}

impl H2Stream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream, guard: Option<DropGuard>) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            deferred: None,
            shut: false,
            _guard: guard,
        }
    }
}

fn to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 io error"));
    }
    if e.reason() == Some(h2::Reason::NO_ERROR) {
        return io::Error::new(io::ErrorKind::UnexpectedEof, "stream closed");
    }
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Fill `buf` with as many frames as are already here, so the writer on the other side gets one large
        // write rather than one per frame; return as soon as nothing more is ready.
        if let Some(e) = self.deferred.take() {
            return Poll::Ready(Err(e));
        }
        let start = buf.filled().len();
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
            }
            let polled = self.recv.poll_data(cx);
            if buf.filled().len() > start && polled.is_pending() {
                return Poll::Ready(Ok(()));
            }
            match ready!(polled) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    // Window is returned at once; what we buffer is bounded by this one frame.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
                Some(Err(e)) => {
                    if e.reason() == Some(h2::Reason::NO_ERROR) {
                        return Poll::Ready(Ok(()));
                    }
                    if buf.filled().len() > start {
                        // What was read is delivered first; the error comes with the next read.
                        self.deferred = Some(to_io(e));
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Ready(Err(to_io(e)));
                }
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        loop {
            let cap = self.send.capacity();
            if cap > 0 {
                let n = cap.min(buf.len());
                self.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(to_io)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "stream closed",
                    )))
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Half-close: END_STREAM on our side, the peer may keep sending.
    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.shut {
            self.shut = true;
            self.send.send_data(Bytes::new(), true).map_err(to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}
