//! What every layer of crabbox shares, without I/O: Crabbox's name rules
//! and durations, its label keys, leases and lease IDs, the provider names
//! and what each provider can do, how a provider call fails, where command
//! output goes, and the retry policy around provider calls.

pub mod dirs;
pub mod duration;
pub mod expiry;
pub mod human_time;
pub mod json;
pub mod label_map;
pub mod labels;
pub mod lease;
pub mod normalize;
pub mod pond_tag;
pub mod provider;
pub mod retry;
pub mod slug;
pub mod state_url;
