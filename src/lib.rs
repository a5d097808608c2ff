//! dunetrace: the pgrx shell around `dunetrace-core`.
use pgrx::prelude::*;

pgrx::pg_module_magic!();
