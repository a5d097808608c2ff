//! A scripted HTTP/1.1 receiver on `std::net::TcpListener`: one thread per connection, every
//! request recorded (method, path, lower-cased headers, body), answered as a policy decides.
//!
//! The policy sees each request (with its sequence number at this receiver) and returns a
//! [`Reply`]: a status with an optional JSON body, after an optional delay, or no answer at all
//! for a while (the connection is held open, then dropped). Tests wait for what they expect with
//! [`Receiver::wait_for`], which blocks on a condition variable until a deadline.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest request body the receiver accepts.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// 0 for the first request this receiver got, then 1, 2, …
    pub seq: usize,
    pub method: String,
    /// The request target as sent (path and query, still percent-encoded).
    pub path: String,
    /// Header names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the whole request had been read.
    pub at: Instant,
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as UTF-8 (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "request {} {} has no JSON body ({e}): {}",
                self.method,
                self.path,
                self.text()
            )
        })
    }

    /// Whether the body contains `needle`.
    pub fn body_contains(&self, needle: &str) -> bool {
        self.text().contains(needle)
    }
}

/// How to answer one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A status with a small plain-text body.
    Status(u16),
    /// A status with a JSON body.
    Json(u16, Value),
    /// `reply` after waiting `delay` (the wait ends early when the receiver is dropped).
    Delayed(Duration, Box<Reply>),
    /// No answer: hold the connection open for this long (or until the receiver is dropped),
    /// then close it.
    Hang(Duration),
    /// A redirect (`status`, e.g. 302 or 307) to `location`.
    Redirect(u16, String),
    /// A status with extra headers (e.g. 429 with `Retry-After`).
    WithHeaders(u16, Vec<(String, String)>),
}

impl Reply {
    /// 200 with a plain body.
    pub fn ok() -> Reply {
        Reply::Status(200)
    }

    /// `self` after `delay`.
    pub fn after(self, delay: Duration) -> Reply {
        Reply::Delayed(delay, Box::new(self))
    }
}

type Policy = dyn Fn(&Request) -> Reply + Send + Sync;

struct Shared {
    requests: Mutex<Vec<Request>>,
    changed: Condvar,
    shutdown: AtomicBool,
    /// Signalled on shutdown so held connections and delays end early.
    stop_lock: Mutex<()>,
    stop: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<Request>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits `d` or until shutdown, whichever comes first.
    fn pause(&self, d: Duration) {
        let deadline = Instant::now() + d;
        let mut g = self.stop_lock.lock().unwrap_or_else(|e| e.into_inner());
        while !self.shutdown.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            g = self
                .stop
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A running receiver; stops accepting (and releases held connections) when dropped.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1 (a free port) answering with `policy`.
    pub fn start(policy: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            shutdown: AtomicBool::new(false),
            stop_lock: Mutex::new(()),
            stop: Condvar::new(),
        });
        let policy: Arc<Policy> = Arc::new(policy);
        let sh = Arc::clone(&shared);
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sh.shutdown.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let sh = Arc::clone(&sh);
                let policy = Arc::clone(&policy);
                std::thread::spawn(move || serve(stream, &sh, &*policy));
            }
        });
        Receiver {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// Answers every request with 200.
    pub fn ok() -> Receiver {
        Receiver::start(|_| Reply::ok())
    }

    /// Answers the n-th request with `statuses[n]`, and every later one with the last status.
    pub fn statuses(statuses: &[u16]) -> Receiver {
        assert!(!statuses.is_empty(), "at least one status");
        let list = statuses.to_vec();
        Receiver::start(move |r| Reply::Status(list[r.seq.min(list.len() - 1)]))
    }

    /// `http://127.0.0.1:<port><path>`; `path` should start with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The base URL without a path.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().clone()
    }

    /// Requests whose body contains `needle`.
    pub fn requests_containing(&self, needle: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.body_contains(needle))
            .collect()
    }

    /// Blocks until `done(requests)` holds, and returns the requests at that moment; panics
    /// naming `what` (and listing what did arrive) when `timeout` passes first.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Request]) -> bool,
    ) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        let mut g = self.shared.lock();
        loop {
            if done(&g) {
                return g.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                let got: Vec<String> = g
                    .iter()
                    .map(|r| {
                        let t = r.text();
                        let cut: String = t.chars().take(160).collect();
                        format!("#{} {} {} {cut}", r.seq, r.method, r.path)
                    })
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; {} request(s) arrived:\n{}",
                    g.len(),
                    got.join("\n")
                );
            }
            g = self
                .shared
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until at least `n` requests whose body contains `needle` arrived; returns them.
    pub fn wait_for_containing(&self, needle: &str, n: usize, timeout: Duration) -> Vec<Request> {
        let what = format!("{n} request(s) containing {needle:?}");
        self.wait_for(timeout, &what, |rs| {
            rs.iter().filter(|r| r.body_contains(needle)).count() >= n
        })
        .into_iter()
        .filter(|r| r.body_contains(needle))
        .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = self
                .shared
                .stop_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.stop.notify_all();
        }
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// A request as read off the wire.
struct Raw {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Reads one request: request line, headers, then a `Content-Length` or chunked body. `None` at
/// end of stream or on malformed input.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Raw> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                // Trailers until the empty line.
                loop {
                    let mut t = String::new();
                    if reader.read_line(&mut t).ok()? == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            if body.len() + size > MAX_BODY {
                return None;
            }
            let mut chunk = vec![0u8; size];
            reader.read_exact(&mut chunk).ok()?;
            body.extend_from_slice(&chunk);
            let mut crlf = String::new();
            reader.read_line(&mut crlf).ok()?;
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len.trim().parse().ok()?;
        if len > MAX_BODY {
            return None;
        }
        body = vec![0u8; len];
        reader.read_exact(&mut body).ok()?;
    }
    Some(Raw {
        method,
        path,
        headers,
        body,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn respond(stream: &mut TcpStream, shared: &Shared, reply: &Reply) {
    match reply {
        Reply::Delayed(d, inner) => {
            shared.pause(*d);
            respond(stream, shared, inner);
        }
        Reply::Hang(d) => shared.pause(*d),
        Reply::Status(s) | Reply::Json(s, _) | Reply::Redirect(s, _) | Reply::WithHeaders(s, _) => {
            let (ctype, body) = match reply {
                Reply::Json(_, v) => ("application/json", v.to_string()),
                _ => ("text/plain", reason(*s).to_string()),
            };
            let location = match reply {
                Reply::Redirect(_, to) => format!("Location: {to}\r\n"),
                Reply::WithHeaders(_, hs) => {
                    hs.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect()
                }
                _ => String::new(),
            };
            let head = format!(
                "HTTP/1.1 {s} {}\r\nContent-Type: {ctype}\r\n{location}Content-Length: {}\r\nConnection: close\r\n\r\n",
                reason(*s),
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
            let _ = stream.flush();
        }
    }
}

/// Serves one connection: one request, one answer (`Connection: close`).
fn serve(stream: TcpStream, shared: &Shared, policy: &Policy) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let Some(Raw {
        method,
        path,
        headers,
        body,
    }) = read_request(&mut reader)
    else {
        return;
    };
    let request = {
        let mut g = shared.lock();
        let r = Request {
            seq: g.len(),
            method,
            path,
            headers,
            body,
            at: Instant::now(),
        };
        g.push(r.clone());
        shared.changed.notify_all();
        r
    };
    let reply = policy(&request);
    let mut stream = stream;
    respond(&mut stream, shared, &reply);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}
