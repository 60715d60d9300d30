//! The JSON Schemas (Draft 7) of crabbox's machine output, built here and
//! printed by `crabbox schema --document NAME`; `schema/NAME.schema.json`
//! holds each one, and a test keeps the files equal to what this builds.
//!
//! - `plan`: the plan document (`plan --format json`, `show --json`, the
//!   `plan` of a `planned_changes` event), as `crabbox_plan::json` makes it.
//! - `events`: one NDJSON line of `apply --json` / `destroy --json`
//!   ([`crate::progress`]): `version`, `timestamp`, `type` and the type's
//!   own keys.
//! - `diagnostics`: the document a `--json` command prints when it fails,
//!   and `validate --format json`'s report.
//! - `pond`: pond.yaml itself (`crabbox_spec::schema`).
//!
//! The schemas are strict (every key listed, required keys required, no
//! others) so that a key added to the output without its schema fails the
//! tests that validate real output against them. Keys that are optional in
//! the output (`adopting`, `kept`, `lease_modes`, `adopt`, …) are optional
//! here.

use serde_json::{Value, json};

use crabbox_core::provider::ProviderName;

/// A published schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Document {
    /// pond.yaml.
    Pond,
    /// The plan document.
    Plan,
    /// One NDJSON progress event.
    Events,
    /// The diagnostics document.
    Diagnostics,
}

impl Document {
    /// Every document, in the order `schema/` lists them.
    pub const ALL: [Self; 4] = [Self::Pond, Self::Plan, Self::Events, Self::Diagnostics];

    /// The name `--document` takes, and the file's stem.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Pond => "pond",
            Self::Plan => "plan",
            Self::Events => "events",
            Self::Diagnostics => "diagnostics",
        }
    }

    /// The document's file under `schema/`.
    #[must_use]
    pub fn file_name(self) -> String {
        format!("{}.schema.json", self.name())
    }

    /// The schema's text: pretty JSON and a final newline (pond.yaml's is
    /// `crabbox_spec::schema::schema_text`, byte for byte).
    #[must_use]
    pub fn text(self) -> String {
        let value = match self {
            Self::Pond => return crabbox_spec::schema::schema_text(),
            Self::Plan => plan(),
            Self::Events => events(),
            Self::Diagnostics => diagnostics(),
        };
        let mut text = serde_json::to_string_pretty(&value).expect("a JSON value serializes");
        text.push('\n');
        text
    }
}

const DRAFT_07: &str = "http://json-schema.org/draft-07/schema#";

/// An object with exactly these `properties`, all of them `required`
/// except the names in `optional`.
fn object(description: &str, properties: Value, optional: &[&str]) -> Value {
    let required: Vec<&String> = properties
        .as_object()
        .expect("properties are an object")
        .keys()
        .filter(|k| !optional.contains(&k.as_str()))
        .collect();
    json!({
        "description": description,
        "type": "object",
        "additionalProperties": false,
        "required": required,
        "properties": properties,
    })
}

fn string(description: &str) -> Value {
    json!({"description": description, "type": "string"})
}

fn nullable_string(description: &str) -> Value {
    json!({"description": description, "type": ["string", "null"]})
}

fn boolean(description: &str) -> Value {
    json!({"description": description, "type": "boolean"})
}

fn count(description: &str) -> Value {
    json!({"description": description, "type": "integer", "minimum": 0})
}

fn strings(description: &str) -> Value {
    json!({"description": description, "type": "array", "items": {"type": "string"}})
}

fn provider() -> Value {
    let names: Vec<&str> = ProviderName::ALL.iter().map(|p| p.as_str()).collect();
    json!({"description": "A Crabbox provider name.", "type": "string", "enum": names})
}

fn ports(description: &str) -> Value {
    json!({"description": description, "type": "array",
        "items": {"type": "integer", "minimum": 1, "maximum": 65535}})
}

