//! Per-run baseline metrics and the P75 math over an agent's recent runs.
