//! Waking the background worker right after a transaction that finished a run commits.
//!
//! The worker publishes the address of its latch (it lives in the shared PGPROC array, so the
//! address is the same in every backend) and its database in shared-memory slots; a backend
//! of that database that finishes a run registers a commit callback that sets the latch.
//! Backends of other databases leave it alone (the worker cannot see their runs). Without
//! `shared_preload_libraries` there are no slots and no worker, and nothing happens.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

static WORKER_LATCH: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"dunetrace_worker_latch") };
/// The OID of the worker's database (0 while no worker runs).
static WORKER_DB: PgAtomic<AtomicU32> = unsafe { PgAtomic::new(c"dunetrace_worker_db") };

/// Set in the postmaster when the library is preloaded; inherited by every backend.
static PRELOADED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static WAKE_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Called from `_PG_init` while preloading.
pub fn init() {
    pg_shmem_init!(WORKER_LATCH);
    pg_shmem_init!(WORKER_DB);
    PRELOADED.store(true, Ordering::Relaxed);
}

/// The worker announces its latch and database (call it once connected).
pub fn publish_worker_latch() {
    if PRELOADED.load(Ordering::Relaxed) {
        // SAFETY: MyLatch is this process' latch, set up before the worker runs, and
        // MyDatabaseId is set once the worker is connected.
        let (ptr, db) = unsafe { (pg_sys::MyLatch as u64, pg_sys::MyDatabaseId.to_u32()) };
        WORKER_DB.get().store(db, Ordering::Release);
        WORKER_LATCH.get().store(ptr, Ordering::Release);
    }
}

/// The worker withdraws its latch before exiting.
pub fn withdraw_worker_latch() {
    if PRELOADED.load(Ordering::Relaxed) {
        WORKER_LATCH.get().store(0, Ordering::Release);
        WORKER_DB.get().store(0, Ordering::Release);
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

/// Wakes the worker once the current transaction commits (once per transaction), when the
/// worker runs in this backend's database.
pub fn wake_worker_on_commit() {
    if !PRELOADED.load(Ordering::Relaxed) || WAKE_REGISTERED.with(Cell::get) {
        return;
    }
    // SAFETY: plain read of this backend's database OID.
    let here = unsafe { pg_sys::MyDatabaseId.to_u32() };
    if WORKER_DB.get().load(Ordering::Acquire) != here {
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
