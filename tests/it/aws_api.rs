//! The EC2 calls (`crabbox_providers::aws::api`) against moto: tags in the
//! create call, discovery by tag over every page, relabel, terminate, key
//! pairs, the security group and the Ubuntu image lookup.

use crabbox_core::labels::Labels;
use crabbox_providers::aws::api::{Ec2, Launch, Market};

use crate::moto::{self, Moto};
use crate::moto_proxy::MotoProxy;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

/// A crabbox-tagged `t3.small` launch of `lease` in `pond`.
fn launch(group: &str, lease: &str, pond: &str, market: Market) -> Launch {
    moto::launch(
        group,
        lease,
        "t3.small",
        market,
        &[
            ("crabbox", "true"),
            ("pond", pond),
            ("lease", lease),
            ("slug", "db"),
            ("Name", "crabbox-db-0a1b2c3d"),
        ],
    )
}

/// A client of `moto`, and the security group instances launch into.
async fn client(moto: &Moto) -> (Ec2, String) {
    let ec2 = Ec2::new(&moto.sdk_config().await);
    let group = ec2
        .create_security_group(
            "crabbox-test",
            "instances of the test",
            None,
            &Labels::new(),
        )
        .await
        .expect("security group");
    (ec2, group)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_carries_every_tag_from_its_create_call_and_is_found_by_them() {
    let moto = Moto::start();
    let (ec2, group) = client(&moto).await;
    let spot = launch(&group, "cbx_0000000000a1", "p", Market::Spot);
    let made = ec2.run(&spot).await.expect("RunInstances");
    // The tags come from RunInstances itself: no CreateTags was made.
    for (k, v) in &spot.tags {
        assert_eq!(made.tags.get(k), Some(v), "{k} on {made:?}");
    }
    // A planted instance without our markers, and one of another pond.
    let mut foreign = launch(&group, "cbx_0000000000f1", "p", Market::OnDemand);
    foreign.tags = labels(&[("Name", "someone-elses")]);
    ec2.run(&foreign).await.expect("foreign instance");
    ec2.run(&launch(
        &group,
        "cbx_0000000000b1",
        "other",
        Market::OnDemand,
    ))
    .await
    .expect("other pond");
    let found = ec2
        .instances(&[
            ("tag:crabbox", &["true"]),
            ("tag:pond", &["p"]),
            (
                "instance-state-name",
                &crabbox_providers::aws::api::LIVE_STATES,
            ),
        ])
        .await
        .expect("DescribeInstances");
    assert_eq!(
        found.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [made.id.as_str()],
        "{found:?}"
    );
    assert_eq!(found[0].instance_type, "t3.small");
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_reads_every_page() {
    let moto = Moto::start();
    let proxy = MotoProxy::start(&moto.url).await;
    let (_, group) = client(&moto).await;
    let ec2 = Ec2::new(&proxy.sdk_config().await).with_page_size(5);
    // Twelve instances, five a page: three pages (moto pages by
    // reservation, one per RunInstances; EC2 by instance).
    let mut ids = Vec::new();
    for i in 0..12 {
        let made = ec2
            .run(&launch(
                &group,
                &format!("cbx_{i:012x}"),
                "paged",
                Market::OnDemand,
            ))
            .await
            .expect("RunInstances");
        ids.push(made.id);
    }
    let before = proxy.requests("DescribeInstances").len();
    let found = ec2
        .instances(&[("tag:pond", &["paged"])])
        .await
        .expect("DescribeInstances");
    let pages = proxy.requests("DescribeInstances");
    assert_eq!(pages.len() - before, 3, "three pages were asked for");
    assert!(
        pages[before..]
            .iter()
            .all(|p| p.params.get("MaxResults").map(String::as_str) == Some("5")),
        "{pages:?}"
    );
    let mut found: Vec<String> = found.into_iter().map(|i| i.id).collect();
    found.sort();
    ids.sort();
    assert_eq!(found, ids);
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_are_rewritten_and_an_instance_terminated_once_or_twice() {
    let moto = Moto::start();
    let (ec2, group) = client(&moto).await;
    let made = ec2
        .run(&launch(&group, "cbx_0000000000c1", "p", Market::OnDemand))
        .await
        .expect("RunInstances");
    ec2.tag(&made.id, &labels(&[("state", "ready"), ("slug", "db2")]))
        .await
        .expect("CreateTags");
    ec2.untag(&made.id, &["Name".to_owned()])
        .await
        .expect("DeleteTags");
    let now = ec2
        .instance(&made.id)
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!(now.tags.get("state").map(|v| v.as_str()), Some("ready"));
    assert_eq!(now.tags.get("slug").map(|v| v.as_str()), Some("db2"));
    assert!(!now.tags.contains_key("Name"), "{now:?}");
    ec2.terminate(&made.id).await.expect("TerminateInstances");
    ec2.terminate(&made.id)
        .await
        .expect("terminating again is done");
    let gone = ec2
        .instance(&made.id)
        .await
        .expect("describe")
        .expect("listed");
    assert!(gone.is_terminated(), "{gone:?}");
    // An ID EC2 never knew counts as gone.
    assert_eq!(ec2.instance("i-0123456789abcdef0").await, Ok(None));
    ec2.terminate("i-0123456789abcdef0")
        .await
        .expect("unknown is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn key_pairs_are_imported_tagged_and_deleted_by_name() {
    let moto = Moto::start();
    let (ec2, _) = client(&moto).await;
    let key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq1Xqz6nJm3b1Sx6wW0A0s6CkQW2n3S7wJkqvFh8pZ3 crabbox";
    let tags = labels(&[("crabbox", "true"), ("created_by", "crabbox")]);
    let id = ec2
        .import_key("crabbox-cbx-0000000000d1", key, &tags)
        .await
        .expect("ImportKeyPair");
    assert!(id.starts_with("key-"), "{id}");
    assert_eq!(
        ec2.key_tags("crabbox-cbx-0000000000d1").await,
        Ok(Some(tags.clone()))
    );
    let again = ec2
        .import_key("crabbox-cbx-0000000000d1", key, &tags)
        .await
        .expect_err("the name is taken");
    assert_eq!(again.code, "InvalidKeyPair.Duplicate", "{again:?}");
    ec2.delete_key("crabbox-cbx-0000000000d1")
        .await
        .expect("DeleteKeyPair");
    assert_eq!(ec2.key_tags("crabbox-cbx-0000000000d1").await, Ok(None));
    ec2.delete_key("crabbox-cbx-0000000000d1")
        .await
        .expect("a missing key is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_security_group_is_found_by_name_and_ssh_ranges_added_once() {
    let moto = Moto::start();
    let (ec2, _) = client(&moto).await;
    assert_eq!(ec2.security_group("crabbox-runners", None).await, Ok(None));
    let tags = labels(&[("crabbox", "true")]);
    let id = ec2
        .create_security_group("crabbox-runners", "crabbox SSH", None, &tags)
        .await
        .expect("CreateSecurityGroup");
    let cidrs = vec!["198.51.100.7/32".to_owned()];
    for port in [2222, 22] {
        ec2.allow_ssh(&id, port, &cidrs, "crabbox-pond SSH")
            .await
            .expect("ingress");
    }
    ec2.allow_ssh(&id, 22, &cidrs, "crabbox-pond SSH")
        .await
        .expect("the same range again is not an error");
    let group = ec2
        .security_group("crabbox-runners", None)
        .await
        .expect("describe")
        .expect("found");
    assert_eq!(group.id, id);
    assert_eq!(group.tags, tags);
    let mut ranges = group.tcp_ranges.clone();
    ranges.sort();
    assert_eq!(
        ranges,
        [(22, cidrs[0].clone()), (2222, cidrs[0].clone())],
        "one rule a port, each range once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_newest_canonical_image_of_the_architecture_is_chosen() {
    let moto = Moto::start();
    let (ec2, _) = client(&moto).await;
    let pattern = "ubuntu/images/hvm-ssd-gp3/ubuntu-resolute-26.04-*-server-*";
    assert_eq!(
        ec2.newest_image("099720109477", pattern, "x86_64").await,
        Ok(Some((
            "ami-0c0ffee000000026a".to_owned(),
            "/dev/sda1".to_owned()
        ))),
        "the newer of Canonical's two amd64 images, not a newer one of another owner"
    );
    assert_eq!(
        ec2.newest_image("099720109477", pattern, "arm64")
            .await
            .map(|i| i.map(|(id, _)| id)),
        Ok(Some("ami-0c0ffee000000026c".to_owned()))
    );
    assert_eq!(
        ec2.newest_image("099720109477", "ubuntu/images/*-noble-24.04-*", "x86_64")
            .await,
        Ok(None)
    );
}
