//! The integration tests: one binary, one module per area.

mod cli;
mod corpus;
mod loader_fuzz;
mod schema_file;
mod support;
