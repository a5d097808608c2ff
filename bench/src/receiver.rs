//! A minimal webhook receiver on `std::net::TcpListener`: one thread per connection (kept
//! alive while the client wants), answers 200 at once — or, in the storm's second mode, 503 to
//! each delivery's first attempt — and records when each alert (keyed by the body's `run_id`)
//! arrived.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Shared {
    /// First arrival per run_id.
    first: Mutex<HashMap<String, Instant>>,
    changed: Condvar,
    requests: AtomicU64,
    /// Answered 2xx.
    accepted: AtomicU64,
    stop: AtomicBool,
    /// Refuse the first attempt of every delivery (by `webhook-id`).
    refuse_first: bool,
    seen: Mutex<std::collections::HashSet<String>>,
}

pub struct Receiver {
    pub url: String,
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
}

impl Receiver {
    pub fn start() -> Receiver {
        Receiver::start_with(false)
    }

    /// `refuse_first`: answer 503 to each delivery's first attempt.
    pub fn start_with(refuse_first: bool) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            refuse_first,
            ..Shared::default()
        });
        let sh = Arc::clone(&shared);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let sh = Arc::clone(&sh);
                std::thread::spawn(move || serve(stream, &sh));
            }
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            addr,
            shared,
        }
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests answered 2xx so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Arrival times of the first request of each run_id seen so far.
    pub fn arrivals(&self) -> HashMap<String, Instant> {
        self.shared
            .first
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until an alert for `run_id` arrived; returns its arrival time.
    pub fn wait_for(&self, run_id: &str, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        let mut g = self.shared.first.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(t) = g.get(run_id) {
                return Some(*t);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = self
                .shared
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(&stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
        let mut close = false;
        let mut webhook_id = String::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim(), v.trim());
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("connection") {
                    close = v.eq_ignore_ascii_case("close");
                } else if k.eq_ignore_ascii_case("webhook-id") {
                    webhook_id = v.to_string();
                }
            }
        }
        let mut body = vec![0u8; len.min(16 << 20)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let at = Instant::now();
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let refuse = shared.refuse_first
            && shared
                .seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(webhook_id);
        if !refuse {
            shared.accepted.fetch_add(1, Ordering::SeqCst);
            if let Some(run_id) = run_id_of(&body) {
                let mut g = shared.first.lock().unwrap_or_else(|e| e.into_inner());
                g.entry(run_id).or_insert(at);
                shared.changed.notify_all();
            }
        }
        let status = if refuse {
            "503 Service Unavailable"
        } else {
            "200 OK"
        };
        let conn = if close { "close" } else { "keep-alive" };
        let mut w = &stream;
        let _ = write!(
            w,
            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: {conn}\r\n\r\n"
        );
        let _ = w.flush();
        if close {
            return;
        }
    }
}

fn run_id_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("run_id")?.as_str().map(str::to_string)
}

/// POSTs `{"run_id": ...}` to `url` (`http://host:port/path`) over a fresh connection and
/// reads the answer: the floor the latency baseline pays for HTTP.
pub fn post_run_id(url: &str, run_id: &str) -> std::io::Result<()> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let body = serde_json::json!({ "run_id": run_id }).to_string();
    let mut s = TcpStream::connect(host)?;
    s.set_nodelay(true)?;
    write!(
        s,
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    Ok(())
}
