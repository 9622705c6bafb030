//! A TCP stream whose reads and writes answer to deadlines, not to a timeout per call.
//!
//! glommio's `TcpStream` has one timer per direction, armed only when an operation has to
//! wait on the socket (a read whose bytes are already there costs no timer), and then with
//! the whole timeout set on the stream. Wrapping every read and write in `timeout()`
//! instead cost a timer allocated, registered and removed per call, most of them for reads
//! that never waited. `Deadlined` sets the stream's timeout to what is left of its deadline
//! before every call it passes on, so however a peer trickles its bytes (one a wait, one a
//! TLS record read, a little of a large write at a time), the whole reply or the whole
//! write ends by the deadline. Once it has passed, a call fails with `TimedOut` at once.

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub struct Deadlined {
    tcp: TcpStream,
    read_by: Option<Instant>,
    write_by: Option<Instant>,
}

impl Deadlined {
    /// No deadline yet: calls wait as long as the peer makes them.
    pub fn new(tcp: TcpStream) -> Deadlined {
        Deadlined {
            tcp,
            read_by: None,
            write_by: None,
        }
    }

    /// Reads from now on must complete by `by` (`None`: no bound).
    pub fn read_by(&mut self, by: Option<Instant>) {
        self.read_by = by;
    }

    /// Writes from now on must complete by `by` (`None`: no bound).
    pub fn write_by(&mut self, by: Option<Instant>) {
        self.write_by = by;
    }
}

/// What is left until `by`, for the stream's timeout; an error once nothing is.
fn left(by: Option<Instant>) -> io::Result<Option<Duration>> {
    let Some(by) = by else {
        return Ok(None);
    };
    let left = by.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
    }
    Ok(Some(left))
}

impl AsyncRead for Deadlined {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match left(this.read_by) {
            // Only a Cell set: glommio reads it when it arms the timer.
            Ok(t) => {
                let _ = this.tcp.set_read_timeout(t);
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Deadlined {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match left(this.write_by) {
            Ok(t) => {
                let _ = this.tcp.set_write_timeout(t);
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_close(cx)
    }
}
