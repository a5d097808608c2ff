//! Waking the background worker right after a transaction that finished a run commits.
//!
//! The worker publishes the address of its latch (it lives in the shared PGPROC array, so the
//! address is the same in every backend) in a shared-memory slot; ingest registers a commit
//! callback that sets it. Without `shared_preload_libraries` there is no slot and no worker,
//! and nothing happens.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static WORKER_LATCH: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"dunetrace_worker_latch") };

/// Set in the postmaster when the library is preloaded; inherited by every backend.
static PRELOADED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static WAKE_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Called from `_PG_init` while preloading.
pub fn init() {
    pg_shmem_init!(WORKER_LATCH);
    PRELOADED.store(true, Ordering::Relaxed);
}

/// The worker announces its latch.
pub fn publish_worker_latch() {
    if PRELOADED.load(Ordering::Relaxed) {
        // SAFETY: MyLatch is this process' latch, set up before the worker runs.
        let ptr = unsafe { pg_sys::MyLatch } as u64;
        WORKER_LATCH.get().store(ptr, Ordering::Release);
    }
}

/// The worker withdraws its latch before exiting.
pub fn withdraw_worker_latch() {
    if PRELOADED.load(Ordering::Relaxed) {
        WORKER_LATCH.get().store(0, Ordering::Release);
    }
}

/// Sets the worker's latch now.
pub fn wake_worker() {
    if !PRELOADED.load(Ordering::Relaxed) {
        return;
    }
    let ptr = WORKER_LATCH.get().load(Ordering::Acquire);
    if ptr != 0 {
        // SAFETY: the address is a latch in the shared PGPROC array; a latch that now belongs
        // to another process only gets a harmless spurious wakeup.
        unsafe { pg_sys::SetLatch(ptr as *mut pg_sys::Latch) };
    }
}

/// Wakes the worker once the current transaction commits (once per transaction).
pub fn wake_worker_on_commit() {
    if !PRELOADED.load(Ordering::Relaxed) || WAKE_REGISTERED.with(Cell::get) {
        return;
    }
    WAKE_REGISTERED.with(|c| c.set(true));
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, || {
        WAKE_REGISTERED.with(|c| c.set(false));
        wake_worker();
    });
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, || {
        WAKE_REGISTERED.with(|c| c.set(false));
    });
}
