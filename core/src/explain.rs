//! Deterministic explanation templates for every failure type.
