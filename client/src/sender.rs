//! The bounded buffer and the background thread that drains it into `dunetrace.ingest()`.
//!
//! The agent's threads only ever take the buffer's lock for a push. The sender thread takes
//! batches off the front, calls the database without holding the lock, and on a transient
//! failure puts the batch back at the front, so the oldest events stay the oldest. When the
//! buffer is full, the oldest event is dropped and counted.
//!
//! What an error means is decided by the table shared with the gateway,
//! [`dunetrace_core::sqlstate`]: a [transient](ErrorClass::Transient) failure keeps the batch
//! for another attempt on a fresh connection; any other refusal drops it (retrying could never
//! succeed, and would block the events behind it), after narrowing it down so that as few
//! events as possible go with it:
//!
//! | class | what the sender does |
//! |---|---|
//! | `Transient`, and any failure before the batch is sent (connecting, preparing the statement) | keeps the batch in front of the buffer, reconnects, retries with backoff |
//! | `Invalid` | splits the batch in halves until the invalid events are alone; drops those |
//! | `Forbidden`, `TooLarge` | sends each run of the batch on its own; drops the runs refused (a run of another agent, a run past `dunetrace.max_events_per_run`) |
//! | `Auth`, `External`, `Internal` | drops the batch |

use dunetrace_core::sqlstate::{self, ErrorClass};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Opens a connection for the sender thread.
pub type Connector = Box<dyn FnMut() -> Result<postgres::Client, postgres::Error> + Send>;

/// The statement every batch goes through.
const INGEST_SQL: &str = "SELECT dunetrace.ingest($1::text, $2::text::jsonb)::text";

/// First pause after a failed attempt; doubles up to `max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Tunables, fixed at build time.
#[derive(Clone)]
pub(crate) struct Settings {
    pub api_key: String,
    pub capacity: usize,
    pub batch_size: usize,
    pub linger: Duration,
    pub max_backoff: Duration,
    pub flush_timeout: Duration,
}

/// One serialized, already validated event.
pub(crate) struct Queued {
    pub agent_id: String,
    pub run_id: String,
    pub json: String,
}

#[derive(Default)]
pub(crate) struct State {
    pub queue: VecDeque<Queued>,
    /// Events taken by the sender and not yet settled.
    pub inflight: usize,
    /// Every event handed to the client, including the ones refused on the spot.
    pub emitted: u64,
    pub sent: u64,
    pub dropped_overflow: u64,
    pub dropped_rejected: u64,
    pub dropped_shutdown: u64,
    pub batches: u64,
    /// Threads waiting in `flush()`: the sender skips its linger for them.
    pub flush_waiters: usize,
    /// Set by `shutdown()`: the sender gives up on undelivered events after this instant.
    pub shutdown: Option<Instant>,
    pub sender_done: bool,
    pub connected: bool,
    pub last_error: Option<String>,
    pub last_error_class: Option<ErrorClass>,
}

impl State {
    pub fn settled(&self) -> u64 {
        self.sent + self.dropped_overflow + self.dropped_rejected + self.dropped_shutdown
    }

    pub fn pending(&self) -> usize {
        self.queue.len() + self.inflight
    }

    /// Drops the oldest queued events until the queue fits `capacity`.
    fn trim(&mut self, capacity: usize) {
        while self.queue.len() > capacity {
            self.queue.pop_front();
            self.dropped_overflow += 1;
        }
    }
}

pub(crate) struct Shared {
    pub settings: Settings,
    pub state: Mutex<State>,
    /// Wakes the sender: new events, a flush, shutdown.
    pub wake: Condvar,
    /// Wakes `flush()`/`shutdown()` callers: events settled, sender finished.
    pub settled: Condvar,
}

impl Shared {
    pub fn new(settings: Settings) -> Shared {
        Shared {
            settings,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            settled: Condvar::new(),
        }
    }

    /// The state, even if a thread panicked while holding it (every update leaves it valid).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one event; never blocks beyond the lock.
    pub fn push(&self, agent_id: &str, run_id: &str, json: String) {
        let mut st = self.lock();
        st.emitted += 1;
        if st.shutdown.is_some() {
            st.dropped_shutdown += 1;
            drop(st);
            self.settled.notify_all();
            return;
        }
        st.queue.push_back(Queued {
            agent_id: agent_id.to_string(),
            run_id: run_id.to_string(),
            json,
        });
        let before = st.dropped_overflow;
        st.trim(self.settings.capacity);
        let overflowed = st.dropped_overflow != before;
        drop(st);
        self.wake.notify_one();
        if overflowed {
            self.settled.notify_all();
        }
    }

