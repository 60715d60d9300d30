//! Peers: each live lease as the other members see it — how crabbox
//! reaches it (transports from what is known of the lease, the SSH address
//! even where Crabbox's document says `pending`), the
//! `CRABBOX_POND_<PEER>_<PORT>` environment given to run steps, and the
//! resolution of `{{peers.<slug>.<field>}}` references in member settings.
//! Each peer also carries the member Crabbox's `pond peers --json` prints
//! for it ([`crate::bridge`]).

use std::collections::{BTreeMap, BTreeSet};

use crabbox_core::lease::Lease;
use crabbox_core::provider::Features;
use crabbox_core::provider::ProviderName;

use crabbox_core::labels::Labels;

use crate::bridge::{BridgePeer, bridge_peer};

/// The endpoint of a peer that cannot be reached (yet).
pub const PENDING: &str = "pending";

/// Transport names, in Crabbox's order of preference.
pub mod transport {
    /// Reached over the tailnet (a `tailscale_ipv4` label).
    pub const TAILNET: &str = "tailnet";
    /// Reached through a provider URL.
    pub const URL: &str = "url";
    /// Reached over SSH.
    pub const SSH: &str = "ssh";
    /// A loopback address on this machine (the `local` provider).
    pub const LOCAL: &str = "local";
    /// No way to reach it.
    pub const NONE: &str = "none";
}

/// The label carrying a lease's tailnet address, once enrolled.
const TAILSCALE_IPV4: &str = "tailscale_ipv4";

/// Fields a `{{peers.<slug>.<field>}}` reference may name.
const REF_FIELDS: &str = "host, endpoint, lease_id, port";

/// A published URL for one port of a URL-bridge peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The member's port the URL leads to.
    pub port: u16,
    /// The URL peers use.
    pub url: String,
    /// When the share expires (RFC 3339).
    pub expires_at: String,
}

/// One member as its peers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The member's slug (the lease ID when the lease has no slug label).
    pub slug: String,
    /// Its lease ID.
    pub lease_id: String,
    /// The provider it lives on.
    pub provider: ProviderName,
    /// The pond.
    pub pond: String,
    /// The primary transport: the first of `transports`, or `none`.
    pub transport: &'static str,
    /// Every transport, in the order `tailnet`, `url`, `ssh`, `local`.
    pub transports: Vec<&'static str>,
    /// Where the primary transport reaches it: the loopback host for `local`,
    /// `ssh://host:port` for `ssh`, the URL for `url`, the tailnet address
    /// for `tailnet`; `pending` when it cannot be reached (yet).
    pub endpoint: String,
    /// The address peers dial (the tailnet address on the tailnet, else the
    /// local bind address or the SSH host).
    pub host: Option<String>,
    /// Exposed ports, from the `crabbox_exposed_ports` label.
    pub ports: Vec<u16>,
    /// Why the endpoint is `pending`, when it is.
    pub note: Option<String>,
    /// Published URLs, for URL-bridge peers.
    pub targets: Vec<Target>,
    /// The member as Crabbox's `pond peers --json` shows it.
    pub crabbox: BridgePeer,
}

/// The peers of `pond` from its live leases, sorted by slug, then lease ID.
/// `features` tells what each provider can do, which decides the transports.
///
/// `leases` may be borrowed or owned: owned leases are dropped one by one as
/// their peers are made, so that a pond's leases and its peers (each with a
/// copy of the lease's labels) are not all held at once.
#[must_use]
pub fn peers_from_leases<L: PeerSource>(
    pond: &str,
    leases: impl IntoIterator<Item = L>,
    features: impl Fn(ProviderName) -> Features,
) -> Vec<Peer> {
    let leases = leases.into_iter();
    // Room for every peer at once: a peer is large, and growing the vector
    // copied 10,000 of them several times over.
    let mut peers: Vec<Peer> = Vec::with_capacity(leases.size_hint().1.unwrap_or_default());
    peers.extend(leases.map(|l| {
        let provider = l.lease().provider;
        peer_from_lease(pond, l, features(provider))
    }));
    peers.sort_by(|a, b| {
        a.slug
            .cmp(&b.slug)
            .then_with(|| a.lease_id.cmp(&b.lease_id))
    });
    peers
}

