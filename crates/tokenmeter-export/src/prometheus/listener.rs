//! The scrape listener: hyper's HTTP/1 server on a one-thread tokio runtime that the exporter
//! owns, so a server without tokio needs none and a server with tokio never lends its runtime
//! to scrapes.
//!
//! Every connection is a task of its own, so a slow or silent peer delays no other. At most
//! `max_connections` are served at once; more wait in the kernel's accept queue until one ends
//! (none is refused while it waits). The request head must arrive within [`HEADER_TIMEOUT`]
//! and fit in [`MAX_HEADER_BYTES`]; the whole connection, from accept to the response's last
//! byte, must end within the request timeout. One request per connection
//! (`Connection: close`), so no idle keep-alive connection holds a slot between scrapes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};

use super::PrometheusRender;
use crate::Error;

/// Connections served at once by default.
pub(super) const DEFAULT_MAX_CONNECTIONS: usize = 128;
/// The default deadline of a whole connection: Prometheus's default `scrape_timeout`, past
/// which it has given up on the scrape anyway.
pub(super) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The deadline for the request head (or the request timeout, when that is shorter).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head (request line and headers) read; a larger one gets a 431.
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// The pause after an accept error that is not the peer's (e.g. out of file descriptors),
/// so the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The listener's limits (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub(super) max_connections: usize,
    pub(super) request_timeout: Duration,
}

impl Limits {
    /// # Errors
    ///
    /// [`Error::Config`] for zero connections, more than tokio's semaphore holds
    /// (`usize::MAX >> 3`), or a zero timeout.
    pub(super) fn check(&self) -> Result<(), Error> {
        if !(1..=Semaphore::MAX_PERMITS).contains(&self.max_connections) {
            return Err(Error::Config(format!(
                "Prometheus max_connections must be from 1 to {}, got {}",
                Semaphore::MAX_PERMITS,
                self.max_connections
            )));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::Config(
                "Prometheus request_timeout must be non-zero".into(),
            ));
        }
        Ok(())
    }
}

/// The running listener: its thread, stopped and joined on drop.
#[derive(Debug)]
pub(super) struct Listener {
    /// Dropping it stops the accept loop; the runtime then drops every connection task.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Serves `listener` on a thread of its own until dropped. Returns once the runtime is up.
    /// `limits` must have passed [`Limits::check`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the thread or its runtime cannot be started.
    pub(super) fn spawn(
        listener: std::net::TcpListener,
        render: PrometheusRender,
        limits: Limits,
    ) -> Result<Listener, Error> {
        listener.set_nonblocking(true).map_err(Error::Io)?;
        let (stop, stopped) = oneshot::channel();
        // The runtime is built on its own thread, so that it is also dropped there, never in
        // the caller's (possibly async) context.
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("tokenmeter-prometheus".into())
            .spawn(move || {
                let started = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                    .and_then(|rt| {
                        let l = rt.block_on(async { TcpListener::from_std(listener) })?;
                        Ok((rt, l))
                    });
                let (rt, listener) = match started {
                    Ok(ok) => {
                        let _ = ready_tx.send(Ok(()));
                        ok
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async {
                    tokio::select! {
                        _ = stopped => {}
                        () = accept_loop(listener, render, limits) => {}
                    }
                });
                // Dropping `rt` here drops every connection task, closing its socket.
            })
            .map_err(Error::Io)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Listener {
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(Error::Io(e)),
            Err(_) => Err(Error::Io(std::io::Error::other(
                "the Prometheus listener thread exited while starting",
            ))),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // The accept loop sees the channel close at once; the runtime's drop then cancels the
        // connection tasks, none of which blocks, so the join is prompt.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, render: PrometheusRender, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT.min(limits.request_timeout))
        .max_header_size(MAX_HEADER_BYTES)
        .keep_alive(false);
    loop {
        // Waiting for a slot before accepting leaves further peers in the kernel's queue.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return; // never closed
        };
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) if is_peer_error(&e) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "Prometheus listener: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let (http, render) = (http.clone(), render.clone());
        tokio::spawn(async move {
            serve(stream, peer, &http, render, limits.request_timeout).await;
            drop(slot);
        });
    }
}

/// Errors of one incoming connection, not of the listener.
fn is_peer_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    http: &http1::Builder,
    render: PrometheusRender,
    deadline: Duration,
) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let response = respond(&req, &render);
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = http.serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(deadline, conn).await {
        Ok(Ok(())) => {}
        // A malformed or oversized head has had its 400/431 by now; a silent one timed out.
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "Prometheus listener: connection error"),
        Err(_) => tracing::debug!(
            %peer,
            ?deadline,
            "Prometheus listener: request deadline passed, connection closed"
        ),
    }
}