    /// Counts an event the client refused to send (it would fail server validation).
    pub fn refuse(&self, why: String) {
        let mut st = self.lock();
        st.emitted += 1;
        st.dropped_rejected += 1;
        st.last_error = Some(why);
        st.last_error_class = Some(ErrorClass::Invalid);
        drop(st);
        self.settled.notify_all();
    }

    fn wait_timeout<'a>(&self, st: MutexGuard<'a, State>, d: Duration) -> MutexGuard<'a, State> {
        self.wake
            .wait_timeout(st, d)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    /// Waits until everything emitted before the call is settled, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        let target = st.emitted;
        st.flush_waiters += 1;
        self.wake.notify_one();
        while st.settled() < target && !st.sender_done {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .settled
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.flush_waiters -= 1;
        st.settled() >= target
    }

    /// Asks the sender to stop once the buffer is empty or `timeout` has passed, and waits
    /// for it (a little longer than `timeout`, since a connection attempt may be under way).
    /// Returns whether the sender has finished.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        if st.shutdown.is_none() {
            st.shutdown = Some(deadline);
        }
        self.wake.notify_all();
        let wait_until = deadline + Duration::from_secs(1);
        while !st.sender_done {
            let now = Instant::now();
            if now >= wait_until {
                break;
            }
            st = self
                .settled
                .wait_timeout(st, wait_until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.sender_done
    }
}

/// What one `ingest()` call came to.
enum Outcome {
    Sent,
    /// Refused or failed; `why` is for [`Stats::last_error`](crate::Stats::last_error).
    Failed {
        class: ErrorClass,
        why: String,
    },
}

struct Conn {
    connector: Connector,
    live: Option<(postgres::Client, postgres::Statement)>,
}

impl Conn {
    fn ingest(&mut self, api_key: &str, batch: &[Queued]) -> Outcome {
        if self.live.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.live = None;
        }
        if self.live.is_none() {
            let mut client = match (self.connector)() {
                Ok(c) => c,
                Err(e) => {
                    // Whatever the reason (the database is down, the DSN's role, password or
                    // certificate is wrong), the batch is not at fault: the events wait.
                    return Outcome::Failed {
                        class: ErrorClass::Transient,
                        why: format!(
                            "could not connect (will retry): {}",
                            crate::tls::describe_error(&e)
                        ),
                    };
                }
            };
            match client.prepare(INGEST_SQL) {
                Ok(stmt) => self.live = Some((client, stmt)),
                // E.g. the extension is not installed (yet), or the role may not use it. The
                // batch has not been looked at, so it is not at fault either: it waits.
                Err(e) => {
                    return Outcome::Failed {
                        class: ErrorClass::Transient,
                        why: format!(
                            "preparing ingest failed (will retry): {}",
                            crate::tls::describe_error(&e)
                        ),
                    }
                }
            }
        }
        let Some((client, stmt)) = self.live.as_mut() else {
            return Outcome::Failed {
                class: ErrorClass::Transient,
                why: "not connected".into(),
            };
        };
        let mut body =
            String::with_capacity(batch.iter().map(|q| q.json.len() + 1).sum::<usize>() + 2);
        body.push('[');
        for (i, q) in batch.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&q.json);
        }
        body.push(']');
        match client.query_one(&*stmt, &[&api_key, &body]) {
            Ok(_) => Outcome::Sent,
            Err(e) => {
                if classify(&e).retryable() {
                    // Start over on a fresh connection.
                    self.live = None;
                }
                failed("ingest failed", &e)
            }
        }
    }
}

/// The outcome of a statement that failed with `e`.
fn failed(context: &str, e: &postgres::Error) -> Outcome {
    let class = classify(e);
    let what = if class.retryable() {
        "will retry"
    } else {
        "dropped"
    };
    Outcome::Failed {
        class,
        why: format!(
            "{context} ({class}, {what}): {}",
            crate::tls::describe_error(e)
        ),
    }
}

/// The shared table's class of a driver error; an error without a SQLSTATE (the connection
/// broke or timed out) is transient.
pub(crate) fn classify(e: &postgres::Error) -> ErrorClass {
    match e.as_db_error() {
        Some(db) => sqlstate::classify_error(db.code().code(), db.message()),
        None => ErrorClass::Transient,
    }
}

/// The events of `part` grouped by run, runs in order of first appearance.
fn by_run(part: Vec<Queued>) -> Vec<Vec<Queued>> {
    let mut groups: Vec<Vec<Queued>> = Vec::new();
    for q in part {
        match groups.iter_mut().find(|g| g[0].run_id == q.run_id) {
            Some(g) => g.push(q),
            None => groups.push(vec![q]),
        }
    }
    groups
}

