//! crabbox: declarative Crabbox ponds. A checked-in `pond.yaml` is planned
//! against the leases that really exist and applied through provider adapters.
//!
//! The binary is a thin wrapper over [`run`]; everything lives here so that
//! tests and tools use the same code paths as the command line.

pub mod apply;
pub mod atomic_file;
pub mod cli;
pub mod diagnostic;
pub mod inventory;
pub mod plan;
pub mod providers;
pub mod reconcile;
pub mod render;
pub mod spec;
pub mod transport;

pub use cli::run;
