//! The HTTP listener of `ims serve`, one for the API and the built-in S3 endpoint alike: HTTP/1.1
//! (keep-alive) and HTTP/2 without TLS (prior knowledge) over hyper, with the rules that keep a
//! server's connections bounded:
//!
//! * **Connection limit** ([`Limits::max_connections`], per listener): at the limit the listener
//!   stops accepting. New connections wait in the kernel's listen backlog ([`bind`]: their TCP
//!   handshake is done, they cost the server no file descriptor) and are accepted, oldest first,
//!   as others close; beyond the backlog the kernel drops their SYNs and clients retry. Nothing is
//!   refused by the server itself.
//! * **Header-read timeout** ([`Limits::header_timeout`]): a new connection must send a complete
//!   request head within this time of being accepted, and a request that starts on a kept-alive
//!   connection must complete its head within this time of its first byte (slowloris).
//! * **Idle timeout** ([`Limits::idle_timeout`]): a connection with no request in flight for this
//!   long is closed (HTTP/1.1 keep-alive, or HTTP/2 with no open stream).
//!
//! A request is in flight from the moment its head is parsed until its response body has been
//! sent or dropped, and the last bytes hyper writes after that count as activity too: an upload or
//! download that takes hours, or a client that polls, is never cut by these rules, however slowly
//! it moves. There is no stall timeout inside a request (a server-side step such as assembling a
//! multipart upload may rightly send nothing for minutes).
//!
//! On shutdown the listener stops accepting, connections without a request in flight are
//! closed, and the others finish their request (HTTP/1.1: then close; HTTP/2: GOAWAY) for up to
//! [`SHUTDOWN_GRACE`].

#![forbid(unsafe_code)]

pub use hyper_util::service::TowerToHyperService;

use bytes::Buf;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

/// Default [`Limits::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`Limits::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default connection limit never exceeds this, whatever the open-file limit allows.
pub const MAX_DEFAULT_CONNECTIONS: usize = 10_000;
/// File descriptors kept for everything but connections (database, artifact files, logs, agents).
pub const RESERVED_FDS: u64 = 256;
/// How long requests in flight may run on after the shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// After the shutdown signal, a connection with no request in flight is closed once it has
/// written nothing for this long (hyper may still be flushing the end of a response).
const SHUTDOWN_LINGER: Duration = Duration::from_secs(1);

/// The listen backlog [`bind`] asks for (the kernel caps it at `net.core.somaxconn`): how many
/// connections can wait, handshake done, while the listener is at its connection limit.
pub const LISTEN_BACKLOG: u32 = 1024;

/// A listener on `addr` (address reuse, as the standard library's) with a backlog of
/// [`LISTEN_BACKLOG`] instead of the standard 128.
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(LISTEN_BACKLOG)
}

/// The connection rules of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the kernel's listen backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    /// The default timeouts and a connection limit derived from the process's current
    /// open-file limit ([`default_max_connections`]).
    fn default() -> Self {
        Limits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: default_max_connections(nofile_limit().unwrap_or(1024)),
        }
    }
}

/// The default connection limit of each listener for a process allowed `nofile` open files:
/// after [`RESERVED_FDS`], a quarter of the rest (two listeners, and each connection of the S3
/// endpoint may hold an open file as well as its socket), at least 16 and at most
/// [`MAX_DEFAULT_CONNECTIONS`].
pub fn default_max_connections(nofile: u64) -> usize {
    let n = nofile.saturating_sub(RESERVED_FDS) / 4;
    (n.min(MAX_DEFAULT_CONNECTIONS as u64) as usize).max(16)
}

/// A limit as a number (unlimited: `u64::MAX`, as `RLIM_INFINITY`).
fn limit(l: Option<u64>) -> u64 {
    l.unwrap_or(u64::MAX)
}

/// The soft open-file limit (RLIMIT_NOFILE) in force.
pub fn nofile_limit() -> io::Result<u64> {
    Ok(limit(getrlimit(Resource::Nofile).current))
}

/// Raises the soft open-file limit to the hard limit (as far as the kernel allows) and returns
/// the soft limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let r = getrlimit(Resource::Nofile);
    if limit(r.current) < limit(r.maximum) {
        let wanted = Rlimit {
            current: r.maximum,
            maximum: r.maximum,
        };
        // An unlimited hard limit is refused above the kernel's nr_open: keep the old one.
        if setrlimit(Resource::Nofile, wanted).is_ok() {
            return Ok(limit(r.maximum));
        }
    }
    Ok(limit(r.current))
}

