//! What exists: leases, their labels, local claim files, and discovery that
//! merges them into one [`discover::Inventory`] per pond.

pub mod claims;
pub mod discover;
pub mod labels;
pub mod lease;
pub mod state_dir;
pub mod state_pg;