/// A live lease's attributes (`crabbox_plan::json::lease_view`).
fn lease_view() -> Value {
    object(
        "The live lease, as its labels describe it.",
        json!({
            "lease_id": string("The lease ID."),
            "provider": provider(),
            "class": nullable_string("The machine class label; null when unknown."),
            "type": nullable_string("The server type label; null when unknown."),
            "tailscale": boolean("Whether the lease asked for Tailscale."),
            "expose": ports("Exposed ports."),
            "keep": boolean("Whether the lease is labelled keep=true."),
            "ttl": nullable_string("Time to live (`2h`); null when unlabelled."),
            "idle_timeout": nullable_string("Idle timeout (`30m`); null when unlabelled."),
            "state": string("The lease's state label (`ready`, `failed`, …)."),
            "spec_hash": nullable_string("The `pond_spec` hash label."),
            "setup_hash": nullable_string("The `pond_setup` hash label (`pending` until setup succeeded)."),
        }),
        &[],
    )
}

/// A desired member's attributes (`crabbox_plan::json::desired_view`).
fn desired_view() -> Value {
    let step = object(
        "One setup step.",
        json!({
            "run": string("The shell command."),
            "background": boolean("Started detached as a service."),
            "timeout": string("The step's time limit (`5m`)."),
            "env": {"description": "Step-only environment.", "type": "object",
                "additionalProperties": {"type": "string"}},
        }),
        &["timeout"],
    );
    let dependency = object(
        "A member this one waits for.",
        json!({
            "slug": string("The dependency."),
            "condition": {"description": "What is waited for.", "type": "string",
                "enum": ["ready", "completed"]},
        }),
        &[],
    );
    object(
        "The member as the spec wants it.",
        json!({
            "provider": provider(),
            "class": nullable_string("The machine class; null when not set."),
            "type": nullable_string("The server type; null when not set."),
            "tailscale": boolean("Whether the member asks for Tailscale."),
            "expose": ports("Exposed ports."),
            "keep": boolean("Whether the lease is kept by cleanup."),
            "ttl": string("Time to live (`2h`)."),
            "idle_timeout": string("Idle timeout (`30m`)."),
            "spec_hash": string("The hash the `pond_spec` label will hold."),
            "setup_hash": string("The hash the `pond_setup` label will hold."),
            "depends_on": {"description": "Dependencies.", "type": "array", "items": dependency},
            "setup": {"description": "Setup steps, in order.", "type": "array", "items": step},
        }),
        &[],
    )
}

/// One entry of `member_changes`.
fn member_change() -> Value {
    let attribute = object(
        "One attribute that changes.",
        json!({
            "name": string("The attribute (`class`, `setup`, …)."),
            "before": nullable_string("Its value on the live lease; null when unset or unknown."),
            "after": nullable_string("Its desired value; null when unset."),
            "forces_replacement": boolean("Whether this change alone replaces the lease."),
        }),
        &[],
    );
    let action = json!({"type": "string", "enum": ["no-op", "create", "update", "delete"]});
    let change = object(
        "What happens, shaped like Terraform's `change`.",
        json!({
            "actions": {"description": "Terraform's actions: [\"create\"], [\"delete\", \"create\"] (replace), …",
                "type": "array", "minItems": 1, "maxItems": 2, "items": action},
            "before": {"description": "The live lease; null when there is none.",
                "oneOf": [{"type": "null"}, lease_view()]},
            "after": {"description": "The desired member; null for a deletion.",
                "oneOf": [{"type": "null"}, desired_view()]},
            "reasons": strings("Why, in words."),
            "attributes": {"description": "Attributes that differ.", "type": "array", "items": attribute},
            "relabel": boolean("For updates: the labels are rewritten."),
            "rerun_setup": boolean("For updates: setup runs again."),
            "commands": {"description": "What the member runs (env, setup steps, readiness, sync), env values from the environment hidden; null for a deletion.",
                "type": ["array", "null"], "items": {"type": "string"}},
            "commands_before": {"description": "What the live lease ran when it was last set up; null when not recorded.",
                "type": ["array", "null"], "items": {"type": "string"}},
            "adopting": object(
                "The lease is adopted (a lease Crabbox made; like Terraform's `importing`).",
                json!({
                    "lease_id": nullable_string("The adopted lease."),
                    "made_by": {"type": "string", "enum": ["crabbox"]},
                }),
                &[],
            ),
            "kept": {"description": "The lease is not in the spec and kept (keep=true).", "const": true},
        }),
        &["commands_before", "adopting", "kept"],
    );
    object(
        "The change of one member or stray lease.",
        json!({
            "slug": string("The member (normalized slug)."),
            "provider": provider(),
            "lease_id": nullable_string("The live lease acted on; null when there is none."),
            "change": change,
        }),
        &[],
    )
}

