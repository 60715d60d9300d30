//! The pond's two rows in a tailnet policy file, read and added the way
//! Crabbox does (internal/cli/pond_acl.go), so either tool finds the rows the
//! other wrote:
//!
//! - `tagOwners["<tag>"]`, which lets the pond's auth keys carry the tag
//!   (added as `["autogroup:admin"]`);
//! - a self-peering rule: in a policy with `grants`, a grant whose `src` and
//!   `dst` hold the tag and whose `ip` is not empty; otherwise an `acls` row
//!   `{"action": "accept", "src": [tag], "dst": [tag or "tag:*"…]}`. A rule
//!   of either shape counts as present.
//!
//! Policies are HuJSON (comments, trailing commas). The file is edited as a
//! concrete syntax tree, so everything the user wrote — comments, order,
//! spacing — stays byte for byte; only the missing rows are appended. A
//! shape crabbox cannot edit safely (a duplicate key, `grants` that is not
//! an array…) is refused, and the user applies [`snippet`] by hand.

use jsonc_parser::ParseOptions;
use jsonc_parser::cst::{CstInputValue, CstObject, CstRootNode};
use jsonc_parser::json;
use serde::Deserialize;

/// Why a policy cannot be read or edited safely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError(pub String);

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the tailnet policy cannot be edited safely ({}); add the pond's rows by hand",
            self.0
        )
    }
}

impl std::error::Error for PolicyError {}

/// Which of the pond's rows a policy holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rows {
    /// `tagOwners` names the tag.
    pub owner: bool,
    /// A grant or ACL row lets the tag reach itself.
    pub access: bool,
}

impl Rows {
    /// Both rows are there: nothing to add.
    #[must_use]
    pub fn complete(self) -> bool {
        self.owner && self.access
    }
}

#[derive(Deserialize)]
struct Grant {
    #[serde(default)]
    src: Vec<String>,
    #[serde(default)]
    dst: Vec<String>,
    #[serde(default)]
    ip: Vec<String>,
}

#[derive(Deserialize)]
struct Acl {
    #[serde(default)]
    src: Vec<String>,
    #[serde(default)]
    dst: Vec<String>,
}

/// What a parsed policy holds, for one tag.
struct Shape {
    root: CstRootNode,
    tag_owners: Option<CstObject>,
    has_grants: bool,
    has_acls: bool,
    rows: Rows,
}

fn parse(policy: &str, tag: &str) -> Result<Shape, PolicyError> {
    if policy.trim().is_empty() {
        return Err(PolicyError("the policy is empty".to_owned()));
    }
    let root = CstRootNode::parse(policy, &ParseOptions::default())
        .map_err(|e| PolicyError(format!("not HuJSON: {e}")))?;
    let object = root
        .object_value()
        .ok_or_else(|| PolicyError("its root is not an object".to_owned()))?;
    let mut seen = std::collections::BTreeSet::new();
    let mut shape = Shape {
        root: root.clone(),
        tag_owners: None,
        has_grants: false,
        has_acls: false,
        rows: Rows {
            owner: false,
            access: false,
        },
    };
    for prop in object.properties() {
        let name = decoded_name(&prop)?;
        if !seen.insert(name.clone()) {
            return Err(PolicyError(format!("`{name}` appears twice")));
        }
        match name.as_str() {
            "tagOwners" => {
                let owners = prop
                    .object_value()
                    .ok_or_else(|| PolicyError("`tagOwners` is not an object".to_owned()))?;
                let mut names = std::collections::BTreeSet::new();
                for owner in owners.properties() {
                    let owner = decoded_name(&owner)?;
                    if !names.insert(owner.clone()) {
                        return Err(PolicyError(format!("`tagOwners` names `{owner}` twice")));
                    }
                    shape.rows.owner |= owner == tag;
                }
                shape.tag_owners = Some(owners);
            }
            "grants" => {
                shape.has_grants = true;
                let grants: Vec<Grant> = section(&prop, "grants")?;
                shape.rows.access |= grants
                    .iter()
                    .any(|g| has(&g.src, tag) && has(&g.dst, tag) && !g.ip.is_empty());
            }
            "acls" => {
                shape.has_acls = true;
                let acls: Vec<Acl> = section(&prop, "acls")?;
                let any_port = format!("{tag}:*");
                shape.rows.access |= acls
                    .iter()
                    .any(|a| has(&a.src, tag) && (has(&a.dst, tag) || has(&a.dst, &any_port)));
            }
            _ => {}
        }
    }
    Ok(shape)
}

