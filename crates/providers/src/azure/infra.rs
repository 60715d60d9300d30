//! The shared network every lease of a resource group uses — resource
//! group, virtual network and subnet, network security group — adopted
//! when it carries `managed_by=crabbox`, created (tagged so) when missing,
//! and refused, untouched, when a resource of that name exists without the
//! tag: someone else's network is never modified. Crabbox's layout:
//! `10.42.0.0/16` with subnet `10.42.0.0/24`, SSH rules `crabbox-ssh-<port>-<n>`
//! from priority 100 on.

use serde_json::{Value, json};

use crabbox_core::provider::ProviderError;

use super::arm::{Arm, Kind, Resource, tags};
use super::settings::Settings;

/// Crabbox's address space for the shared virtual network.
const ADDRESS_SPACE: &str = "10.42.0.0/16";
/// Crabbox's subnet prefix.
const SUBNET_PREFIX: &str = "10.42.0.0/24";
/// Crabbox's SSH rule names start with this.
const RULE_PREFIX: &str = "crabbox-ssh-";

/// The tags of every shared resource crabbox creates (Crabbox's).
#[must_use]
pub fn shared_tags() -> Value {
    json!({"crabbox": "true", "managed_by": "crabbox"})
}

/// Whether a resource carries `managed_by=crabbox`.
#[must_use]
pub fn managed_by_crabbox(resource: &Value) -> bool {
    tags(resource).get("managed_by").map(|v| v.as_str()) == Some("crabbox")
}

/// The shared resources, by ID, once made sure of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shared {
    /// The subnet NICs join.
    pub subnet_id: String,
    /// The security group NICs carry.
    pub nsg_id: String,
}

/// Refuses a resource named like a shared one that crabbox does not manage.
fn refuse(r: &Resource) -> ProviderError {
    ProviderError::Failed(format!(
        "azure {} exists but is not Crabbox-managed (no tag managed_by=crabbox): crabbox leaves it untouched; delete it, tag it managed_by=crabbox to adopt it, or name another in the member's `azure:` block",
        r.what
    ))
}

fn api(what: &str) -> impl Fn(crate::http::ApiError) -> ProviderError + '_ {
    move |e| match e.error {
        ProviderError::Failed(m) => ProviderError::Failed(format!("{what}: {m}")),
        other => other,
    }
}

/// Reads a shared resource: `Some` when crabbox's, `None` when missing;
/// refused when someone else's.
async fn adoptable(arm: &Arm, r: &Resource) -> Result<Option<Value>, ProviderError> {
    match arm
        .get(r)
        .await
        .map_err(api("reading the shared network"))?
    {
        Some(existing) if managed_by_crabbox(&existing) => Ok(Some(existing)),
        Some(_) => Err(refuse(r)),
        None => Ok(None),
    }
}