/// A lease a peer is made from: borrowed (its labels are copied into the
/// peer), or owned — a lease projected only for its peer, whose labels are
/// moved (10,000 copies of a pond's labels at every plan otherwise).
pub trait PeerSource {
    /// The lease.
    fn lease(&self) -> &Lease;
    /// Its labels, for the peer to keep.
    fn into_labels(self) -> Labels;
}

impl PeerSource for &Lease {
    fn lease(&self) -> &Lease {
        self
    }

    fn into_labels(self) -> Labels {
        self.labels.clone()
    }
}

impl PeerSource for &std::sync::Arc<Lease> {
    fn lease(&self) -> &Lease {
        self
    }

    fn into_labels(self) -> Labels {
        self.labels.clone()
    }
}

impl PeerSource for Lease {
    fn lease(&self) -> &Lease {
        self
    }

    fn into_labels(self) -> Labels {
        self.labels
    }
}

fn peer_from_lease(pond: &str, source: impl PeerSource, features: Features) -> Peer {
    let mut peer = unlabelled_peer(pond, source.lease(), features);
    if features.labels {
        peer.crabbox.labels = source.into_labels();
    }
    peer
}

/// The peer of `lease`, its Crabbox member's labels left to the caller.
fn unlabelled_peer(pond: &str, lease: &Lease, features: Features) -> Peer {
    let slug = if lease.slug().is_empty() {
        lease.id.clone()
    } else {
        lease.slug().to_owned()
    };
    let url = lease
        .endpoint
        .url
        .as_deref()
        .or_else(|| lease.endpoint.shares.first().map(|s| s.url.as_str()))
        .filter(|u| !u.is_empty());
    let tailnet = lease.label(TAILSCALE_IPV4).filter(|v| !v.is_empty());

    let mut transports = Vec::new();
    if tailnet.is_some() {
        transports.push(transport::TAILNET);
    }
    if features.url_bridge && url.is_some() {
        transports.push(transport::URL);
    }
    if features.ssh {
        transports.push(transport::SSH);
    }
    if features.local {
        transports.push(transport::LOCAL);
    }
    let primary = transports.first().copied().unwrap_or(transport::NONE);
    // Peers reach a member on the tailnet at its tailnet address: that is
    // its host in the variables and in `<slug>.cbx`.
    let host = if primary == transport::TAILNET {
        tailnet.map(str::to_owned)
    } else {
        lease.endpoint.host.clone().filter(|h| !h.is_empty())
    };

    let pending = |note: String| (PENDING.to_owned(), Some(note));
    let (endpoint, note) = match (primary, &host) {
        (transport::TAILNET, _) => (tailnet.unwrap_or_default().to_owned(), None),
        (transport::URL, _) => (url.unwrap_or_default().to_owned(), None),
        (transport::SSH, Some(h)) => (
            format!(
                "ssh://{}:{}",
                bracket_v6(h),
                lease.endpoint.ssh_port.unwrap_or(22)
            ),
            None,
        ),
        (transport::SSH, None) => pending("no SSH address yet".to_owned()),
        (transport::LOCAL, Some(h)) => (h.clone(), None),
        (transport::LOCAL, None) => pending("no local address yet".to_owned()),
        _ => pending(format!(
            "no advertised pond transport for provider {}",
            lease.provider.as_str()
        )),
    };

    Peer {
        crabbox: bridge_peer(pond, lease, features),
        slug,
        lease_id: lease.id.clone(),
        provider: lease.provider,
        pond: pond.to_owned(),
        transport: primary,
        transports,
        endpoint,
        host,
        ports: lease.ports(),
        note,
        targets: lease
            .endpoint
            .shares
            .iter()
            .map(|s| Target {
                port: s.port,
                url: s.url.clone(),
                expires_at: s.expires_at.clone(),
            })
            .collect(),
    }
}

/// `[h]` for an IPv6 address, so that a port can follow; `h` otherwise.
fn bracket_v6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// `host:port`, bracketing IPv6 addresses.
fn host_port(host: &str, port: u16) -> String {
    format!("{}:{port}", bracket_v6(host))
}

/// The `<PEER>` part of the variable names: the slug uppercased, each
/// character outside `[A-Z0-9]` replaced by `_` (runs are not collapsed),
/// leading and trailing `_` trimmed.
fn env_peer(slug: &str) -> String {
    let mapped: String = slug
        .chars()
        .map(|c| {
            let u = c.to_ascii_uppercase();
            if u.is_ascii_uppercase() || u.is_ascii_digit() {
                u
            } else {
                '_'
            }
        })
        .collect();
    mapped.trim_matches('_').to_owned()
}

