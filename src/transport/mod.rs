//! Reaching leases: the sync archive (repository files as a gzipped tar),
//! the SSH transport, and the SSH mesh of `pond connect`.

pub mod archive;
pub mod mesh;
pub mod ssh;
