//! Moving things to leases: the sync archive (repository files as a gzipped tar).

pub mod archive;
pub mod ssh;
