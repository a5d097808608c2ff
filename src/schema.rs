//! The library and the extension's SQL objects go together: after a new library is installed
//! and before `ALTER EXTENSION dunetrace UPDATE` has run in a database, that database still has
//! the older tables. The worker and the batch functions then wait (ingest keeps storing runs,
//! which are processed once the update ran) instead of failing on columns that do not exist
//! yet. See docs/operations.md, "Upgrades".

use crate::errors::raise;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// The version this library implements.
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `Err(why)` when the extension in this database is not at the library's version (or not
/// created at all).
pub fn check() -> Result<(), String> {
    let installed = Spi::get_one::<String>(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'dunetrace'",
    )
    .map_err(|e| e.to_string())?;
    match installed {
        Some(v) if v == LIBRARY_VERSION => Ok(()),
        Some(v) => Err(format!(
            "the extension's SQL objects in this database are version {v}, the installed \
             library is {LIBRARY_VERSION}: run ALTER EXTENSION dunetrace UPDATE"
        )),
        None => Err("the extension is not created in this database".into()),
    }
}

/// For SQL functions that need the current tables: raises 55000 when the update is pending.
pub fn require(function: &str) {
    if let Err(why) = check() {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("dunetrace.{function}: {why}"),
        );
    }
}