fn decoded_name(prop: &jsonc_parser::cst::CstObjectProp) -> Result<String, PolicyError> {
    prop.name()
        .and_then(|n| n.decoded_value().ok())
        .ok_or_else(|| PolicyError("a key does not read".to_owned()))
}

/// A section (`grants`, `acls`) as an array of rules.
fn section<T: for<'de> Deserialize<'de>>(
    prop: &jsonc_parser::cst::CstObjectProp,
    name: &str,
) -> Result<Vec<T>, PolicyError> {
    if prop.array_value().is_none() {
        return Err(PolicyError(format!("`{name}` is not an array")));
    }
    let value = prop
        .value()
        .and_then(|v| v.to_serde_value())
        .ok_or_else(|| PolicyError(format!("`{name}` does not read")))?;
    serde_json::from_value(value).map_err(|e| PolicyError(format!("`{name}` does not read: {e}")))
}

fn has(values: &[String], want: &str) -> bool {
    values.iter().any(|v| v == want)
}

/// Which of the pond's rows `policy` holds for `tag`.
///
/// # Errors
/// The policy is not HuJSON or has a shape crabbox does not edit.
pub fn rows(policy: &str, tag: &str) -> Result<Rows, PolicyError> {
    parse(policy, tag).map(|s| s.rows)
}

/// `policy` with the pond's missing rows appended; `None` when both are
/// there. Everything else in the text is kept as written.
///
/// # Errors
/// The policy is not HuJSON, has a shape crabbox does not edit, or (a bug)
/// the edited text would not hold the rows.
pub fn with_pond_rows(policy: &str, tag: &str) -> Result<Option<String>, PolicyError> {
    let shape = parse(policy, tag)?;
    if shape.rows.complete() {
        return Ok(None);
    }
    let root = shape
        .root
        .object_value()
        .ok_or_else(|| PolicyError("its root is not an object".to_owned()))?;
    if !shape.rows.owner {
        match &shape.tag_owners {
            Some(owners) => {
                owners.append(tag, json!(["autogroup:admin"]));
            }
            None => {
                root.append("tagOwners", owner_row(tag));
            }
        }
    }
    if !shape.rows.access {
        let grants = root.get("grants").and_then(|p| p.array_value());
        let acls = root.get("acls").and_then(|p| p.array_value());
        match (shape.has_grants, grants, shape.has_acls, acls) {
            (true, Some(grants), _, _) => {
                grants.append(grant_row(tag));
            }
            (false, _, true, Some(acls)) => {
                acls.append(acl_row(tag));
            }
            _ => {
                root.append("acls", CstInputValue::Array(vec![acl_row(tag)]));
            }
        }
    }
    let merged = shape.root.to_string();
    // The edit is checked as the next reader will see it.
    if !rows(&merged, tag)?.complete() {
        return Err(PolicyError(
            "the edited policy does not hold the pond's rows".to_owned(),
        ));
    }
    Ok(Some(merged))
}

fn owner_row(tag: &str) -> CstInputValue {
    CstInputValue::Object(vec![(tag.to_owned(), json!(["autogroup:admin"]))])
}

fn grant_row(tag: &str) -> CstInputValue {
    json!({ "src": [tag], "dst": [tag], "ip": ["*"] })
}

fn acl_row(tag: &str) -> CstInputValue {
    let dst = format!("{tag}:*");
    json!({ "action": "accept", "src": [tag], "dst": [dst] })
}

