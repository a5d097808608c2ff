//! The privacy rules: what an event may contain.