fn respond(req: &Request<Incoming>, render: &PrometheusRender) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            // A header that is not visible ASCII counts as absent: the default format.
            let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            let exposition = render.negotiate(accept);
            (StatusCode::OK, exposition.content_type(), exposition.body)
        }
        (&Method::GET | &Method::HEAD, "/") => {
            (StatusCode::OK, TEXT, b"tokenmeter: see /metrics\n".to_vec())
        }
        (&Method::GET | &Method::HEAD, _) => (StatusCode::NOT_FOUND, TEXT, b"not found\n".to_vec()),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            b"method not allowed\n".to_vec(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::Prometheus;
    use metrics::{Key, Recorder};
    use std::io::{ErrorKind, Read, Write};
    use std::sync::mpsc;

    /// Bounds every client read and write, so a listener that hangs fails a test rather
    /// than hanging it. Far above every deadline the tests configure.
    const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
    /// A deadline short enough to keep the tests quick, long enough for a loaded machine to
    /// serve a one-counter scrape within it.
    const SHORT_DEADLINE: Duration = Duration::from_secs(1);
    const GET_METRICS: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    fn connect(addr: SocketAddr) -> std::net::TcpStream {
        let s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(CLIENT_TIMEOUT)).expect("timeout");
        s.set_write_timeout(Some(CLIENT_TIMEOUT)).expect("timeout");
        s
    }

    /// Reads until the server closes the connection; a reset (the server closed with our
    /// input unread) counts as a close. Panics if the server neither answers nor closes.
    fn read_to_close(s: &mut std::net::TcpStream) -> String {
        let mut out = Vec::new();
        match s.read_to_end(&mut out) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the listener neither answered nor closed: {e}"),
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Sends `raw` on a fresh connection and returns everything the server sent back.
    fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = connect(addr);
        // The server may answer and close before an oversized request is all written.
        let _ = s.write_all(raw);
        read_to_close(&mut s)
    }

    /// `GET path` on a fresh connection: the raw response.
    pub(in crate::prometheus) fn get(addr: SocketAddr, path: &str) -> String {
        exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
    }

    /// An exporter listening on a free loopback port, with one counter at 3.
    fn exporter(p: Prometheus) -> (crate::PrometheusExporter, SocketAddr) {
        let mut prom = p.listen(loopback()).build().expect("build");
        let meta = metrics::Metadata::new("t", metrics::Level::INFO, None);
        prom.take_recorder()
            .expect("recorder")
            .register_counter(&Key::from_name("seen_total"), &meta)
            .increment(3);
        let addr = prom.local_addr().expect("addr");
        (prom, addr)
    }

    fn assert_scrape(resp: &str) {
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(
            resp.contains(&format!("content-type: {}\r\n", super::super::CONTENT_TYPE)),
            "{resp}"
        );
        assert!(
            resp.ends_with("\r\n\r\n# TYPE seen_total counter\nseen_total 3\n"),
            "{resp}"
        );
    }

    #[test]
    fn idle_and_slow_clients_do_not_delay_a_scrape() {
        let (_prom, addr) = exporter(Prometheus::new());
        let idle: Vec<_> = (0..64).map(|_| connect(addr)).collect();
        // A slowloris: one byte of a request head a second, never finishing it.
        let (stop, stopped) = mpsc::channel::<()>();
        let (sent_first, first_sent) = mpsc::channel();
        let slow = std::thread::spawn(move || {
            let mut s = connect(addr);
            for b in b"GET /metrics HTTP/1.1\r\nHost: x\r\n".iter().cycle() {
                if s.write_all(&[*b]).is_err() {
                    return;
                }
                let _ = sent_first.send(());
                if stopped.recv_timeout(Duration::from_secs(1))
                    != Err(mpsc::RecvTimeoutError::Timeout)
                {
                    return;
                }
            }
        });
        first_sent.recv().expect("slow client started");
        // The old loop served one connection at a time, 5 s each: this read timed out.
        assert_scrape(&exchange(addr, GET_METRICS));
        drop(stop);
        slow.join().expect("slow client");
        drop(idle);
    }

    #[test]
    fn at_capacity_a_scrape_waits_for_a_slot_instead_of_being_refused() {
        let (_prom, addr) = exporter(
            Prometheus::new()
                .max_connections(2)
                .request_timeout(SHORT_DEADLINE),
        );
        // Both slots go to silent peers; their head deadline frees them for the scrape.
        let idle = [connect(addr), connect(addr)];
        assert_scrape(&exchange(addr, GET_METRICS));
        drop(idle);
    }

    #[test]
    fn garbage_and_oversized_requests_get_an_error_or_a_close_and_serving_goes_on() {
        let (_prom, addr) = exporter(Prometheus::new());
        for garbage in [
            &b"\x00\x01\x02\xff garbage\r\n\r\n"[..],
            b"NOT HTTP AT ALL\r\n\r\n",
        ] {
            let resp = exchange(addr, garbage);
            assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{resp}");
        }
        let mut long_line = b"GET /".to_vec();
        long_line.resize(1 << 20, b'a');
        long_line.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut many_headers = b"GET /metrics HTTP/1.1\r\n".to_vec();
        for i in 0..1000 {
            many_headers.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
        }
        many_headers.extend_from_slice(b"\r\n");
        for oversized in [long_line, many_headers] {
            let resp = exchange(addr, &oversized);
            assert!(
                resp.is_empty() || resp.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
                "{resp}"
            );
        }
        // A head cut off by the client's close is dropped without an answer.
        let mut cut = connect(addr);
        cut.write_all(b"GET /metr").expect("write");
        cut.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let resp = read_to_close(&mut cut);
        assert!(
            resp.is_empty() || resp.starts_with("HTTP/1.1 400"),
            "{resp}"
        );
        assert_scrape(&exchange(addr, GET_METRICS));
    }

    #[test]
    fn a_silent_connection_is_closed_at_the_deadline() {
        let (_prom, addr) = exporter(Prometheus::new().request_timeout(SHORT_DEADLINE));
        let mut silent = connect(addr);
        let resp = read_to_close(&mut silent);
        assert!(
            resp.is_empty() || resp.starts_with("HTTP/1.1 408"),
            "{resp}"
        );
        let mut partial = connect(addr);
        partial
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .expect("write");
        let resp = read_to_close(&mut partial);
        assert!(
            resp.is_empty() || resp.starts_with("HTTP/1.1 408"),
            "{resp}"
        );
        assert_scrape(&exchange(addr, GET_METRICS));
    }

    #[test]
    fn methods_paths_and_head() {
        let (_prom, addr) = exporter(Prometheus::new());
        let resp = get(addr, "/metrics?x=1");
        assert_scrape(&resp);
        assert!(resp.contains("connection: close\r\n"), "{resp}");
        let body_len = resp.len() - resp.find("\r\n\r\n").expect("head end") - 4;
        let head = exchange(addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains(&format!("content-length: {body_len}\r\n")),
            "{head}"
        );
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
        let post = exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{post}"
        );
        assert!(post.contains("allow: GET, HEAD\r\n"), "{post}");
        let root = get(addr, "/");
        assert!(root.starts_with("HTTP/1.1 200 OK\r\n"), "{root}");
        assert!(root.ends_with("tokenmeter: see /metrics\n"), "{root}");
        let nope = get(addr, "/nope");
        assert!(nope.starts_with("HTTP/1.1 404 Not Found\r\n"), "{nope}");
        // HTTP/1.0 clients are served too.
        let old = exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(old.starts_with("HTTP/1.0 200 OK\r\n"), "{old}");
        assert!(old.ends_with("\nseen_total 3\n"), "{old}");
    }

    #[test]
    fn drop_with_connections_open_returns_and_closes_them() {
        let (prom, addr) = exporter(Prometheus::new());
        let mut open: Vec<_> = (0..8).map(|_| connect(addr)).collect();
        open[0]
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .expect("write");
        // Served once, so every connection above has been accepted and is being served.
        assert_scrape(&exchange(addr, GET_METRICS));
        let (dropped, done) = mpsc::channel();
        std::thread::spawn(move || {
            drop(prom);
            let _ = dropped.send(());
        });
        done.recv_timeout(CLIENT_TIMEOUT)
            .expect("dropping the exporter returns");
        for s in &mut open {
            assert_eq!(read_to_close(s), "", "closed without an answer");
        }
        let refused = std::net::TcpStream::connect(addr).expect_err("the listener is closed");
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    }

    #[test]
    fn zero_limits_are_a_config_error() {
        for p in [
            Prometheus::new().max_connections(0),
            Prometheus::new().max_connections(usize::MAX),
            Prometheus::new().request_timeout(Duration::ZERO),
        ] {
            let err = p.listen(loopback()).build().expect_err("must fail");
            assert!(matches!(err, Error::Config(_)), "{err}");
        }
    }
}
