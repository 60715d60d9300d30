//! Carrying a plan out: discovery of what exists, the step graph, the
//! executor, the steps, progress, and the observe → plan → apply loop the
//! commands share (`reconcile`), and the JSON Schemas of the machine
//! output (`schemas`). It drives providers through the `Provider` trait
//! only.

pub mod discover;
pub mod executor;
pub mod graph;
pub mod progress;
pub mod reconcile;
pub mod schemas;
pub mod steps;
mod tailnet;
