//! Subtransactions and error capture: run a piece of work so that, when it fails, only its own
//! writes are undone and the caller learns why (as PL/pgSQL's `BEGIN … EXCEPTION` does).
//!
//! `process_runs` writes each chunk of runs in a subtransaction, and when one fails, each of
//! its runs alone, so one run that cannot be written is recorded as errored instead of taking
//! its whole batch down (see docs/operations.md, "Poison runs").

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::spi::SpiError;

/// The message of an error caught by `PgTryBuilder` (never its detail: details can quote row
/// values).
pub fn caught_message(e: &CaughtError) -> String {
    match e {
        CaughtError::PostgresError(r)
        | CaughtError::ErrorReport(r)
        | CaughtError::RustPanic { ereport: r, .. } => r.message().to_string(),
    }
}

/// Runs `f` in a subtransaction. On success its work is kept (the subtransaction released
/// into the caller's transaction); on a Postgres error, a Rust panic or an `Err` its work is
/// rolled back and the error's message returned. Open SPI connections inside `f`, not around
/// this call: a rolled-back subtransaction closes the connections it opened.
pub fn run<R>(f: impl FnOnce() -> Result<R, SpiError>) -> Result<R, String> {
    // SAFETY: the standard internal-subtransaction protocol (as in PL/pgSQL's exception
    // blocks): remember the memory context and resource owner, begin, run, then either
    // release or roll back and restore both.
    unsafe {
        let ctx = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(ctx);
        let f = std::panic::AssertUnwindSafe(f);
        let result = PgTryBuilder::new(move || f().map_err(|e| e.to_string()))
            .catch_others(|e| Err(caught_message(&e)))
            .execute();
        match result {
            Ok(v) => {
                pg_sys::ReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(ctx);
                pg_sys::CurrentResourceOwner = owner;
                Ok(v)
            }
            Err(msg) => {
                pg_sys::MemoryContextSwitchTo(ctx);
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(ctx);
                pg_sys::CurrentResourceOwner = owner;
                Err(msg)
            }
        }
    }
}
