//! dunetrace-core: everything dunetrace decides, with no Postgres in sight.
//!
//! The pgrx shell (crate `dunetrace`) loads rows, calls into this crate and writes rows.
//! Nothing here performs I/O, so every rule is unit-tested with plain `cargo test`.

pub mod baseline;
pub mod batch;
pub mod delivery;
pub mod detect;
pub mod envelope;
pub mod event;
pub mod explain;
pub mod format;
pub mod ids;
pub mod issues;
pub mod jsonb;
pub mod patterns;
pub mod pipeline;
pub mod pyround;
pub mod run;
pub mod sign;
pub mod sqlstate;
pub mod validate;
