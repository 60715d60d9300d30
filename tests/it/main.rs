//! The integration tests: one binary, one module per area.

mod cli;
mod converge;
mod corpus;
mod delegated_e2e;
mod fake_hetzner;
mod fake_islo;
mod fake_provider;
mod hetzner;
mod islo;
mod killed;
mod loader_fuzz;
mod local_e2e;
mod pg;
mod plan_output;
mod scenarios;
mod schema_file;
mod ssh_e2e;
mod ssh_transport;
mod sshd;
mod state_pg;
mod support;
mod tensorlake;
mod workflows;