/// The plan document's schema.
#[must_use]
pub fn plan() -> Value {
    let mut schema = plan_body();
    let map = schema.as_object_mut().expect("an object");
    let mut out = serde_json::Map::new();
    out.insert("$schema".into(), DRAFT_07.into());
    out.insert("title".into(), "crabbox plan".into());
    out.append(map);
    Value::Object(out)
}

fn plan_body() -> Value {
    let output_change = object(
        "A rendered output file that changes.",
        json!({
            "name": string("The file, inside the outputs directory."),
            "action": {"type": "string", "enum": ["create", "update"]},
            "diff": string("Unified diff of the old and new content."),
        }),
        &[],
    );
    object(
        "A crabbox plan (`crabbox plan --format json`, `crabbox show --json`), shaped like Terraform's `show -json`. A minor format version only adds keys.",
        json!({
            "format_version": {"description": "Version of this format (`1.0`).", "type": "string", "pattern": "^1\\.[0-9]+$"},
            "crabbox_version": string("The crabbox that made the plan."),
            "pond": string("The pond (normalized name)."),
            "applyable": boolean("Whether `apply` can carry the plan out."),
            "has_changes": boolean("Whether anything changes."),
            "member_changes": {"description": "One entry per member and per stray lease.", "type": "array", "items": member_change()},
            "output_changes": {"description": "Rendered files that change.", "type": "array", "items": output_change},
            "forget_claims": strings("Claims whose lease is gone, forgotten by the apply."),
            "inventory": object(
                "What discovery found besides the members.",
                json!({
                    "unclaimed_leases": strings("Leases listed by their provider without a claim here."),
                    "dangling_claims": strings("Claims whose lease no longer exists."),
                }),
                &[],
            ),
            "summary": object(
                "Counts in Terraform's words; a replacement counts in add and in destroy.",
                json!({
                    "adopt": count("Leases made by Crabbox that are adopted (absent when 0)."),
                    "add": count("Leases created."),
                    "change": count("Leases updated in place."),
                    "destroy": count("Leases released."),
                }),
                &["adopt"],
            ),
            "warnings": strings("Warnings shown with the plan."),
            "lease_modes": {"description": "How each member's lease is made (`direct`, `brokered (<url>)`); only when a member is brokered.",
                "type": "object", "additionalProperties": {"type": "string"}},
        }),
        &["lease_modes"],
    )
}

/// One diagnostic: of a spec (with its place) or of anything else (place
/// null).
fn diagnostic() -> Value {
    let place = |d: &str| json!({"description": d, "type": ["integer", "null"], "minimum": 0});
    let related = object(
        "A secondary place.",
        json!({
            "line": count("1-based line."),
            "column": count("1-based column."),
            "message": string("What about it."),
        }),
        &[],
    );
    object(
        "One problem. For a spec the place in the file; for anything else (a provider, the state, a lease) file, line and column are null.",
        json!({
            "file": nullable_string("The file, as given; null when no file is concerned."),
            "line": place("1-based line; 0 for the file as a whole; null without a file."),
            "column": place("1-based column."),
            "end_line": place("Line where the span ends."),
            "end_column": place("Column where the span ends (exclusive)."),
            "code": {"description": "Stable kebab-case identifier (`missing-key`, `not-found`, `credentials`, …).",
                "type": "string", "pattern": "^[a-z0-9]+(-[a-z0-9]+)*$"},
            "severity": {"type": "string", "enum": ["error", "warning"]},
            "message": string("What is wrong."),
            "hint": nullable_string("What to do about it; null when unknown."),
            "related": {"description": "Secondary places.", "type": "array", "items": related},
        }),
        &[],
    )
}

/// The diagnostics document's keys (shared with the `diagnostics` event).
fn diagnostics_properties() -> Value {
    json!({
        "format_version": {"description": "Version of this format (`1.0`).", "type": "string", "pattern": "^1\\.[0-9]+$"},
        "valid": boolean("`validate` only: whether the spec is usable."),
        "error_count": count("How many diagnostics are errors."),
        "warning_count": count("How many are warnings."),
        "diagnostics": {"description": "The problems.", "type": "array", "items": diagnostic()},
    })
}