/// Serves `service` on `listener` under `limits` until `shutdown` resolves, then stops accepting,
/// lets requests in flight finish for up to [`SHUTDOWN_GRACE`] and returns. `name` names the
/// listener in log lines.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    name: &'static str,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http = Builder::new(TokioExecutor::new());
    // The timeouts are ours (below): hyper's own header timeout would also count the time a
    // kept-alive connection waits for its next request.
    http.http1().header_read_timeout(None);
    let max = limits.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut warned: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    warned = Some(Instant::now());
                    tracing::warn!(
                        "{name}: {max} connections open (the limit); new connections wait in the \
                         listen backlog until some close"
                    );
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let sock = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((sock, _peer)) => sock,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "{name}: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = sock.set_nodelay(true);
        let act = Arc::new(Activity::new());
        let svc = Counted {
            inner: service.clone(),
            act: act.clone(),
        };
        let io = TokioIo::new(Tracked {
            sock,
            act: act.clone(),
        });
        let conn = http.serve_connection(io, svc).into_owned();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::pin!(conn);
            let mut stopping = false;
            loop {
                let deadline = act.deadline(&limits, stopping);
                let expired = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "{name}: connection ended with an error");
                        }
                        return;
                    }
                    () = expired => {
                        if act.deadline(&limits, stopping).is_some_and(|d| d <= Instant::now()) {
                            tracing::debug!("{name}: closing a connection idle for its timeout (no request, or a response its client does not read)");
                            return;
                        }
                    }
                    () = act.wake.notified() => {}
                    _ = stop.changed(), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a slot until it ends.
    if tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(max as u32))
        .await
        .is_err()
    {
        tracing::warn!(
            "{name}: requests still in flight after {} s; stopping anyway",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    Ok(())
}

/// What one connection is doing, for its timeouts.
struct Activity {
    state: Mutex<State>,
    /// Told when the deadline may have moved earlier or appeared (no request in flight any
    /// more, the first byte of a request head).
    wake: Notify,
    accepted: Instant,
    /// The connection speaks HTTP/2: its idle reads (pings, window updates) start no request.
    h2: AtomicBool,
}

struct State {
    in_flight: usize,
    /// Whether any request head was complete yet.
    served: bool,
    /// Since when no request is in flight and nothing was written.
    idle_since: Instant,
    /// The first byte read since then (a request head coming in).
    first_byte: Option<Instant>,
    /// Since when a write has been waiting for the client to read (its receive window is shut):
    /// a response nobody reads for the idle timeout is cut, so slow readers cannot hold slots.
    write_blocked: Option<Instant>,
}

impl Activity {
    fn new() -> Activity {
        let now = Instant::now();
        Activity {
            state: Mutex::new(State {
                in_flight: 0,
                served: false,
                idle_since: now,
                first_byte: None,
                write_blocked: None,
            }),
            wake: Notify::new(),
            accepted: now,
            h2: AtomicBool::new(false),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is plain data, consistent after any panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the connection is to be closed if nothing changes. While a request is in flight:
    /// only when the client has not read any of the response for the idle timeout.
    fn deadline(&self, l: &Limits, stopping: bool) -> Option<Instant> {
        let s = self.state();
        if s.in_flight > 0 {
            return s.write_blocked.map(|t| t + l.idle_timeout);
        }
        if stopping {
            return Some(s.idle_since + SHUTDOWN_LINGER);
        }
        if !s.served {
            return Some(self.accepted + l.header_timeout);
        }
        match s.first_byte {
            Some(t) if !self.h2.load(Ordering::Relaxed) => Some(t + l.header_timeout),
            _ => Some(s.idle_since + l.idle_timeout),
        }
    }

    fn request_started(&self, version: http::Version) {
        if version >= http::Version::HTTP_2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        let mut s = self.state();
        s.in_flight += 1;
        s.served = true;
        s.first_byte = None;
    }

    fn request_ended(&self) {
        let mut s = self.state();
        s.in_flight -= 1;
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
            s.first_byte = None;
            drop(s);
            self.wake.notify_one();
        }
    }

    fn read(&self) {
        let mut s = self.state();
        if s.in_flight == 0 && s.served && s.first_byte.is_none() {
            s.first_byte = Some(Instant::now());
            drop(s);
            self.wake.notify_one();
        }
    }

    fn wrote(&self) {
        let mut s = self.state();
        s.write_blocked = None;
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
        }
    }

    /// A write could not go on: the client's receive window is full.
    fn write_waits(&self) {
        let mut s = self.state();
        if s.write_blocked.is_none() {
            s.write_blocked = Some(Instant::now());
            drop(s);
            self.wake.notify_one();
        }
    }

    fn after_write(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) if *n > 0 => self.wrote(),
            Poll::Pending => self.write_waits(),
            _ => {}
        }
    }
}

/// The socket, telling the connection's [`Activity`] about reads and writes.
struct Tracked {
    sock: TcpStream,
    act: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.sock).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.act.read();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.sock).poll_write(cx, buf);
        self.act.after_write(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.sock).poll_write_vectored(cx, bufs);
        self.act.after_write(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.sock.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sock).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sock).poll_shutdown(cx)
    }
}

/// The service, counting the requests in flight on its connection.
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    act: Arc<Activity>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Counted<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body + Unpin,
{
    type Response = Response<CountedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.act.request_started(req.version());
        let guard = InFlight(self.act.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|body| CountedBody {
                body,
                _guard: guard,
            }))
        })
    }
}

/// One request in flight, until dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A response body that keeps its request in flight until it is sent or dropped.
struct CountedBody<B> {
    body: B,
    _guard: InFlight,
}

impl<B: Body + Unpin> Body for CountedBody<B>
where
    B::Data: Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limit_follows_the_open_file_limit() {
        assert_eq!(default_max_connections(1024), 192);
        assert_eq!(default_max_connections(20_000), 4936);
        assert_eq!(default_max_connections(1 << 20), MAX_DEFAULT_CONNECTIONS);
        assert_eq!(default_max_connections(100), 16);
    }
}
