//! Carrying a plan out: the step graph, the executor, the steps, the
//! per-pond lock, retries and progress.

pub mod executor;
pub mod graph;
pub mod lock;
pub mod progress;
pub mod retry;
pub mod steps;
