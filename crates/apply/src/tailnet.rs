//! The engine's half of the Tailscale plane, the same for every provider
//! whose servers join (the providers' half — labels, cloud-init, auth key —
//! is `crabbox_providers::tailnet::enroll`):
//!
//! - before the first create of an enrolled member, the pond's ACL rows,
//!   when the user opted in (`TS_API_KEY` and `CRABBOX_POND_ACL_BOOTSTRAP`);
//! - after each create, the member's tailnet address: what the node wrote
//!   about itself (`/var/lib/crabbox/tailscale-*`, read over its session,
//!   as Crabbox reads it), else the tailnet's device list (`TS_API_KEY`);
//!   recorded in the lease's labels (`tailscale_ipv4`, …) and its claim, so
//!   peers reach it over the tailnet. A node that reports a failed join, or
//!   no address in time, taints the member like a failed setup;
//! - `ready: { tailnet: true }`: the address is recorded and, with an API
//!   key, the tailnet lists the member's device at that address.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crabbox_core::labels::{self, LabelText, state};
use crabbox_core::lease::Lease;
use crabbox_core::pond_tag::pond_tag;
use crabbox_core::retry::with_retries;
use crabbox_exec::output::Collect;
use crabbox_exec::session::ExecRequest;
use crabbox_providers::tailnet::api::{self, Device, Ensured, TailnetApi, TailnetError};
use crabbox_providers::tailnet::enroll::{STATE_DIR, label, state as ts_state};
use crabbox_providers::tailnet::{Settings, policy};
use crabbox_state::claims::ClaimHead;

use crate::steps::{Context, StepError, fail, update_claim};

/// How long a new member may take to join when its `ready` check does not
/// say (installing Tailscale's package is most of it).
const JOIN_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Between looks at a joining member.
const JOIN_POLL: Duration = Duration::from_secs(2);
/// The `failure` label of a member that did not join.
const JOIN_FAILURE: &str = "tailscale_enrollment";

/// The pond's tag for this process's owner (Crabbox's rule).
fn tag_of(pond: &str) -> Option<String> {
    pond_tag(
        crabbox_providers::owner::owner().as_deref().unwrap_or(""),
        pond,
    )
}

/// The ACL bootstrap, once per command, before the first enrolled
/// member's create: a policy without the pond's rows gets them when the
/// user opted in. A control plane without Tailscale's policy API
/// (Headscale) does not stop the apply; `crabbox doctor --pond` then
/// prints the rows to add by hand.
///
/// # Errors
/// The API's refusal or a conflict that persisted: the member is not
/// created against a tailnet that would not carry its traffic.
pub(crate) async fn bootstrap_acl(ctx: &Context) -> Result<(), StepError> {
    let outcome = ctx
        .tailnet_acl
        .get_or_init(|| async {
            let settings = Settings::from_process();
            if !settings.bootstrap {
                return Ok(());
            }
            let (Some(api), Some(tag)) = (TailnetApi::new(&settings), tag_of(&ctx.pond)) else {
                return Ok(());
            };
            match api::ensure_pond_rows(&api, &tag).await {
                Ok(Ensured::Added) => {
                    ctx.reporter.message(
                        "info",
                        &format!("tailnet policy: added the rows of {tag} (tagOwners and self-peering)"),
                    );
                    Ok(())
                }
                Ok(Ensured::Present) => Ok(()),
                Err(TailnetError::Unavailable(why)) => {
                    ctx.reporter.message(
                        "warning",
                        &format!(
                            "tailnet policy not bootstrapped ({why}); add these rows by hand:\n{}",
                            policy::snippet(&tag)
                        ),
                    );
                    Ok(())
                }
                Err(e) => Err(format!(
                    "bootstrapping the tailnet policy for {tag}: {e}; fix the policy or unset CRABBOX_POND_ACL_BOOTSTRAP and add the rows by hand (`crabbox doctor --pond {}` prints them)",
                    ctx.pond
                )),
            }
        })
        .await;
    outcome.clone().map_err(fail)
}

/// What the node wrote about its tailnet membership.
#[derive(Debug, Default, PartialEq, Eq)]
struct NodeReport {
    ipv4: String,
    fqdn: String,
    device_id: String,
    error: String,
}

