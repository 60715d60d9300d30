//! Reaching leases: the sync archive (repository files as a gzipped tar),
//! the SSH transport, the shell scripts every remote shell runs, and the SSH
//! mesh of `pond connect`.

pub mod archive;
pub mod logs;
pub mod mesh;
pub mod output;
pub mod process_groups;
pub mod remote_shell;
pub mod session;
pub mod ssh;
