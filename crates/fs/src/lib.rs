//! The files crabbox writes: atomically replaced, private to the user.

pub mod atomic_file;
pub mod dir_files;