/// The script that prints each of the node's files as `name=first line`.
fn report_script() -> String {
    format!(
        "for f in tailscale-ipv4 tailscale-fqdn tailscale-device-id tailscale-error; do printf '%s=' \"$f\"; if [ -r {STATE_DIR}/\"$f\" ]; then head -n1 {STATE_DIR}/\"$f\"; else echo; fi; done"
    )
}

impl NodeReport {
    fn parse(lines: &[String]) -> Self {
        let mut report = Self::default();
        for line in lines {
            let Some((name, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim().to_owned();
            match name {
                "tailscale-ipv4" => report.ipv4 = value,
                "tailscale-fqdn" => report.fqdn = value,
                "tailscale-device-id" => report.device_id = value,
                "tailscale-error" => report.error = value,
                _ => {}
            }
        }
        report
    }
}

/// Reads the node's report over the lease's session.
async fn node_report(ctx: &Context, lease: &Lease) -> Result<NodeReport, StepError> {
    let provider = ctx.provider(lease.provider)?;
    let sink = Arc::new(Collect::default());
    let request = ExecRequest {
        command: report_script(),
        timeout: Some(Duration::from_secs(30)),
        ..ExecRequest::default()
    };
    provider
        .session(lease)
        .exec_unrecorded(&request, sink.clone())
        .await?;
    Ok(NodeReport::parse(&sink.take().0))
}

/// The member's device as the tailnet lists it: hostname and the pond's
/// tag, the most recently created one (an earlier lease of the same slug
/// may still be listed until its ephemeral node is removed).
async fn listed_device(
    api: &TailnetApi,
    lease: &Lease,
    tag: &str,
) -> Result<Option<Device>, String> {
    let Some(hostname) = lease.label(label::HOSTNAME) else {
        return Ok(None);
    };
    let devices = api.devices().await.map_err(|e| e.to_string())?;
    Ok(api::member_device(&devices, hostname, tag).cloned())
}

/// Waits until the new lease of `slug` has joined the tailnet and records
/// its address; a lease that did not ask is returned as it is.
///
/// # Errors
/// The node reported a failed join, or no address came in time: the member
/// is tainted (replaced by the next apply).
pub(crate) async fn join(ctx: &Context, slug: &str, lease: Lease) -> Result<Lease, StepError> {
    if lease.label(label::TAILSCALE) != Some("true")
        || lease.label(label::IPV4).is_some_and(|ip| !ip.is_empty())
    {
        return Ok(lease);
    }
    let m = ctx.member(slug)?;
    let limit = match &m.ready {
        Some(check) if check.tailnet => ctx
            .wait_timeout
            .map_or(check.timeout, |w| w.min(check.timeout)),
        _ => JOIN_TIMEOUT,
    };
    let api = TailnetApi::new(&Settings::from_process());
    let tag = tag_of(&ctx.pond).unwrap_or_default();
    let started = Instant::now();
    let mut last = String::from("no address reported yet");
    let found = loop {
        match node_report(ctx, &lease).await {
            Ok(report) if !report.error.is_empty() => break Err(report.error),
            Ok(report) if !report.ipv4.is_empty() => break Ok(report),
            Ok(_) => {}
            Err(e) => last = format!("reading the node's report: {}", e.message),
        }
        if let Some(api) = &api {
            match listed_device(api, &lease, &tag).await {
                Ok(Some(device)) => {
                    break Ok(NodeReport {
                        ipv4: device.ipv4().unwrap_or_default().to_owned(),
                        fqdn: device.name.clone(),
                        device_id: device.node_id.clone(),
                        error: String::new(),
                    });
                }
                Ok(None) => {
                    last = format!(
                        "the tailnet lists no device {} tagged {tag}",
                        lease.label(label::HOSTNAME).unwrap_or("?")
                    )
                }
                Err(e) => last = format!("listing the tailnet's devices: {e}"),
            }
        }
        if started.elapsed() + JOIN_POLL > limit {
            break Err(format!(
                "no tailnet address after {} ({last})",
                crabbox_core::duration::format(limit)
            ));
        }
        tokio::time::sleep(JOIN_POLL).await;
    };
    match found {
        Ok(report) => record(ctx, lease, &report).await,
        Err(why) => {
            taint(ctx, lease, &why).await;
            Err(fail(format!(
                "`{slug}` did not join the tailnet: {why}; it is tainted and the next apply replaces it"
            )))
        }
    }
}

/// Puts the address on the lease's resource and claim.
async fn record(ctx: &Context, lease: Lease, report: &NodeReport) -> Result<Lease, StepError> {
    let mut new = lease.labels.clone();
    new.insert(label::STATE.into(), ts_state::READY.into());
    new.insert(label::IPV4.into(), labels::sanitize(&report.ipv4));
    for (key, value) in [
        (label::FQDN, &report.fqdn),
        (label::DEVICE_ID, &report.device_id),
    ] {
        let value = value.trim_end_matches('.');
        if !value.is_empty() {
            new.insert(key.into(), labels::sanitize(value));
        }
    }
    let provider = ctx.provider(lease.provider)?;
    with_retries(|| provider.relabel(&lease, &new)).await?;
    // The claim keeps the address as the node gave it; the lease holds the
    // labels as the provider stored them with that address on top — what
    // the next discovery sees (see `address_from_claim`).
    let mut lease = Lease {
        labels: new,
        ..lease
    };
    update_claim(ctx, &lease).await?;
    let address: Vec<(LabelText, LabelText)> = [label::IPV4, label::FQDN]
        .into_iter()
        .filter_map(|k| lease.labels.get(k).map(|v| (k.into(), v.clone())))
        .collect();
    for value in lease.labels.values_mut() {
        *value = provider.stored_label(value).into();
    }
    lease.labels.extend(address);
    Ok(lease)
}

/// Marks the lease failed (a taint) with why it did not join.
async fn taint(ctx: &Context, lease: Lease, why: &str) {
    let mut new = lease.labels.clone();
    new.insert(labels::STATE.into(), state::FAILED.into());
    new.insert(labels::FAILURE.into(), JOIN_FAILURE.into());
    new.insert(label::STATE.into(), ts_state::FAILED.into());
    new.insert(label::ERROR.into(), labels::sanitize(why));
    let Ok(provider) = ctx.provider(lease.provider) else {
        return;
    };
    let lease = if with_retries(|| provider.relabel(&lease, &new))
        .await
        .is_ok()
    {
        Lease {
            labels: new,
            ..lease
        }
    } else {
        lease
    };
    let _ = update_claim(ctx, &lease).await;
    ctx.set_lease(lease);
}

/// `ready.tailnet`: the lease's address is recorded and, when an API key
/// is set, the tailnet lists its device there with the pond's tag.
pub(crate) async fn on_tailnet(ctx: &Context, lease: &Lease) -> Result<bool, String> {
    let Some(ipv4) = lease.label(label::IPV4).filter(|ip| !ip.is_empty()) else {
        return Ok(false);
    };
    let Some(api) = TailnetApi::new(&Settings::from_process()) else {
        return Ok(true);
    };
    let tag = tag_of(&ctx.pond).unwrap_or_default();
    Ok(listed_device(&api, lease, &tag)
        .await?
        .is_some_and(|d| d.ipv4() == Some(ipv4)))
}

/// Takes a released lease's device off the tailnet (with `TS_API_KEY`):
/// the device the lease recorded, and only while it carries the pond's
/// tag and the lease's hostname — never another device. Ephemeral nodes
/// (minted keys) leave by themselves once offline; a node that joined with
/// a reusable key would otherwise stay listed. Best effort: a failure is a
/// warning, the release goes on.
pub(crate) async fn leave(ctx: &Context, lease: &Lease) {
    let Some(recorded) = lease
        .label(label::DEVICE_ID)
        .filter(|id| !id.is_empty() && lease.label(label::TAILSCALE) == Some("true"))
    else {
        return;
    };
    let (Some(api), Some(tag), Some(hostname)) = (
        TailnetApi::new(&Settings::from_process()),
        tag_of(&ctx.pond),
        lease.label(label::HOSTNAME),
    ) else {
        return;
    };
    let removed = async {
        let devices = api.devices().await?;
        // The label may be lowercased by the provider (GCP).
        let Some(device) = devices.iter().find(|d| {
            d.node_id.eq_ignore_ascii_case(recorded)
                && d.hostname == hostname
                && d.tags.contains(&tag)
        }) else {
            return Ok(());
        };
        api.delete_device(&device.node_id).await
    }
    .await;
    if let Err(e) = removed {
        ctx.reporter.message(
            "warning",
            &format!(
                "{}: its tailnet device {recorded} was not removed: {e}",
                lease.id
            ),
        );
    }
}

/// The claim fields Crabbox keeps for a lease on the tailnet
/// (`tailscaleIPv4`, `tailscaleFQDN`, `tailscaleHostname`), from its
/// labels; empty for a lease that is not.
pub(crate) fn claim_fields(lease: &Lease) -> BTreeMap<&'static str, String> {
    [
        ("tailscaleIPv4", label::IPV4),
        ("tailscaleFQDN", label::FQDN),
        ("tailscaleHostname", label::HOSTNAME),
    ]
    .into_iter()
    .filter_map(|(field, key)| {
        lease
            .label(key)
            .filter(|v| !v.is_empty())
            .map(|v| (field, v.to_owned()))
    })
    .collect()
}

/// Puts the tailnet address the claim recorded on the listed lease: the
/// claim holds it as the node reported it, while a cloud's labels may have
/// mangled it (GCP allows no `.` in a label value). Crabbox reads the
/// claim's fields first too (`bridgePeerFromClaim`).
pub(crate) fn address_from_claim(lease: &mut Lease, claim: &ClaimHead) {
    for (field, key) in [
        ("tailscaleIPv4", label::IPV4),
        ("tailscaleFQDN", label::FQDN),
    ] {
        if let Some(value) = claim
            .extra(field)
            .and_then(serde_json::Value::as_str)
            .filter(|v| !v.is_empty())
        {
            lease.labels.insert(key.into(), value.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claim_s_address_wins_over_a_mangled_label() {
        let mut lease = Lease {
            id: "cbx_000000000001".to_owned(),
            provider: crabbox_core::provider::ProviderName::Gcp,
            cloud_id: "crabbox-db-000000000001".to_owned(),
            labels: crabbox_core::labels::Labels::new(),
            endpoint: crabbox_core::lease::Endpoint::default(),
            listed: true,
            claimed: true,
        };
        lease.labels.insert(label::IPV4.into(), "100_64_0_7".into());
        address_from_claim(&mut lease, &ClaimHead::default());
        assert_eq!(
            lease.label(label::IPV4),
            Some("100_64_0_7"),
            "no claim field, no change"
        );
        let claim = ClaimHead {
            extra: vec![
                (
                    "tailscaleFQDN".to_owned(),
                    "crabbox-db.tail0123.ts.net".into(),
                ),
                ("tailscaleIPv4".to_owned(), "100.64.0.7".into()),
            ],
            ..ClaimHead::default()
        };
        address_from_claim(&mut lease, &claim);
        assert_eq!(lease.label(label::IPV4), Some("100.64.0.7"));
        assert_eq!(lease.label(label::FQDN), Some("crabbox-db.tail0123.ts.net"));
    }

    #[test]
    fn the_node_report_is_read_line_by_line() {
        let lines: Vec<String> = [
            "tailscale-ipv4=100.64.0.7",
            "tailscale-fqdn=crabbox-db.tail0123.ts.net.",
            "tailscale-device-id=",
            "tailscale-error=",
            "noise",
        ]
        .map(str::to_owned)
        .to_vec();
        let r = NodeReport::parse(&lines);
        assert_eq!(r.ipv4, "100.64.0.7");
        assert_eq!(r.fqdn, "crabbox-db.tail0123.ts.net.");
        assert!(r.device_id.is_empty() && r.error.is_empty());
        let failed =
            NodeReport::parse(&["tailscale-error=joining the tailnet failed (exit 1)".to_owned()]);
        assert_eq!(failed.error, "joining the tailnet failed (exit 1)");
    }

    #[test]
    fn the_report_script_prints_every_file_even_when_missing() {
        let dir = std::env::temp_dir().join(format!("crabbox-node-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("tailscale-ipv4"), "100.64.0.9\nignored\n").expect("write");
        let script = report_script().replace(STATE_DIR, &dir.display().to_string());
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("sh");
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(
            lines,
            [
                "tailscale-ipv4=100.64.0.9",
                "tailscale-fqdn=",
                "tailscale-device-id=",
                "tailscale-error="
            ]
        );
        assert_eq!(NodeReport::parse(&lines).ipv4, "100.64.0.9");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
