//! GUCs (`dunetrace.*`). No secret ever lives in a setting.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;
use std::time::Duration;

/// Seconds without new events after which a started, unfinished run counts as stalled.
pub static STALL_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(90);
/// The database the background worker connects to.
pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
/// The role the background worker connects as (empty: the bootstrap superuser).
pub static WORKER_ROLE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// Fallback poll of the worker (stalled runs, retries), seconds.
pub static WORKER_NAPTIME: GucSetting<i32> = GucSetting::<i32>::new(10);
/// Runs per processing batch (one transaction).
pub static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1000);
/// Weekly digest day, 0 = Monday.
pub static DIGEST_DAY: GucSetting<i32> = GucSetting::<i32>::new(0);
/// Weekly digest hour, UTC.
pub static DIGEST_HOUR: GucSetting<i32> = GucSetting::<i32>::new(9);
/// Whether the worker sends the weekly digest.
pub static DIGEST_ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
/// Base URL of the dashboard the alerts link to.
pub static DASHBOARD_URL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"https://app.dunetrace.io"));
/// Per-request HTTP timeout, milliseconds.
pub static HTTP_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
/// Attempts per delivery before it is marked failed.
pub static HTTP_MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(4);
/// Wait before the first retry, milliseconds; doubles with every attempt.
pub static HTTP_RETRY_BACKOFF_MS: GucSetting<i32> = GucSetting::<i32>::new(2_000);
/// Total time one call of `dispatch()` or `apply_fix()` may spend on HTTP, milliseconds.
pub static HTTP_TOTAL_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
/// Most events one run may hold; ingest refuses a batch that would take a run past it.
pub static MAX_EVENTS_PER_RUN: GucSetting<i32> = GucSetting::<i32>::new(10_000);
/// Seconds of silence after which a run with neither `run.started` nor a terminal event is
/// recorded as orphaned (never evaluated).
pub static ORPHAN_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(86_400);

pub fn http_timeout() -> Duration {
    Duration::from_millis(HTTP_TIMEOUT_MS.get().max(1) as u64)
}

pub fn http_total_timeout() -> Duration {
    Duration::from_millis(HTTP_TOTAL_TIMEOUT_MS.get().max(1) as u64)
}

pub fn dashboard_url() -> String {
    DASHBOARD_URL
        .get()
        .and_then(|c| c.into_string().ok())
        .unwrap_or_default()
}

pub fn init() {
    GucRegistry::define_int_guc(
        c"dunetrace.stall_timeout",
        c"Seconds of silence after which a started run without a terminal event is processed as stalled.",
        c"0 processes every started run immediately. Settable per session.",
        &STALL_TIMEOUT,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"dunetrace.batch_size",
        c"Runs processed per batch (one transaction).",
        c"",
        &BATCH_SIZE,
        1,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"dunetrace.digest_day",
        c"Day of the weekly digest, 0 = Monday ... 6 = Sunday (UTC).",
        c"",
        &DIGEST_DAY,
        0,
        6,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"dunetrace.digest_hour",
        c"Hour of the weekly digest, UTC.",
        c"",
        &DIGEST_HOUR,
        0,
        23,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"dunetrace.digest_enabled",
        c"Whether the background worker sends the weekly digest.",
        c"",
        &DIGEST_ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"dunetrace.dashboard_url",
        c"Base URL the alerts' View Run and Open Dashboard buttons link to.",
        c"",
        &DASHBOARD_URL,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"dunetrace.http_timeout",
        c"Timeout of one alert or Langfuse HTTP request.",
        c"",
        &HTTP_TIMEOUT_MS,
        1,
        600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"dunetrace.http_max_attempts",
        c"Attempts per alert delivery before it is marked failed.",
        c"",
        &HTTP_MAX_ATTEMPTS,
        1,
        100,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"dunetrace.http_retry_backoff",
        c"Wait before the first retry of a failed delivery; doubles with every attempt.",
        c"",
        &HTTP_RETRY_BACKOFF_MS,
        0,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"dunetrace.http_total_timeout",
        c"Total time one call of dunetrace.dispatch() or dunetrace.apply_fix() may spend on HTTP.",
        c"Requests not started within it are left for later; each request also has dunetrace.http_timeout.",
        &HTTP_TOTAL_TIMEOUT_MS,
        1,
        3_600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"dunetrace.max_events_per_run",
        c"Most events one run may hold; a batch that would take a run past it is refused (SQLSTATE 54000).",
        c"Only superusers can change it, so an agent cannot lift it for its own session.",
        &MAX_EVENTS_PER_RUN,
        1,
        10_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"dunetrace.orphan_timeout",
        c"Seconds of silence after which a run with neither run.started nor a terminal event is recorded as orphaned.",
        c"Orphaned runs are recorded in processed_runs (trigger 'orphaned') and never evaluated.",
        &ORPHAN_TIMEOUT,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
    // Postmaster-level settings can only be defined while the library is preloaded.
    // SAFETY: plain read of a flag the postmaster sets.
    if !unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    GucRegistry::define_string_guc(
        c"dunetrace.database",
        c"Database the dunetrace background worker connects to.",
        c"The extension must be created in this database for the worker to do anything.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"dunetrace.worker_role",
        c"Role the dunetrace background worker connects as; empty = the bootstrap superuser.",
        c"A LOGIN role that is a member of dunetrace_worker (see docs/operations.md).",
        &WORKER_ROLE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"dunetrace.worker_naptime",
        c"Fallback poll interval of the background worker (stalled runs, retries, digest).",
        c"The worker is woken at once when a run finishes; this only bounds the wait otherwise.",
        &WORKER_NAPTIME,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
}