/// The rows to add by hand, as a HuJSON fragment of a policy.
#[must_use]
pub fn snippet(tag: &str) -> String {
    format!(
        "\"tagOwners\": {{\n  \"{tag}\": [\"autogroup:admin\"],\n}},\n\"grants\": [\n  {{ \"src\": [\"{tag}\"], \"dst\": [\"{tag}\"], \"ip\": [\"*\"] }},\n],"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &str = "tag:cbx-pond-yossi-e-alpha";

    #[test]
    fn a_grants_policy_gets_a_grant_and_keeps_its_comments() {
        let policy = r#"{
  // Who may use which tag.
  "tagOwners": {
    "tag:ci": ["autogroup:admin"], // CI runners
  },
  /* grants, newest last */
  "grants": [
    { "src": ["autogroup:member"], "dst": ["tag:ci"], "ip": ["22"] },
  ],
}
"#;
        let merged = with_pond_rows(policy, TAG)
            .expect("merges")
            .expect("changed");
        // Every byte the user wrote stays; the rows follow the file's own
        // style, trailing commas included.
        assert_eq!(
            merged,
            r#"{
  // Who may use which tag.
  "tagOwners": {
    "tag:ci": ["autogroup:admin"], // CI runners
    "tag:cbx-pond-yossi-e-alpha": ["autogroup:admin"],
  },
  /* grants, newest last */
  "grants": [
    { "src": ["autogroup:member"], "dst": ["tag:ci"], "ip": ["22"] },
    {
      "src": ["tag:cbx-pond-yossi-e-alpha"],
      "dst": ["tag:cbx-pond-yossi-e-alpha"],
      "ip": ["*"],
    },
  ],
}
"#
        );
        assert!(rows(&merged, TAG).expect("reads").complete(), "{merged}");
        // Idempotent: a second run changes nothing.
        assert_eq!(with_pond_rows(&merged, TAG).expect("reads"), None);
    }

    #[test]
    fn an_acls_policy_gets_an_acls_row() {
        let policy = r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}]}"#;
        let merged = with_pond_rows(policy, TAG)
            .expect("merges")
            .expect("changed");
        let value = CstRootNode::parse(&merged, &ParseOptions::default())
            .expect("parses")
            .value()
            .and_then(|v| v.to_serde_value())
            .expect("a value");
        assert_eq!(
            value["acls"][1],
            serde_json::json!({"action": "accept", "src": [TAG], "dst": [format!("{TAG}:*")]}),
            "{merged}"
        );
        assert_eq!(
            value["tagOwners"][TAG],
            serde_json::json!(["autogroup:admin"])
        );
        assert_eq!(value["acls"][0]["dst"], serde_json::json!(["*:22"]));
    }

    #[test]
    fn a_policy_without_either_section_gets_acls() {
        let merged = with_pond_rows("{}", TAG).expect("merges").expect("changed");
        assert!(rows(&merged, TAG).expect("reads").complete(), "{merged}");
        assert!(merged.contains("\"acls\""), "{merged}");
    }

    #[test]
    fn existing_rows_of_either_shape_count() {
        let grant = format!(
            r#"{{"tagOwners": {{"{TAG}": []}}, "grants": [{{"src": ["{TAG}"], "dst": ["{TAG}"], "ip": ["*"]}}]}}"#
        );
        assert_eq!(with_pond_rows(&grant, TAG).expect("reads"), None);
        let acl = format!(
            r#"{{"tagOwners": {{"{TAG}": []}}, "acls": [{{"action": "accept", "src": ["{TAG}"], "dst": ["{TAG}:*"]}}]}}"#
        );
        assert_eq!(with_pond_rows(&acl, TAG).expect("reads"), None);
        // A grant without `ip` admits nothing at the network layer.
        let no_ip = format!(
            r#"{{"tagOwners": {{"{TAG}": []}}, "grants": [{{"src": ["{TAG}"], "dst": ["{TAG}"]}}]}}"#
        );
        assert!(!rows(&no_ip, TAG).expect("reads").access);
        // Another pond's tag is not this one's.
        let other = r#"{"tagOwners": {"tag:cbx-pond-user-beta": []}}"#;
        assert!(!rows(other, TAG).expect("reads").owner);
    }

    #[test]
    fn unsafe_shapes_are_refused() {
        for (policy, why) in [
            ("", "empty"),
            ("[]", "root is not an object"),
            (r#"{"grants": {}}"#, "`grants` is not an array"),
            (r#"{"acls": 3}"#, "`acls` is not an array"),
            (r#"{"tagOwners": []}"#, "`tagOwners` is not an object"),
            (r#"{"acls": [], "acls": []}"#, "`acls` appears twice"),
            (
                r#"{"tagOwners": {"tag:a": [], "tag:a": []}}"#,
                "names `tag:a` twice",
            ),
            (r#"{"grants": [{"src": "x"}]}"#, "`grants` does not read"),
            ("{ oops", "not HuJSON"),
        ] {
            let err = with_pond_rows(policy, TAG).expect_err(why);
            assert!(err.to_string().contains(why), "{policy}: {err}");
        }
    }

    #[test]
    fn the_snippet_holds_the_rows() {
        let policy = format!("{{\n{}\n}}", snippet(TAG));
        assert!(
            rows(&policy, TAG)
                .expect("the snippet is HuJSON")
                .complete(),
            "{policy}"
        );
    }
}