/// The diagnostics document's schema.
#[must_use]
pub fn diagnostics() -> Value {
    let mut out = serde_json::Map::new();
    out.insert("$schema".into(), DRAFT_07.into());
    out.insert("title".into(), "crabbox diagnostics".into());
    out.append(
        object(
            "What a `--json` command prints on stdout when it fails, and `crabbox validate --format json`'s report.",
            diagnostics_properties(),
            &["valid"],
        )
        .as_object_mut()
        .expect("an object"),
    );
    Value::Object(out)
}

/// One event type: the common keys, then its own.
fn event(kind: &str, description: &str, own: Value, optional: &[&str]) -> Value {
    let mut properties = serde_json::Map::new();
    properties.insert(
        "version".into(),
        json!({"description": "Version of the event format.", "const": crate::progress::EVENTS_VERSION}),
    );
    properties.insert(
        "timestamp".into(),
        json!({"description": "When, in RFC 3339 UTC with milliseconds.", "type": "string",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$"}),
    );
    properties.insert(
        "type".into(),
        json!({"description": "The event type.", "const": kind}),
    );
    properties.extend(own.as_object().expect("an object").clone());
    object(description, Value::Object(properties), optional)
}

/// The NDJSON events' schema: each line is one of the event types.
#[must_use]
pub fn events() -> Value {
    let slug = || nullable_string("The member; null for pond-wide steps (render, forget-claim).");
    let step = || json!({"description": "The step (`warmup`, `sync`, `setup`, `ready`, `release`, …).", "type": "string", "pattern": "^[a-z]+(-[a-z]+)*$"});
    let elapsed = || count("Milliseconds since the step started.");
    let mut diagnostics_event = diagnostics_properties();
    diagnostics_event
        .as_object_mut()
        .expect("an object")
        .remove("valid");
    let types = vec![
        event(
            "planned_changes",
            "The plan about to be carried out (first line).",
            json!({"plan": plan_body()}),
            &[],
        ),
        event(
            "apply_start",
            "A step started.",
            json!({"slug": slug(), "step": step(), "detail": string("What it works on; often empty.")}),
            &[],
        ),
        event(
            "apply_progress",
            "A step is still running (every 10 s).",
            json!({"slug": slug(), "step": step(), "elapsed_ms": elapsed()}),
            &[],
        ),
        event(
            "apply_complete",
            "A step finished.",
            json!({"slug": slug(), "step": step(), "elapsed_ms": elapsed(), "detail": string("What it did (`id=…`); often empty.")}),
            &[],
        ),
        event(
            "apply_errored",
            "A step failed.",
            json!({"slug": slug(), "step": step(), "elapsed_ms": elapsed(), "error": string("Why.")}),
            &[],
        ),
        event(
            "apply_skipped",
            "A step did not run.",
            json!({"slug": slug(), "step": step(), "reason": string("Why.")}),
            &[],
        ),
        event(
            "output",
            "A line a command printed on a member.",
            json!({"slug": string("The member."), "stream": {"type": "string", "enum": ["stdout", "stderr"]}, "line": string("The line, without its newline.")}),
            &[],
        ),
        event(
            "message",
            "A free-form message (warnings, interrupts, clean-ups).",
            json!({"level": {"type": "string", "enum": ["info", "warning", "error"]}, "message": string("The text.")}),
            &[],
        ),
        event(
            "change_summary",
            "The outcome (last line of a run that got to carry the plan out).",
            json!({
                "ok": boolean("Whether every step succeeded."),
                "adopted": count("Leases adopted (absent when 0)."),
                "added": count("Members added."),
                "changed": count("Members changed."),
                "destroyed": count("Members destroyed."),
                "message": string("The summary in words."),
            }),
            &["adopted"],
        ),
        event(
            "diagnostics",
            "Why the command failed (last line of a failed run); the diagnostics document's keys.",
            diagnostics_event,
            &[],
        ),
    ];
    json!({
        "$schema": DRAFT_07,
        "title": "crabbox apply/destroy event",
        "description": "One line of `crabbox apply --json` / `crabbox destroy --json` (NDJSON): every line carries `version`, `timestamp` and `type`.",
        "oneOf": types,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_keys_are_not_required() {
        let plan = plan();
        let change = &plan["properties"]["member_changes"]["items"]["properties"]["change"];
        let required = change["required"].as_array().expect("required");
        assert!(required.contains(&json!("commands")));
        assert!(!required.contains(&json!("commands_before")));
        assert!(!required.contains(&json!("adopting")));
    }
}
