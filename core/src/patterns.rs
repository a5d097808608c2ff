//! Prompt-injection patterns scanned in the agent's process.
