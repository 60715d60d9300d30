//! Where a pond is recorded: Crabbox's claim files or the PostgreSQL state
//! backend behind one claim API, the state directory, and the per-pond lock
//! that serializes applies.

pub mod claims;
pub mod lock;
pub mod migrate;
pub mod state_dir;
pub mod state_pg;
