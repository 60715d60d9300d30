//! AWS EC2: direct SSH leases on instances crabbox launches itself.

pub mod api;
pub mod sdk;
