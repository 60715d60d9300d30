//! Rendered outputs (docs/design.md#outputs): what each pond member is to the others
//! ([`peers`]: transports, endpoints, `CRABBOX_POND_*` variables and
//! `{{peers.<slug>.<field>}}` references; [`bridge`]: the member Crabbox's
//! `pond peers --json` prints) and the files written from that
//! ([`files`]: `peers.json`, `hosts`, `env`, user templates, diffs), and
//! where they were written ([`written`], so every destroy removes them).

pub mod bridge;
pub mod files;
pub mod peers;
pub mod written;
