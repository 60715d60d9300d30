//! The integration tests: one binary, one module per area.

mod cli;
mod converge;
mod corpus;
mod fake_provider;
mod local_e2e;
mod plan_output;
mod scenarios;
mod loader_fuzz;
mod schema_file;
mod support;