/// The sender thread's body.
pub(crate) fn run(shared: Arc<Shared>, connector: Connector) {
    let s = &shared.settings;
    let mut conn = Conn {
        connector,
        live: None,
    };
    let mut backoff = FIRST_BACKOFF;
    let mut linger_from: Option<Instant> = None;
    loop {
        // Wait for a batch worth sending.
        let batch: Vec<Queued> = {
            let mut st = shared.lock();
            loop {
                if let Some(deadline) = st.shutdown {
                    if st.queue.is_empty() || Instant::now() >= deadline {
                        let left = st.queue.len() as u64;
                        st.queue.clear();
                        st.dropped_shutdown += left;
                        st.sender_done = true;
                        st.connected = false;
                        drop(st);
                        shared.settled.notify_all();
                        return;
                    }
                    break;
                }
                if st.queue.is_empty() {
                    linger_from = None;
                    st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                    continue;
                }
                if st.queue.len() >= s.batch_size || st.flush_waiters > 0 {
                    break;
                }
                let from = *linger_from.get_or_insert_with(Instant::now);
                let left = s.linger.saturating_sub(from.elapsed());
                if left.is_zero() {
                    break;
                }
                st = shared.wait_timeout(st, left);
            }
            linger_from = None;
            // One agent per batch, so an agent mismatch refuses only that agent's events.
            let agent = st.queue[0].agent_id.clone();
            let n = st
                .queue
                .iter()
                .take(s.batch_size)
                .take_while(|q| q.agent_id == agent)
                .count();
            st.inflight = n;
            st.queue.drain(..n).collect()
        };

        // Send it, splitting batches the server finds invalid down to the bad events.
        let mut parts: Vec<Vec<Queued>> = vec![batch];
        let mut failed: Option<(Vec<Queued>, String, ErrorClass)> = None;
        while let Some(part) = parts.pop() {
            let outcome = conn.ingest(&s.api_key, &part);
            let mut st = shared.lock();
            st.connected = conn.live.is_some();
            match outcome {
                Outcome::Sent => {
                    st.sent += part.len() as u64;
                    st.batches += 1;
                    st.inflight -= part.len();
                }
                Outcome::Failed { class, why } if class.retryable() => {
                    drop(st);
                    let mut rest = part;
                    for p in parts.drain(..).rev() {
                        rest.extend(p);
                    }
                    failed = Some((rest, why, class));
                    break;
                }
                // An invalid event: split in halves until it is alone.
                Outcome::Failed {
                    class: ErrorClass::Invalid,
                    ..
                } if part.len() > 1 => {
                    drop(st);
                    let mut first = part;
                    let second = first.split_off(first.len() / 2);
                    parts.push(second);
                    parts.push(first);
                    continue;
                }
                // A run refused as a whole: send each run on its own, so only it is dropped.
                Outcome::Failed {
                    class: ErrorClass::Forbidden | ErrorClass::TooLarge,
                    ..
                } if part.iter().any(|q| q.run_id != part[0].run_id) => {
                    drop(st);
                    parts.extend(by_run(part).into_iter().rev());
                    continue;
                }
                Outcome::Failed { class, why } => {
                    st.dropped_rejected += part.len() as u64;
                    st.inflight -= part.len();
                    st.last_error = Some(why);
                    st.last_error_class = Some(class);
                }
            }
            drop(st);
            shared.settled.notify_all();
        }

        match failed {
            None => backoff = FIRST_BACKOFF,
            Some((rest, why, class)) => {
                // Put the events back in front, in order; past the bound the oldest go.
                let mut st = shared.lock();
                st.inflight = 0;
                for q in rest.into_iter().rev() {
                    st.queue.push_front(q);
                }
                st.trim(s.capacity);
                st.last_error = Some(why);
                st.last_error_class = Some(class);
                drop(st);
                shared.settled.notify_all();
                sleep(&shared, backoff);
                backoff = (backoff * 2).min(s.max_backoff);
            }
        }
    }
}

/// Sleeps `d`, or less if shutdown asks the sender to give up sooner.
fn sleep(shared: &Shared, d: Duration) {
    let until = Instant::now() + d;
    let mut st = shared.lock();
    loop {
        let now = Instant::now();
        let end = match st.shutdown {
            Some(deadline) => until.min(deadline),
            None => until,
        };
        if now >= end {
            return;
        }
        st = shared.wait_timeout(st, end - now);
    }
}
