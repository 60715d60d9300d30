//! AWS EC2: direct SSH leases on instances crabbox launches itself.

pub mod api;
pub mod capacity;
pub mod credentials;
pub mod sdk;
pub mod ssh_cidr;
