//! The background worker: process finished runs, dispatch alerts, send the weekly digest.
//!
//! Woken through its latch right after a transaction that finished a run commits (see
//! `wake.rs`), otherwise every `dunetrace.worker_naptime` seconds or when the next retry is
//! due. Each step runs in its own transaction; HTTP happens between transactions. An error in
//! a step is logged and the step's transaction rolled back; the loop goes on. SIGTERM stops it;
//! SIGHUP reloads settings; the postmaster restarts it after a crash.

use crate::lanes::Lanes;
use crate::{alerts, digest, dispatch, process, schema, settings, subxact, wake};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use std::panic::{RefUnwindSafe, UnwindSafe};
use std::time::Duration;

pub fn register() {
    BackgroundWorkerBuilder::new("dunetrace worker")
        .set_type("dunetrace")
        .set_library("dunetrace")
        .set_function("dunetrace_worker_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Runs `f` in its own transaction and commits it when `f` returns `Ok`. On an `Err`, a
/// Postgres error or a panic it logs the error and rolls the whole transaction back (nothing is
/// committed half-done; the step is tried again in a later round) and returns `None`.
pub(crate) fn in_txn<R, E, F>(what: &str, f: F) -> Option<R>
where
    E: std::fmt::Display,
    F: FnOnce() -> Result<R, E> + UnwindSafe + RefUnwindSafe,
{
    // SAFETY: the worker is connected and outside any transaction here.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = PgTryBuilder::new(|| f().map_err(|e| e.to_string()))
        .catch_others(|e| Err(subxact::caught_message(&e)))
        .execute();
    // SAFETY: ends the transaction started above, one way or the other.
    unsafe {
        match result {
            Ok(r) => {
                pg_sys::PopActiveSnapshot();
                pg_sys::CommitTransactionCommand();
                Some(r)
            }
            Err(msg) => {
                pgrx::warning!("dunetrace worker: {what} failed: {msg}");
                pg_sys::AbortCurrentTransaction();
                None
            }
        }
    }
}

/// Postgres' own handler, by its C symbol (pgrx's `pg_sys::die` is a Rust wrapper, which a
/// signal handler must not be).
mod postgres {
    extern "C-unwind" {
        pub fn die(postgres_signal_arg: std::ffi::c_int);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn withdraw_on_exit(_code: std::ffi::c_int, _arg: pg_sys::Datum) {
    wake::withdraw_worker_latch();
}

/// Pins this process's `search_path` to `pg_catalog, pg_temp`: the worker runs as a superuser,
/// so no statement of it may ever resolve a function, operator or table through a schema a
/// user can create objects in (a `public.unnest(text[])` would otherwise be called as
/// superuser). Set at the highest priority, after connecting and after every reload.
fn pin_search_path() {
    // SAFETY: sets a setting of this process, outside any transaction.
    unsafe {
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        )
    };
}

/// Applies a pending SIGHUP: re-reads the configuration file and pins `search_path` again.
fn reload_if_asked() {
    if BackgroundWorker::sighup_received() {
        // SAFETY: reloading the configuration file between transactions.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        pin_search_path();
    }
}

/// Stops the worker at once if SIGTERM (or a pending cancel) arrived: with Postgres' own
/// `die` handler installed, this exits the process like any backend told to terminate.
fn check_for_interrupts() {
    pg_sys::check_for_interrupts!();
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn dunetrace_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // SIGTERM (pg_ctl stop, pg_terminate_backend) is handled by Postgres' own `die`, as in a
    // regular backend: the next interrupt check ends the process, even inside a statement of
    // a long batch, so a backlog never delays a shutdown.
    // SAFETY: installs a Postgres signal handler in this process.
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres::die));
    }
    let db = settings::DATABASE
        .get()
        .and_then(|c| c.into_string().ok())
        .unwrap_or_else(|| "postgres".into());
    // As `dunetrace.worker_role` when set (a member of dunetrace_worker, which holds exactly
    // the privileges the worker's statements need), else as the bootstrap superuser.
    let role = settings::WORKER_ROLE
        .get()
        .and_then(|c| c.into_string().ok())
        .filter(|r| !r.is_empty());
    BackgroundWorker::connect_worker_to_spi(Some(&db), role.as_deref());
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
    pin_search_path();
    wake::publish_worker_latch();
    // However the process ends (SIGTERM ends it from inside `die`), the latch is withdrawn.
    // SAFETY: registers a callback Postgres runs once while this process exits.
    unsafe { pg_sys::before_shmem_exit(Some(withdraw_on_exit), pg_sys::Datum::from(0)) };
    pgrx::log!(
        "dunetrace worker started in database \"{db}\" as {}",
        role.as_deref()
            .map_or("the bootstrap superuser".to_string(), |r| format!(
                "role \"{r}\""
            ))
    );
    let mut lanes = Lanes::new();
    let mut wait = Duration::ZERO;
    while BackgroundWorker::wait_latch(Some(wait)) {
        reload_if_asked();
        wait = round(&mut lanes);
        if lanes.in_flight() == 0 {
            release_free_memory();
        }
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

thread_local! {
    /// Not ready yet (or just started): set until the first round that finds the extension at
    /// the library's version; the reason it waits is logged once.
    static WAITING: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
    static LOGGED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// One round of work; returns how long to sleep unless woken.
fn round(lanes: &mut Lanes) -> Duration {
    let naptime = Duration::from_secs(settings::WORKER_NAPTIME.get().max(1) as u64);
    // Nothing to do until the extension exists here at the library's version (after a new
    // library is installed, until ALTER EXTENSION dunetrace UPDATE): said once, then waited.
    let ready = in_txn("checking the extension", || {
        Ok::<_, std::convert::Infallible>(schema::check())
    });
    match ready {
        Some(Ok(())) => {
            // Once ready: what an earlier run of the worker had claimed and not sent goes out
            // now rather than after the claims' visibility deadlines.
            if WAITING.with(|w| w.replace(false)) {
                in_txn("releasing claims", dispatch::release_orphaned_claims);
            }
        }
        Some(Err(why)) => {
            if !LOGGED.with(|l| l.replace(true)) {
                pgrx::log!("dunetrace worker: waiting: {why}");
            }
            WAITING.with(|w| w.set(true));
            return naptime;
        }
        None => return naptime,
    }
    loop {
        check_for_interrupts();
        reload_if_asked();
        // Deliveries move on between batches, in the lanes' own threads: detection never
        // waits for HTTP.
        lanes.pump();
        let batch = settings::BATCH_SIZE.get();
        let stall = settings::STALL_TIMEOUT.get();
        // A failed batch is rolled back whole and tried again next round; a run that cannot
        // be processed is recorded as errored inside the batch and does not fail it.
        let Some(done) = in_txn("processing runs", || process::process_batch(batch, stall)) else {
            break;
        };
        if done < batch {
            break;
        }
    }
    if settings::DIGEST_ENABLED.get() {
        in_txn("sending the weekly digest", || {
            Ok::<_, std::convert::Infallible>(digest::send(false))
        });
    }
    in_txn("queueing follow-ups", alerts::queue_followups);
    lanes.pump();
    // The next due delivery of a destination that is not held back (429).
    let next_due = in_txn("scheduling retries", || {
        Spi::get_one::<f64>(
            "SELECT extract(epoch FROM min(GREATEST(d.next_attempt_at, \
                                                    COALESCE(t.rate_limited_until, '-infinity'))) \
                                  - clock_timestamp())::float8 \
             FROM dunetrace.deliveries d \
             JOIN dunetrace.destinations t ON t.id = d.destination_id AND t.active \
             WHERE d.status IN ('pending', 'sending')",
        )
    })
    .flatten();
    // Due now but not claimed: the lanes are full (back in a few ms) or out of rate-limit
    // tokens (back at the next token), so sleep until then rather than spin.
    let lanes_wake = lanes.next_wake();
    let mut wait = match next_due {
        Some(s) if s <= 0.0 => lanes_wake.unwrap_or(Duration::from_millis(10)),
        Some(s) => naptime.min(Duration::from_secs_f64(s)),
        None => naptime,
    };
    if let Some(w) = lanes_wake {
        wait = wait.min(w);
    }
    wait
}
