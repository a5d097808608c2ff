//! The worker's delivery lanes: one per destination, each with its own sender threads and
//! kept connections, so HTTP never holds up detection and one slow, failing or rate-limited
//! destination never holds up another.
//!
//! The worker's main thread (the only one that touches the database) calls [`Lanes::pump`]
//! between processing batches and while it waits: it records the outcomes the senders
//! finished (one transaction), then claims due deliveries for each lane that has room and
//! tokens left in its rate limit (another), and hands them to the lane's threads. Nothing
//! waits for a request to finish.

use crate::alerts::{self, Destination};
use crate::dispatch::{self, Claimed, Outcome};
use crate::worker::in_txn;
use crate::{http, settings};
use dunetrace_core::delivery::{Bucket, Policy};
use pgrx::prelude::*;
use pgrx::spi::SpiError;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Deliveries a lane holds (claimed, queued or in flight) per unit of its concurrency: enough
/// to keep its threads busy between two pumps.
const QUEUE_PER_THREAD: usize = 32;

struct Lane {
    policy: Policy,
    bucket: Bucket,
    jobs: Sender<Claimed>,
    /// Claimed and not yet finished.
    held: usize,
    /// How the lane was built (a changed destination gets a new lane).
    signature: String,
}

pub struct Lanes {
    lanes: HashMap<i32, Lane>,
    done_tx: Sender<Outcome>,
    done_rx: Receiver<Outcome>,
    started: Instant,
}

impl Lanes {
    pub fn new() -> Lanes {
        let (done_tx, done_rx) = channel();
        Lanes {
            lanes: HashMap::new(),
            done_tx,
            done_rx,
            started: Instant::now(),
        }
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Deliveries claimed and not yet recorded.
    pub fn in_flight(&self) -> usize {
        self.lanes.values().map(|l| l.held).sum()
    }

    /// How long the worker may sleep before the lanes need it again: soon while deliveries
    /// are in flight, at the next rate-limit token otherwise (the caller also knows when the
    /// next retry is due).
    pub fn next_wake(&self) -> Option<Duration> {
        if self.in_flight() > 0 {
            return Some(Duration::from_millis(5));
        }
        let now = self.now();
        self.lanes
            .values()
            .map(|l| l.bucket.wait(now))
            .filter(|w| *w > 0.0)
            .min_by(|a, b| a.total_cmp(b))
            .map(Duration::from_secs_f64)
    }

    /// Records what finished, then claims and hands out what is due, each in its own
    /// transaction; a step that fails is rolled back and tried again at the next pump.
    pub fn pump(&mut self) {
        let finished: Vec<Outcome> = self.done_rx.try_iter().collect();
        if !finished.is_empty() {
            for o in &finished {
                if let Some(l) = self.lanes.get_mut(&o.destination_id) {
                    l.held = l.held.saturating_sub(1);
                }
            }
            // Unrecorded outcomes leave their rows claimed: they are sent again once the
            // claims' visibility deadlines pass (at least once, same webhook-id).
            in_txn(
                "recording deliveries",
                AssertUnwindSafe(|| dispatch::record(&finished)),
            );
        }
        let claimed = in_txn("claiming deliveries", AssertUnwindSafe(|| self.claim_due()))
            .unwrap_or_default();
        for c in claimed {
            if let Some(lane) = self.lanes.get_mut(&c.destination_id) {
                lane.held += 1;
                let id = c.id;
                if lane.jobs.send(c).is_err() {
                    pgrx::warning!("dunetrace worker: the sender of delivery {id} is gone");
                }
            }
        }
    }

    /// Claims, per destination, what its lane has room and rate-limit tokens for.
    fn claim_due(&mut self) -> Result<Vec<Claimed>, SpiError> {
        let dests = Spi::connect(alerts::destinations)?;
        self.refresh(&dests);
        let now = self.now();
        let mut claimed = Vec::new();
        for d in dests.iter().filter(|d| !d.held_back) {
            let Some(lane) = self.lanes.get_mut(&d.id) else {
                continue;
            };
            let concurrency = lane.policy.concurrency as usize;
            let room = (concurrency * QUEUE_PER_THREAD).saturating_sub(lane.held);
            let want = lane.bucket.take(room, now);
            if want == 0 {
                continue;
            }
            let got = dispatch::claim_for(Some(d.id), want as i32, lane.held, concurrency)?;
            // Tokens the claim did not use stay for the next pump.
            lane.bucket.give_back(want - got.len());
            claimed.extend(got);
        }
        Ok(claimed)
    }

    /// Builds lanes for new or changed destinations and drops those of removed ones (their
    /// threads end when their queue closes).
    fn refresh(&mut self, dests: &[Destination]) {
        let timeout = settings::http_timeout();
        self.lanes.retain(|id, _| dests.iter().any(|d| d.id == *id));
        for d in dests {
            let policy = d.policy.clone();
            let signature = format!("{policy:?}/{timeout:?}");
            if self
                .lanes
                .get(&d.id)
                .is_some_and(|l| l.signature == signature)
            {
                continue;
            }
            let held = self.lanes.get(&d.id).map_or(0, |l| l.held);
            let (jobs, queue) = channel::<Claimed>();
            let queue = Arc::new(Mutex::new(queue));
            let agent = Arc::new(http::Agent::new(timeout, policy.concurrency as usize));
            for _ in 0..policy.concurrency {
                let queue = Arc::clone(&queue);
                let agent = Arc::clone(&agent);
                let done = self.done_tx.clone();
                std::thread::spawn(move || loop {
                    let job = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    if done.send(dispatch::send_with(&job, &agent)).is_err() {
                        return;
                    }
                });
            }
            let bucket = Bucket::new(policy.rate_per_sec, self.now());
            self.lanes.insert(
                d.id,
                Lane {
                    policy,
                    bucket,
                    jobs,
                    held,
                    signature,
                },
            );
        }
    }
}