/// `CRABBOX_POND_<PEER>_<PORT>`, named as Crabbox's `pond connect` names it:
/// `<PEER>` is the slug uppercased, each character outside `[A-Z0-9]`
/// replaced by `_` (runs not collapsed), leading and trailing `_` trimmed.
#[must_use]
pub fn env_name(slug: &str, port: u16) -> String {
    port_var(&env_peer(slug), port)
}

/// [`env_name`] of a peer whose `<PEER>` part is known.
fn port_var(peer: &str, port: u16) -> String {
    format!("CRABBOX_POND_{peer}_{port}")
}

/// The variables that let members reach each other: `CRABBOX_POND=<pond>`,
/// `CRABBOX_POND_<PEER>_HOST=<host>` for every peer with an address, and
/// `CRABBOX_POND_<PEER>_<PORT>=<host>:<port>` for each of its exposed ports
/// (a URL-primary peer's published targets give their URL instead). When
/// two peers map to the same name, the first (by slug, then lease ID) wins.
#[must_use]
pub fn peer_env(pond: &str, peers: &[Peer]) -> BTreeMap<String, String> {
    // Gathered in the order that decides who wins, then sorted once: a pond
    // of 10,000 members has twice as many variables, and inserting each
    // into the map compared its long common prefix again and again.
    let mut env = vec![("CRABBOX_POND".to_owned(), pond.to_owned())];
    for peer in peers {
        let name = env_peer(&peer.slug);
        let mut covered = BTreeSet::new();
        if peer.transport == transport::URL {
            for target in &peer.targets {
                env.push((port_var(&name, target.port), target.url.clone()));
                covered.insert(target.port);
            }
        }
        if let Some(host) = &peer.host {
            env.push((format!("CRABBOX_POND_{name}_HOST"), host.clone()));
            for &port in peer.ports.iter().filter(|p| !covered.contains(*p)) {
                env.push((port_var(&name, port), host_port(host, port)));
            }
        }
    }
    // Stable: of the same name, the first given stays first and is kept.
    env.sort_by(|a, b| a.0.cmp(&b.0));
    env.dedup_by(|later, first| later.0 == first.0);
    env.into_iter().collect()
}

