//! pond.yaml: the model, loading with positions, interpolation,
//! normalization, validation and the JSON Schema.

pub mod broker;
pub mod check;
pub mod desired;
pub mod diagnostic;
pub mod interpolate;
pub mod load;
pub mod member_labels;
pub mod model;
pub mod peer_refs;
pub mod providers;
pub mod schema;
pub mod source;
pub mod suggest;
pub mod user_config;
pub mod yaml;