/// Makes sure of the shared network of `settings` with SSH open on `ports`
/// from `cidrs`; every resource is read first, and all are checked before
/// any is created, so a foreign one stops the apply before crabbox writes.
///
/// # Errors
/// A foreign resource of a shared name, or a call that failed.
pub async fn ensure(
    arm: &Arm,
    settings: &Settings,
    cidrs: &[String],
    ports: &[u16],
) -> Result<Shared, ProviderError> {
    let group = arm.group(&settings.resource_group);
    let vnet = arm.resource(
        &settings.resource_group,
        Kind::VirtualNetwork,
        &settings.vnet,
    );
    let subnet = arm.subnet(&settings.resource_group, &settings.vnet, &settings.subnet);
    let nsg = arm.resource(&settings.resource_group, Kind::SecurityGroup, &settings.nsg);
    let existing_group = adoptable(arm, &group).await?;
    let (existing_vnet, existing_nsg) = if existing_group.is_some() {
        tokio::try_join!(adoptable(arm, &vnet), adoptable(arm, &nsg))?
    } else {
        (None, None)
    };
    if existing_group.is_none() {
        arm.put(
            &group,
            &json!({"location": settings.location, "tags": shared_tags()}),
        )
        .await
        .map_err(api("creating the shared resource group"))?;
        eprintln!("azure: created {} in {}", group.what, settings.location);
    }
    let nsg_body = security_group(settings, existing_nsg.as_ref(), cidrs, ports);
    let nsg_write = async {
        if let Some(body) = nsg_body {
            arm.put(&nsg, &body)
                .await
                .map_err(api("writing the shared network security group"))?;
            eprintln!("azure: {} allows SSH from {}", nsg.what, cidrs.join(", "));
        }
        Ok::<_, ProviderError>(())
    };
    let vnet_write = async {
        match existing_vnet {
            None => {
                arm.put(
                    &vnet,
                    &json!({
                        "location": settings.location,
                        "tags": shared_tags(),
                        "properties": {
                            "addressSpace": {"addressPrefixes": [ADDRESS_SPACE]},
                            "subnets": [{"name": settings.subnet, "properties": {"addressPrefix": SUBNET_PREFIX}}],
                        },
                    }),
                )
                .await
                .map_err(api("creating the shared virtual network"))?;
                eprintln!("azure: created {} with {}", vnet.what, subnet.what);
            }
            Some(_) => {
                // Crabbox's network with another subnet name: add ours.
                if arm
                    .get(&subnet)
                    .await
                    .map_err(api("reading the shared subnet"))?
                    .is_none()
                {
                    arm.put(
                        &subnet,
                        &json!({"properties": {"addressPrefix": SUBNET_PREFIX}}),
                    )
                    .await
                    .map_err(api("creating the shared subnet"))?;
                }
            }
        }
        Ok::<_, ProviderError>(())
    };
    tokio::try_join!(nsg_write, vnet_write)?;
    Ok(Shared {
        subnet_id: subnet.path,
        nsg_id: nsg.path,
    })
}

/// The security group to write, or `None` when the existing one already
/// has an SSH rule for every port and range: other rules are kept,
/// crabbox's own are rewritten.
fn security_group(
    settings: &Settings,
    existing: Option<&Value>,
    cidrs: &[String],
    ports: &[u16],
) -> Option<Value> {
    let rules: Vec<Value> = existing
        .and_then(|e| e.pointer("/properties/securityRules"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let allows = |port: u16, cidr: &str| {
        rules.iter().any(|r| {
            let p = &r["properties"];
            r["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(RULE_PREFIX))
                && p["destinationPortRange"].as_str() == Some(&port.to_string())
                && p["sourceAddressPrefix"].as_str() == Some(cidr)
                && p["access"].as_str() == Some("Allow")
                && p["direction"].as_str() == Some("Inbound")
        })
    };
    if existing.is_some() && ports.iter().all(|p| cidrs.iter().all(|c| allows(*p, c))) {
        return None;
    }
    let mut kept: Vec<Value> = rules
        .into_iter()
        .filter(|r| {
            !r["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(RULE_PREFIX))
        })
        .map(|mut r| {
            // Read-only fields ARM would refuse back.
            if let Some(o) = r.as_object_mut() {
                o.remove("etag");
                o.remove("type");
            }
            r
        })
        .collect();
    let mut used: Vec<i64> = kept
        .iter()
        .filter_map(|r| r["properties"]["priority"].as_i64())
        .collect();
    for port in ports {
        for (j, cidr) in cidrs.iter().enumerate() {
            let priority = (100..=4096).find(|p| !used.contains(p)).unwrap_or(4096);
            used.push(priority);
            kept.push(json!({
                "name": format!("{RULE_PREFIX}{port}-{j}"),
                "properties": {
                    "protocol": "Tcp",
                    "access": "Allow",
                    "direction": "Inbound",
                    "priority": priority,
                    "sourceAddressPrefix": cidr,
                    "sourcePortRange": "*",
                    "destinationAddressPrefix": "*",
                    "destinationPortRange": port.to_string(),
                },
            }));
        }
    }
    // An adopted group keeps its own location and tags.
    let location = existing
        .and_then(|e| e["location"].as_str())
        .unwrap_or(&settings.location);
    let tags = existing.map_or_else(shared_tags, |e| e["tags"].clone());
    Some(json!({
        "location": location,
        "tags": tags,
        "properties": {"securityRules": kept},
    }))
}
