//! The pond's ACL rows on a tailnet (`crabbox_providers::tailnet`) against
//! the fake Tailscale API (`fake_tailscale.rs`), and that fake driven by
//! Tailscale's published Python client, so it answers as the real API does.

use std::collections::HashMap;

use crabbox_providers::tailnet::Settings;
use crabbox_providers::tailnet::api::{Ensured, TailnetApi, TailnetError, ensure_pond_rows};
use crabbox_providers::tailnet::policy;

use crate::fake_tailscale::{API_KEY, FakeTailscale, etag_of};

const TAG: &str = "tag:cbx-pond-xyuoqa6-alpha";

/// A policy in the grants shape, with comments and trailing commas.
const GRANTS_POLICY: &str = r#"{
  // Our groups.
  "groups": { "group:dev": ["dev@example.com"] },
  "tagOwners": {
    "tag:ci": ["group:dev"], // CI runners
  },
  "grants": [
    { "src": ["group:dev"], "dst": ["tag:ci"], "ip": ["*"] },
  ],
}
"#;

fn api(fake: &FakeTailscale, key: &str) -> TailnetApi {
    let env: HashMap<String, String> = [
        ("CRABBOX_TS_API_URL", fake.url.as_str()),
        ("TS_API_KEY", key),
        ("CRABBOX_POND_ACL_BOOTSTRAP", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    TailnetApi::new(&Settings::from_env(&env)).expect("a key is set")
}

/// (method, status) of every policy request, in order.
fn policy_calls(fake: &FakeTailscale) -> Vec<(String, u16)> {
    fake.log
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/acl"))
        .map(|r| (r.method, r.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rows_are_added_once_with_if_match_and_the_users_comments_kept() {
    let fake = FakeTailscale::start(GRANTS_POLICY).await;
    let api = api(&fake, API_KEY);
    assert_eq!(ensure_pond_rows(&api, TAG).await, Ok(Ensured::Added));
    let written = fake.policy();
    assert!(
        policy::rows(&written, TAG).expect("reads").complete(),
        "{written}"
    );
    for kept in [
        "// Our groups.",
        "// CI runners",
        r#""group:dev": ["dev@example.com"]"#,
    ] {
        assert!(written.contains(kept), "{kept}:\n{written}");
    }
    // The write carried the ETag of what was read.
    let post = fake
        .log
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .expect("a write");
    assert_eq!(
        post.header("if-match"),
        Some(etag_of(GRANTS_POLICY).as_str())
    );
    assert_eq!(post.header("content-type"), Some("application/hujson"));
    assert!(
        post.header("authorization")
            .is_some_and(|a| a.starts_with("Basic ")),
        "the key goes as HTTP Basic user, as Crabbox sends it"
    );

    // A second run reads and writes nothing.
    fake.log.clear();
    assert_eq!(ensure_pond_rows(&api, TAG).await, Ok(Ensured::Present));
    assert_eq!(policy_calls(&fake), [("GET".to_owned(), 200)]);
    assert_eq!(fake.policy(), written);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrent_edit_is_read_again_once_then_the_conflict_is_final() {
    // Edited behind our back once: the second attempt goes through and
    // keeps the other writer's edit.
    let fake = FakeTailscale::start(GRANTS_POLICY).await;
    fake.edit_policy_after_reads(1);
    assert_eq!(
        ensure_pond_rows(&api(&fake, API_KEY), TAG).await,
        Ok(Ensured::Added)
    );
    assert_eq!(
        policy_calls(&fake),
        [
            ("GET".to_owned(), 200),
            ("POST".to_owned(), 412),
            ("GET".to_owned(), 200),
            ("POST".to_owned(), 200),
        ]
    );
    let written = fake.policy();
    assert!(
        written.starts_with("// edited by someone else\n"),
        "{written}"
    );
    assert!(policy::rows(&written, TAG).expect("reads").complete());

    // Edited every time: two attempts, then a clear error, and the
    // policy is the other writer's.
    let fake = FakeTailscale::start(GRANTS_POLICY).await;
    fake.edit_policy_after_reads(usize::MAX);
    let err = ensure_pond_rows(&api(&fake, API_KEY), TAG)
        .await
        .expect_err("the conflict persists");
    assert!(matches!(err, TailnetError::Conflict(_)), "{err:?}");
    assert!(err.to_string().contains("after 2 attempts"), "{err}");
    assert_eq!(fake.log.count("POST", "/api/v2/tailnet/-/acl"), 2);
    assert!(!policy::rows(&fake.policy(), TAG).expect("reads").owner);
}

#[tokio::test(flavor = "multi_thread")]
async fn headscale_a_wrong_key_and_an_uneditable_policy_are_told_apart() {
    let fake = FakeTailscale::start(GRANTS_POLICY).await;
    fake.without_policy_api();
    let err = ensure_pond_rows(&api(&fake, API_KEY), TAG)
        .await
        .expect_err("no policy API");
    assert!(matches!(err, TailnetError::Unavailable(_)), "{err:?}");

    let fake = FakeTailscale::start(GRANTS_POLICY).await;
    let err = ensure_pond_rows(&api(&fake, "tskey-api-wrong"), TAG)
        .await
        .expect_err("refused");
    assert!(matches!(err, TailnetError::Credentials(_)), "{err:?}");
    assert!(err.to_string().contains("API token invalid"), "{err}");
    assert!(!err.to_string().contains("tskey-api-wrong"), "{err}");

    let fake = FakeTailscale::start(r#"{"grants": {"not": "an array"}}"#).await;
    let err = ensure_pond_rows(&api(&fake, API_KEY), TAG)
        .await
        .expect_err("uneditable");
    assert!(matches!(err, TailnetError::Policy(_)), "{err:?}");
    assert_eq!(fake.log.count("POST", "/"), 0, "nothing was written");
}

/// Tailscale's Python client (`tailscale` on PyPI) against the fake: the
/// policy file with its ETag, a write with `If-Match` and a stale one
/// refused, the devices list, a device deleted and an auth key — each parsed by the client's
/// own models. The client's URL is Tailscale's; its session sends each
/// request to the fake instead, unchanged otherwise.
#[test]
fn tailscale_s_python_client_speaks_to_the_fake() {
    let rt = crate::support::runtime();
    let fake = rt.block_on(FakeTailscale::start(GRANTS_POLICY));
    fake.add_device("crabbox-db", "100.64.0.7", &[TAG]);
    const SCRIPT: &str = r#"
import asyncio, sys
import aiohttp
from tailscale import Tailscale
from tailscale.exceptions import TailscaleError, TailscaleNotFoundError

FAKE = sys.argv[1]

class ToFake(aiohttp.ClientSession):
    def _request(self, method, url, *args, **kwargs):
        url = str(url).replace("https://api.tailscale.com", FAKE, 1)
        return super()._request(method, url, *args, **kwargs)

async def main():
    async with ToFake() as session:
        ts = Tailscale(tailnet="-", api_key=sys.argv[2], session=session)
        policy = await ts.policy_file()
        assert "// Our groups." in policy.policy, policy.policy
        assert policy.etag, "an ETag"
        changed = policy.policy.replace("// Our groups.", "// Our groups, renamed.")
        written = await ts.set_policy_file(changed, etag=policy.etag)
        assert written.policy == changed and written.etag != policy.etag
        try:
            await ts.set_policy_file(policy.policy, etag=policy.etag)
            raise SystemExit("a stale ETag was accepted")
        except TailscaleError as e:
            assert "invalid old hash" in str(e), e
        devices = await ts.devices()
        [device] = devices.values()
        assert device.hostname == "crabbox-db", device
        assert device.addresses[0] == "100.64.0.7", device
        assert device.tags == [sys.argv[3]], device
        key = await ts.create_key(ephemeral=True, preauthorized=True, tags=[sys.argv[3]], expiry_seconds=3600)
        assert key.key.startswith("tskey-auth-"), key
        assert key.capabilities.devices.create.tags == [sys.argv[3]], key
        assert key.capabilities.devices.create.ephemeral
        # A device leaves by its node ID; a second delete is a 404.
        await ts.delete_device(device.node_id)
        assert await ts.devices() == {}
        try:
            await ts.delete_device(device.node_id)
            raise SystemExit("a missing device was deleted")
        except TailscaleNotFoundError:
            pass
    print("ok")

asyncio.run(main())
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(&fake.url)
        .arg(API_KEY)
        .arg(TAG)
        .output()
        .expect("python3 runs (./scripts/test installs it and the `tailscale` client)");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "the Python client against the fake failed (./scripts/test installs `tailscale` from PyPI):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        fake.policy().contains("// Our groups, renamed."),
        "the client's write landed"
    );
    let key = &fake.keys()[0];
    assert_eq!(
        key["capabilities"]["devices"]["create"]["preauthorized"],
        true
    );
    assert!(
        fake.log
            .requests()
            .iter()
            .all(|r| r.header("authorization") == Some(&format!("Bearer {API_KEY}"))),
        "the client sends its key as a Bearer token"
    );
}

/// The hosts script a member's timer runs, here against a fixture of
/// `tailscale status --json` (a `tailscale` on PATH printing it): exactly
/// the peers carrying the pond's tag, by IPv4 and slug, in hosts.cbx and in
/// the managed block of the system hosts file, whose other lines stay; run
/// again, it changes nothing.
#[test]
fn the_hosts_script_writes_exactly_the_tagged_peers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let fixture = crate::support::root().join("tests/fixtures/tailscale/status.json");
    let fake = bin.join("tailscale");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\n[ \"$*\" = 'status --json' ] || exit 2\ncat '{}'\n",
            fixture.display()
        ),
    )
    .expect("fake tailscale");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("mode");
    let script = dir.path().join("crabbox-pond-hosts");
    std::fs::write(&script, crabbox_providers::tailnet::hosts::SCRIPT).expect("script");
    let (cbx, hosts) = (dir.path().join("hosts.cbx"), dir.path().join("hosts"));
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n# crabbox pond hosts begin\n100.64.9.9 stale.cbx\n# crabbox pond hosts end\n::1 ip6-localhost\n",
    )
    .expect("hosts");
    let run = || {
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = std::process::Command::new("sh")
            .arg(&script)
            .arg(TAG)
            .arg(&cbx)
            .arg(&hosts)
            .env("PATH", path)
            .output()
            .expect("sh runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            std::fs::read_to_string(&cbx).expect("hosts.cbx"),
            std::fs::read_to_string(&hosts).expect("hosts"),
        )
    };
    let (written, system) = run();
    // db (IPv4 listed second) and api (offline, still a member); not the
    // other pond's db, the untagged laptop, or the tagged peer without an
    // address; the node itself is not a peer.
    assert_eq!(
        written,
        "# managed by crabbox-pond-hosts; do not edit\n100.64.0.2 api.cbx\n100.64.0.1 db.cbx\n"
    );
    assert_eq!(
        system,
        "127.0.0.1 localhost\n::1 ip6-localhost\n# crabbox pond hosts begin\n100.64.0.2 api.cbx\n100.64.0.1 db.cbx\n# crabbox pond hosts end\n"
    );
    assert_eq!(run(), (written, system), "a second run changes nothing");

    // Without a running tailscale nothing is touched.
    std::fs::write(&fake, "#!/bin/sh\nexit 1\n").expect("failing tailscale");
    let before = std::fs::read_to_string(&hosts).expect("hosts");
    let (_, after) = run();
    assert_eq!(after, before);
}

/// A member's auth key is minted one-use, ephemeral, pre-authorized and
/// tagged; its address is found among the devices by hostname and the
/// pond's tag (another pond's device of the same name is not it).
#[tokio::test(flavor = "multi_thread")]
async fn auth_keys_are_minted_per_member_and_addresses_found_by_hostname_and_tag() {
    use crabbox_providers::tailnet::api::member_device;
    let fake = FakeTailscale::start("{}").await;
    let api = api(&fake, API_KEY);
    let key = api
        .mint_auth_key(
            &[TAG.to_owned()],
            "crabbox alpha/db",
            std::time::Duration::from_secs(600),
        )
        .await
        .expect("minted");
    assert!(key.0.starts_with("tskey-auth-"), "a Tailscale auth key");
    assert!(!format!("{key:?}").contains("tskey"), "never printed");
    let made = &fake.keys()[0];
    assert_eq!(
        made["capabilities"]["devices"]["create"],
        serde_json::json!({"reusable": false, "ephemeral": true, "preauthorized": true, "tags": [TAG]})
    );
    assert_eq!(made["expirySeconds"], 600);

    fake.add_device("crabbox-db", "100.64.0.3", &["tag:cbx-pond-xyuoqa6-beta"]);
    fake.add_device("crabbox-db", "100.64.0.7", &[TAG]);
    let devices = api.devices().await.expect("devices");
    let db = member_device(&devices, "crabbox-db", TAG).expect("db enrolled");
    assert_eq!(db.ipv4(), Some("100.64.0.7"));
    assert_eq!(db.name, "crabbox-db.tail0fake.ts.net");
    assert_eq!(member_device(&devices, "crabbox-api", TAG), None);
    // A replacement joins while its predecessor is still listed: the newest.
    fake.add_device("crabbox-db", "100.64.0.9", &[TAG]);
    let devices = api.devices().await.expect("devices");
    let db = member_device(&devices, "crabbox-db", TAG).expect("db enrolled");
    assert_eq!(db.ipv4(), Some("100.64.0.9"));
    assert_eq!(db.node_id, "nFAKE3CNTRL");

    let wrong = self::api(&fake, "tskey-api-wrong");
    let err = wrong.devices().await.expect_err("refused");
    assert!(matches!(err, TailnetError::Credentials(_)), "{err:?}");
}
