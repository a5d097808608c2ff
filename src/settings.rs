//! GUCs (`dunetrace.*`). No secret ever lives in a setting.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// Seconds without new events after which a started, unfinished run counts as stalled.
pub static STALL_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(90);

/// The database the background worker connects to.
pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));

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
}
