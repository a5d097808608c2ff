//! `#[pg_test]`s, one file per SQL area. Each file's tests live in a `#[pg_schema] mod tests`.
mod alerts;
mod ingest;
mod jsonb;
mod process;
mod safety;
pub mod support;
