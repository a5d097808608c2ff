//! dunetrace: the pgrx shell around `dunetrace-core`.
//!
//! Only code that touches Postgres lives here: SQL entry points, SPI, settings and (later) the
//! background worker. What a signal *is* is decided in the core crate.

use pgrx::prelude::*;

mod alerts;
mod config;
mod deploys;
mod digest;
mod dispatch;
mod errors;
mod explain;
mod fixes;
mod http;
mod ingest;
mod issues;
mod keys;
mod lanes;
mod process;
mod rows;
mod schema;
mod settings;
mod subxact;
mod wake;
mod worker;

pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::init();
    // SAFETY: plain read of a flag the postmaster sets.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        wake::init();
        worker::register();
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'dunetrace'",
            "dunetrace.database = 'pgrx_tests'",
        ]
    }
}