/// Replaces each `{{peers.<slug>.<field>}}` in `text` (whitespace inside the
/// braces allowed) with the peer's `host`, `endpoint`, `lease_id` or `port`
/// (its first exposed port). Other `{{…}}` are left as they are.
///
/// # Errors
/// A reference to a member that does not exist, a field that does not
/// exist, or a value the member does not have (yet): the message names the
/// reference and what exists.
pub fn resolve_refs(text: &str, peers: &[Peer]) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            break;
        };
        let end = start + 2 + len + 2;
        let whole = &rest[start..end];
        out.push_str(&rest[..start]);
        match rest[start + 2..end - 2].trim().strip_prefix("peers.") {
            Some(path) => out.push_str(&resolve_one(whole, path, peers)?),
            None => out.push_str(whole),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of one reference; `whole` is the reference as written.
fn resolve_one(whole: &str, path: &str, peers: &[Peer]) -> Result<String, String> {
    let Some((slug, field)) = path.rsplit_once('.') else {
        return Err(format!(
            "`{whole}`: expected `{{{{peers.<member>.<field>}}}}` with field one of {REF_FIELDS}"
        ));
    };
    let Some(peer) = peers.iter().find(|p| p.slug == slug) else {
        return Err(format!(
            "`{whole}`: no member `{slug}` in the pond ({})",
            members_list(peers)
        ));
    };
    let why = || {
        peer.note
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    };
    match field {
        "host" => peer
            .host
            .clone()
            .ok_or_else(|| format!("`{whole}`: member `{slug}` has no address yet{}", why())),
        "endpoint" if peer.endpoint == PENDING => Err(format!(
            "`{whole}`: member `{slug}` has no endpoint yet{}",
            why()
        )),
        "endpoint" => Ok(peer.endpoint.clone()),
        "lease_id" => Ok(peer.lease_id.clone()),
        "port" => peer
            .ports
            .first()
            .map(u16::to_string)
            .ok_or_else(|| format!("`{whole}`: member `{slug}` exposes no ports")),
        _ => Err(format!(
            "`{whole}`: unknown field `{field}` (fields: {REF_FIELDS})"
        )),
    }
}

/// `members: a, b` or `the pond has no members`.
fn members_list(peers: &[Peer]) -> String {
    let slugs: BTreeSet<&str> = peers.iter().map(|p| p.slug.as_str()).collect();
    if slugs.is_empty() {
        "the pond has no members".to_owned()
    } else {
        format!(
            "members: {}",
            slugs.into_iter().collect::<Vec<_>>().join(", ")
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crabbox_core::labels::{self, Labels};
    use crabbox_core::lease::Endpoint;

    /// A lease of `provider` with a slug, exposed ports and an endpoint.
    pub(crate) fn lease(
        id: &str,
        slug: &str,
        provider: ProviderName,
        ports: &str,
        endpoint: Endpoint,
    ) -> Lease {
        let mut l = Labels::new();
        l.insert(labels::LEASE.into(), id.into());
        l.insert(labels::PROVIDER.into(), provider.as_str().into());
        l.insert(labels::POND.into(), "demo".into());
        if !slug.is_empty() {
            l.insert(labels::SLUG.into(), slug.into());
        }
        if !ports.is_empty() {
            l.insert(labels::EXPOSED_PORTS.into(), ports.into());
        }
        Lease {
            id: id.to_owned(),
            provider,
            cloud_id: id.to_owned(),
            labels: l,
            endpoint,
            listed: true,
            claimed: false,
        }
    }

    /// Features as the real providers declare them.
    pub(crate) fn features(p: ProviderName) -> Features {
        crabbox_core::provider::features_of(p)
    }

    fn local(host: &str) -> Endpoint {
        Endpoint {
            host: Some(host.to_owned()),
            ..Endpoint::default()
        }
    }

    /// api (local, 8080), db (local, 5432), web (hetzner over ssh, 443-80).
    pub(crate) fn sample() -> Vec<Peer> {
        let leases = vec![
            lease(
                "cbx_00000000000c",
                "web",
                ProviderName::Hetzner,
                "443-80",
                Endpoint {
                    host: Some("203.0.113.7".to_owned()),
                    ssh_port: Some(2222),
                    url: None,
                    shares: Vec::new(),
                },
            ),
            lease(
                "cbx_00000000000a",
                "db",
                ProviderName::Local,
                "5432",
                local("127.77.3.9"),
            ),
            lease(
                "cbx_00000000000b",
                "api",
                ProviderName::Local,
                "8080",
                local("127.77.3.10"),
            ),
        ];
        peers_from_leases("demo", &leases, features)
    }

    #[test]
    fn env_names_follow_crabbox() {
        assert_eq!(env_name("api-v2", 8080), "CRABBOX_POND_API_V2_8080");
        assert_eq!(env_name("a..b", 1), "CRABBOX_POND_A__B_1");
        assert_eq!(env_name("-web-", 80), "CRABBOX_POND_WEB_80");
        assert_eq!(env_name("db", 5432), "CRABBOX_POND_DB_5432");
    }

    #[test]
    fn peers_are_sorted_and_keep_what_crabbox_uses() {
        let peers = sample();
        let order: Vec<&str> = peers.iter().map(|p| p.slug.as_str()).collect();
        assert_eq!(order, ["api", "db", "web"]);
        let db = &peers[1];
        assert_eq!(
            (db.transport, db.endpoint.as_str()),
            ("local", "127.77.3.9")
        );
        assert_eq!(db.transports, ["local"]);
        assert_eq!(db.host.as_deref(), Some("127.77.3.9"));
        assert_eq!(db.ports, vec![5432]);
        // What crabbox uses for env and references: the SSH address…
        let web = &peers[2];
        assert_eq!(web.transports, ["ssh"]);
        assert_eq!(web.endpoint, "ssh://203.0.113.7:2222");
        assert_eq!(web.ports, vec![80, 443]);
        // …while Crabbox's document says what Crabbox says: Hetzner is
        // tailnet-primary and pending without one (pond_bridge.go:541-560).
        assert_eq!(web.crabbox.transport, "pending");
        assert_eq!(web.crabbox.endpoint, "");
        assert_eq!(web.crabbox.transports, ["tailnet", "ssh"]);
    }

    #[test]
    fn same_slug_sorts_by_lease_id_and_empty_slug_uses_lease_id() {
        let leases = vec![
            lease(
                "cbx_000000000002",
                "db",
                ProviderName::Local,
                "",
                local("127.0.0.2"),
            ),
            lease(
                "cbx_000000000001",
                "db",
                ProviderName::Local,
                "",
                local("127.0.0.1"),
            ),
            lease(
                "cbx_000000000003",
                "",
                ProviderName::Local,
                "",
                local("127.0.0.3"),
            ),
        ];
        let peers = peers_from_leases("demo", &leases, features);
        let ids: Vec<(&str, &str)> = peers
            .iter()
            .map(|p| (p.slug.as_str(), p.lease_id.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                ("cbx_000000000003", "cbx_000000000003"),
                ("db", "cbx_000000000001"),
                ("db", "cbx_000000000002")
            ]
        );
    }

    /// A member on the tailnet is dialled at its tailnet address, not at
    /// its SSH address: in the variables and in `<slug>.cbx`.
    #[test]
    fn a_tailnet_member_is_reached_at_its_tailnet_address() {
        let mut db = lease(
            "cbx_000000000001",
            "db",
            ProviderName::Hetzner,
            "5432",
            Endpoint {
                host: Some("203.0.113.7".to_owned()),
                ssh_port: Some(2222),
                ..Endpoint::default()
            },
        );
        db.labels.insert(TAILSCALE_IPV4.into(), "100.64.0.7".into());
        let peers = peers_from_leases("demo", &[db], features);
        assert_eq!(peers[0].transport, "tailnet");
        assert_eq!(peers[0].host.as_deref(), Some("100.64.0.7"));
        let env = peer_env("demo", &peers);
        assert_eq!(env["CRABBOX_POND_DB_5432"], "100.64.0.7:5432");
        assert_eq!(env["CRABBOX_POND_DB_HOST"], "100.64.0.7");
    }

    /// `a-b` and `a_b` both name `CRABBOX_POND_A_B_*`: the first peer (by
    /// slug) keeps the names, whatever order the variables sort in.
    #[test]
    fn of_two_peers_with_one_variable_name_the_first_wins() {
        let member = |id: &str, slug: &str, host: &str| {
            lease(
                id,
                slug,
                ProviderName::Hetzner,
                "5432",
                Endpoint {
                    host: Some(host.to_owned()),
                    ssh_port: Some(22),
                    ..Endpoint::default()
                },
            )
        };
        let peers = peers_from_leases(
            "demo",
            &[
                member("cbx_000000000002", "a_b", "203.0.113.2"),
                member("cbx_000000000001", "a-b", "203.0.113.1"),
            ],
            features,
        );
        assert_eq!(peers[0].slug, "a-b");
        let env = peer_env("demo", &peers);
        assert_eq!(env["CRABBOX_POND_A_B_HOST"], "203.0.113.1");
        assert_eq!(env["CRABBOX_POND_A_B_5432"], "203.0.113.1:5432");
        assert_eq!(env.len(), 3, "{env:?}");
    }

    #[test]
    fn transports_and_pending_endpoints() {
        let mut tail = lease(
            "cbx_000000000001",
            "a",
            ProviderName::Hetzner,
            "",
            Endpoint::default(),
        );
        tail.labels
            .insert(TAILSCALE_IPV4.into(), "100.64.0.1".into());
        let leases = vec![
            tail,
            lease(
                "cbx_000000000002",
                "b",
                ProviderName::Hetzner,
                "",
                Endpoint::default(),
            ),
            lease(
                "cbx_000000000003",
                "c",
                ProviderName::E2b,
                "",
                Endpoint {
                    url: Some("https://c.example".to_owned()),
                    ..Endpoint::default()
                },
            ),
            lease(
                "cbx_000000000004",
                "d",
                ProviderName::E2b,
                "",
                Endpoint::default(),
            ),
            lease(
                "cbx_000000000005",
                "e",
                ProviderName::BlacksmithTestbox,
                "",
                Endpoint::default(),
            ),
            lease(
                "cbx_000000000006",
                "f",
                ProviderName::Aws,
                "",
                local("2001:db8::1"),
            ),
        ];
        let peers = peers_from_leases("demo", &leases, features);
        let view: Vec<(&str, Vec<&str>, &str, Option<&str>)> = peers
            .iter()
            .map(|p| {
                (
                    p.transport,
                    p.transports.clone(),
                    p.endpoint.as_str(),
                    p.note.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            view,
            [
                ("tailnet", vec!["tailnet", "ssh"], "100.64.0.1", None),
                ("ssh", vec!["ssh"], "pending", Some("no SSH address yet")),
                ("url", vec!["url"], "https://c.example", None),
                (
                    "none",
                    vec![],
                    "pending",
                    Some("no advertised pond transport for provider e2b")
                ),
                (
                    "none",
                    vec![],
                    "pending",
                    Some("no advertised pond transport for provider blacksmith-testbox")
                ),
                ("ssh", vec!["ssh"], "ssh://[2001:db8::1]:22", None),
            ]
        );
        assert_eq!(peers[1].note.as_deref(), Some("no SSH address yet"));
        assert!(peers[1].targets.is_empty());
    }

    #[test]
    fn peer_env_has_pond_hosts_ports_and_urls() {
        let mut peers = sample();
        let url_lease = lease(
            "cbx_00000000000d",
            "x",
            ProviderName::E2b,
            "3000",
            Endpoint {
                url: Some("https://x.example".to_owned()),
                ..Endpoint::default()
            },
        );
        let mut url_peer = peers_from_leases("demo", &[url_lease], features).remove(0);
        url_peer.targets.push(Target {
            port: 3000,
            url: "https://3000-x.example".to_owned(),
            expires_at: "0001-01-01T00:00:00Z".to_owned(),
        });
        peers.push(url_peer);
        let env = peer_env("demo", &peers);
        let expected: BTreeMap<String, String> = [
            ("CRABBOX_POND", "demo"),
            ("CRABBOX_POND_API_8080", "127.77.3.10:8080"),
            ("CRABBOX_POND_API_HOST", "127.77.3.10"),
            ("CRABBOX_POND_DB_5432", "127.77.3.9:5432"),
            ("CRABBOX_POND_DB_HOST", "127.77.3.9"),
            ("CRABBOX_POND_WEB_443", "203.0.113.7:443"),
            ("CRABBOX_POND_WEB_80", "203.0.113.7:80"),
            ("CRABBOX_POND_WEB_HOST", "203.0.113.7"),
            ("CRABBOX_POND_X_3000", "https://3000-x.example"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(env, expected);
    }

    #[test]
    fn resolve_refs_replaces_peer_fields() {
        let peers = sample();
        let text = "postgres://{{ peers.db.host }}:{{peers.db.port}}/app {{peers.web.endpoint}} {{peers.api.lease_id}}";
        assert_eq!(
            resolve_refs(text, &peers).expect("resolves"),
            "postgres://127.77.3.9:5432/app ssh://203.0.113.7:2222 cbx_00000000000b"
        );
        let untouched = "echo {{ other }} {{{x}}} {{ unterminated";
        assert_eq!(
            resolve_refs(untouched, &peers).expect("unchanged"),
            untouched
        );
        assert_eq!(resolve_refs("plain", &[]).expect("unchanged"), "plain");
    }

    #[test]
    fn resolve_refs_errors_name_the_reference() {
        let mut peers = sample();
        peers.truncate(2);
        let err = |t: &str| resolve_refs(t, &peers).expect_err(t);
        assert_eq!(
            err("{{peers.dbb.host}}"),
            "`{{peers.dbb.host}}`: no member `dbb` in the pond (members: api, db)"
        );
        assert_eq!(
            err("{{ peers.db.hots }}"),
            "`{{ peers.db.hots }}`: unknown field `hots` (fields: host, endpoint, lease_id, port)"
        );
        assert!(
            err("{{peers.db}}").contains("expected `{{peers.<member>.<field>}}`"),
            "{}",
            err("{{peers.db}}")
        );
        assert_eq!(
            resolve_refs("{{peers.x.host}}", &[]).expect_err("empty"),
            "`{{peers.x.host}}`: no member `x` in the pond (the pond has no members)"
        );

        let pending = lease(
            "cbx_000000000009",
            "box",
            ProviderName::Hetzner,
            "",
            Endpoint::default(),
        );
        let peers = peers_from_leases("demo", &[pending], features);
        assert_eq!(
            resolve_refs("{{peers.box.host}}", &peers).expect_err("no host"),
            "`{{peers.box.host}}`: member `box` has no address yet (no SSH address yet)"
        );
        assert_eq!(
            resolve_refs("{{peers.box.endpoint}}", &peers).expect_err("pending"),
            "`{{peers.box.endpoint}}`: member `box` has no endpoint yet (no SSH address yet)"
        );
        assert_eq!(
            resolve_refs("{{peers.box.port}}", &peers).expect_err("no ports"),
            "`{{peers.box.port}}`: member `box` exposes no ports"
        );
    }
}
