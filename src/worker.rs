//! The background worker: process finished runs, dispatch alerts, send the weekly digest.
//!
//! Woken through its latch right after a transaction that finished a run commits (see
//! `wake.rs`), otherwise every `dunetrace.worker_naptime` seconds or when the next retry is
//! due. Each step runs in its own transaction; HTTP happens between transactions. An error in
//! a step is logged and the step's transaction rolled back; the loop goes on. SIGTERM stops it;
//! SIGHUP reloads settings; the postmaster restarts it after a crash.

use crate::{digest, dispatch, process, settings, wake};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use std::panic::{RefUnwindSafe, UnwindSafe};
use std::time::Duration;

/// Most deliveries claimed (and sent concurrently) per round trip.
const DISPATCH_CHUNK: i32 = 16;

pub fn register() {
    BackgroundWorkerBuilder::new("dunetrace worker")
        .set_type("dunetrace")
        .set_library("dunetrace")
        .set_function("dunetrace_worker_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Runs `f` in its own transaction; on error logs it, rolls back and returns `None`.
fn in_txn<R, F>(what: &str, f: F) -> Option<R>
where
    F: FnOnce() -> R + UnwindSafe + RefUnwindSafe,
{
    // SAFETY: the worker is connected and outside any transaction here.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = PgTryBuilder::new(|| Some(f()))
        .catch_others(|e| {
            let msg = match &e {
                pg_sys::panic::CaughtError::PostgresError(r)
                | pg_sys::panic::CaughtError::ErrorReport(r)
                | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => {
                    r.message().to_string()
                }
            };
            pgrx::warning!("dunetrace worker: {what} failed: {msg}");
            None
        })
        .execute();
    // SAFETY: ends the transaction started above, one way or the other.
    unsafe {
        if result.is_some() {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        } else {
            pg_sys::AbortCurrentTransaction();
        }
    }
    result
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn dunetrace_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = settings::DATABASE
        .get()
        .and_then(|c| c.into_string().ok())
        .unwrap_or_else(|| "postgres".into());
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    // SAFETY: sets this backend's application_name shown in pg_stat_activity.
    unsafe { pg_sys::pgstat_report_appname(c"dunetrace worker".as_ptr()) };
    // The worker's statements are short and many: compiling one with LLVM (JIT, on by default
    // and chosen by estimated cost once tables grow) costs more than it saves, and loading
    // LLVM would keep ~50 MiB mapped in the worker for good.
    // SAFETY: sets a setting of this process, outside any transaction.
    unsafe {
        pg_sys::SetConfigOption(
            c"jit".as_ptr(),
            c"off".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        )
    };
    wake::publish_worker_latch();
    pgrx::log!("dunetrace worker started in database \"{db}\"");
    let mut wait = Duration::ZERO;
    while BackgroundWorker::wait_latch(Some(wait)) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: reloading the configuration file between transactions.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        wait = round();
        release_free_memory();
    }
    wake::withdraw_worker_latch();
    pgrx::log!("dunetrace worker stopping");
    // Exit code 1 asks the postmaster to start the worker again after the restart interval
    // (unless the server is shutting down), so a worker terminated by pg_terminate_backend()
    // or DROP DATABASE ... WITH (FORCE) comes back.
    // SAFETY: ends this background worker process.
    unsafe { pg_sys::proc_exit(1) };
}

/// Hands memory freed by the round back to the operating system before the worker sleeps.
/// A batch of 1000 runs briefly needs tens of MiB (its events, the statement results, the
/// sender threads' buffers); glibc keeps freed memory in its arenas, so without this the
/// worker would hold its largest batch's working set while idle.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's malloc_trim only releases free memory; no allocation is touched.
        unsafe { malloc_trim(0) };
    }
}

/// One round of work; returns how long to sleep unless woken.
fn round() -> Duration {
    let naptime = Duration::from_secs(settings::WORKER_NAPTIME.get().max(1) as u64);
    let installed = in_txn("checking for the extension", || {
        Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'dunetrace')",
        )
        .ok()
        .flatten()
        .unwrap_or(false)
    })
    .unwrap_or(false);
    if !installed {
        return naptime;
    }
    loop {
        let batch = settings::BATCH_SIZE.get();
        let stall = settings::STALL_TIMEOUT.get();
        let done = in_txn("processing runs", || {
            process::process_batch(batch, stall).unwrap_or_else(|e| {
                pgrx::warning!("dunetrace worker: processing runs failed: {e}");
                0
            })
        })
        .unwrap_or(0);
        dispatch_due();
        if done < batch || BackgroundWorker::sigterm_received() {
            break;
        }
    }
    if settings::DIGEST_ENABLED.get() {
        in_txn("sending the weekly digest", || digest::send(false));
        dispatch_due();
    }
    let next_retry = in_txn("scheduling retries", || {
        Spi::get_one::<f64>(
            "SELECT extract(epoch FROM min(next_attempt_at) - clock_timestamp())::float8 \
             FROM dunetrace.deliveries WHERE status IN ('pending', 'sending')",
        )
        .ok()
        .flatten()
    })
    .flatten();
    match next_retry {
        Some(s) if s <= 0.0 => Duration::from_millis(10),
        Some(s) => naptime.min(Duration::from_secs_f64(s)),
        None => naptime,
    }
}

/// Claims, sends (concurrently, outside any transaction) and records due deliveries until
/// none are due.
fn dispatch_due() {
    loop {
        let Some(claimed) = in_txn("claiming deliveries", || {
            dispatch::claim(DISPATCH_CHUNK).unwrap_or_default()
        }) else {
            return;
        };
        if claimed.is_empty() {
            return;
        }
        let timeout = settings::http_timeout();
        let outcomes: Vec<dispatch::Outcome> = std::thread::scope(|s| {
            let handles: Vec<_> = claimed
                .iter()
                .map(|c| s.spawn(move || dispatch::send(c, timeout)))
                .collect();
            handles
                .into_iter()
                .zip(&claimed)
                .map(|(h, c)| {
                    h.join()
                        .unwrap_or_else(|_| dispatch::Outcome::failed(c, "sender panicked"))
                })
                .collect()
        });
        if let Some(Err(e)) = in_txn("recording deliveries", || dispatch::record(&outcomes)) {
            pgrx::warning!("dunetrace worker: recording deliveries failed: {e}");
        }
        if (claimed.len() as i32) < DISPATCH_CHUNK || BackgroundWorker::sigterm_received() {
            return;
        }
    }
}
