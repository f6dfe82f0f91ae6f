//! The bus against a real `nats-server -js` (see [`super::testing`]). Several [`Cluster`]s in
//! one process stand for several SP nodes: each has its own NATS connection, heartbeat and
//! watches, exactly as in separate processes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::testing::NatsServer;
use super::*;
use crate::util::lock;

/// Polls `check` every 20 ms until it holds; panics with `what` after `limit`. Returns how
/// long it took.
async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn node(server: &NatsServer, name: &str) -> Cluster {
    Cluster::connect(server.node_config(name))
        .await
        .unwrap_or_else(|e| panic!("node {name}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_seen_everywhere_and_a_takeover_ends_the_old_one() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let a = node(&server, "sp-a").await;
    let b = node(&server, "sp-b").await;
    let (snapshot, mut changes) = b.presence();
    assert!(snapshot.is_empty());

    // What the tenant said of itself travels with the claim, for the other nodes' lists.
    let live = OwnerLive {
        remote_addr: "192.0.2.7:50000".into(),
        agent_version: "test".into(),
        services: vec!["backup".into(), "rdp".into()],
        provider_access: true,
        since: 1_800_000_000,
    };
    let first = a
        .claim_with("acme.corp", Some(live.clone()))
        .await
        .expect("claim");
    assert_eq!(first.previous_owner, None);
    assert_eq!(first.replaced_revision, 0);
    assert!(!first.is_lost());
    assert!(a.holds("acme.corp", first.epoch));
    assert!(a.confirm(&first).await.expect("confirm"));
    // The claimer knows at once; the other node through its watch.
    assert_eq!(
        a.owner("acme.corp").map(|o| o.node),
        Some("sp-a".to_string())
    );
    eventually("b sees a as the owner", Duration::from_secs(10), || {
        b.owner("acme.corp")
            .is_some_and(|o| o.node == "sp-a" && o.epoch == first.epoch)
    })
    .await;
    let change = tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .expect("a presence change")
        .expect("open channel");
    assert_eq!(
        change,
        PresenceChange::Online(TenantOwner {
            tenant: "acme.corp".into(),
            node: "sp-a".into(),
            addr: "127.0.0.1:7000".into(),
            epoch: first.epoch,
            live: Some(live),
        })
    );

    // The tenant's control channel moves to b: b takes over, a's claim ends.
    let second = b.claim("acme.corp").await.expect("takeover");
    assert!(second.epoch > first.epoch);
    assert_eq!(second.replaced_revision, first.epoch.0);
    assert_eq!(second.previous_owner.as_deref(), Some("sp-a"));
    let notice = tokio::time::timeout(Duration::from_secs(10), first.lost())
        .await
        .map(|_| ())
        .is_ok();
    assert!(notice, "a never learned that it lost acme.corp");
    assert!(!a.holds("acme.corp", first.epoch));
    assert!(!a.confirm(&first).await.expect("confirm"));
    // A stale owner's release removes nothing.
    assert!(!a.release(first).await.expect("release"));
    eventually("a sees b as the owner", Duration::from_secs(10), || {
        a.owner("acme.corp").is_some_and(|o| o.node == "sp-b")
    })
    .await;

    // b's clean release takes the tenant offline everywhere.
    let second_epoch = second.epoch;
    assert!(b.release(second).await.expect("release"));
    eventually("acme.corp offline on a", Duration::from_secs(10), || {
        a.owner("acme.corp").is_none() && a.online().is_empty()
    })
    .await;
    // Claimable again after a release, by compare-and-set on the delete marker.
    let third = a.claim("acme.corp").await.expect("claim after release");
    assert!(
        third.replaced_revision > second_epoch.0,
        "made on the release's marker"
    );
    assert!(third.epoch.0 > third.replaced_revision);
    assert!(a.confirm(&third).await.expect("confirm"));
    assert!(a.claim("bad name!").await.is_err());
}

/// One successful claim, as the checker saw it.
struct Claimed {
    tenant: String,
    node: String,
    epoch: u64,
    replaced: u64,
    acked_at: Instant,
}

/// One owner action checked with `confirm`.
struct Confirmed {
    tenant: String,
    node: String,
    epoch: u64,
    started_at: Instant,
    ok: bool,
}

#[derive(Default)]
struct Checker {
    /// (tenant, epoch) → node, for every claim whose `lost` has not fired: what each node
    /// believes it owns right now.
    beliefs: Mutex<HashMap<(String, u64), String>>,
    claims: Mutex<Vec<Claimed>>,
    confirms: Mutex<Vec<Confirmed>>,
    /// (tenant, epoch) → when the claim's `lost` fired.
    lost_at: Mutex<HashMap<(String, u64), Instant>>,
    /// Releases that found the tenant already taken: (tenant, epoch).
    stale_releases: Mutex<Vec<(String, u64)>>,
    most_believers: Mutex<usize>,
}

impl Checker {
    fn claimed(&self, node: &str, claim: &Claim, acked_at: Instant) {
        let key = (claim.tenant.clone(), claim.epoch.0);
        {
            let mut beliefs = lock(&self.beliefs);
            if let Some(other) = beliefs.insert(key.clone(), node.to_string()) {
                panic!("{other} and {node} both believe they own {key:?}");
            }
            let believers = beliefs.keys().filter(|(t, _)| *t == claim.tenant).count();
            let mut most = lock(&self.most_believers);
            *most = (*most).max(believers);
        }
        lock(&self.claims).push(Claimed {
            tenant: claim.tenant.clone(),
            node: node.to_string(),
            epoch: claim.epoch.0,
            replaced: claim.replaced_revision,
            acked_at,
        });
    }

    fn lost(&self, tenant: String, epoch: u64) {
        lock(&self.beliefs).remove(&(tenant.clone(), epoch));
        lock(&self.lost_at).insert((tenant, epoch), Instant::now());
    }
}

/// Several nodes claim, confirm, keep and release the same few tenants concurrently over
/// many rounds; the checker proves what fencing promises:
/// - no (tenant, epoch) is ever believed by two nodes;
/// - the claims of a tenant form a chain: each was made on the state its predecessor left,
///   so no two claims ever won from the same state (the compare-and-set held);
/// - an owner action checked with `confirm` never succeeds once a newer claim has been
///   acknowledged: a stale owner cannot act;
/// - every replaced claim learns it was lost, within a bounded time (measured);
/// - at rest, each tenant has at most one believer, it is the bucket's owner, and every node
///   agrees on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_never_both_own_a_tenant() {
    const NODES: usize = 5;
    const TENANTS: [&str; 4] = ["t0", "t1", "t2.x", "t3"];
    const ROUNDS: usize = 60;
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let mut nodes = Vec::new();
    for i in 0..NODES {
        nodes.push(node(&server, &format!("n{i}")).await);
    }
    let checker = Arc::new(Checker::default());
    let started = Instant::now();
    let mut workers = Vec::new();
    for cluster in &nodes {
        let cluster = cluster.clone();
        let checker = checker.clone();
        workers.push(tokio::spawn(async move {
            let name = cluster.node().to_string();
            let mut kept: Vec<Claim> = Vec::new();
            let mut contended = 0;
            for _ in 0..ROUNDS {
                let tenant = TENANTS[rand::random_range(0..TENANTS.len())];
                let claim = match cluster.claim(tenant).await {
                    Ok(c) => c,
                    Err(BusError::Contended(_)) => {
                        contended += 1;
                        continue;
                    }
                    Err(e) => panic!("{name}: claim {tenant}: {e}"),
                };
                let acked_at = Instant::now();
                if claim.is_lost() {
                    // Overtaken before it was installed: never believed.
                    continue;
                }
                checker.claimed(&name, &claim, acked_at);
                let token = claim.lost_token();
                let (t, e, c) = (claim.tenant.clone(), claim.epoch.0, checker.clone());
                tokio::spawn(async move {
                    token.cancelled().await;
                    c.lost(t, e);
                });
                tokio::time::sleep(Duration::from_millis(rand::random_range(0..8))).await;
                let started_at = Instant::now();
                let ok = cluster.confirm(&claim).await.expect("confirm");
                lock(&checker.confirms).push(Confirmed {
                    tenant: claim.tenant.clone(),
                    node: name.clone(),
                    epoch: claim.epoch.0,
                    started_at,
                    ok,
                });
                if rand::random_bool(0.5) {
                    let (t, e) = (claim.tenant.clone(), claim.epoch.0);
                    if !cluster.release(claim).await.expect("release") {
                        lock(&checker.stale_releases).push((t, e));
                    }
                } else {
                    kept.push(claim);
                }
                kept.retain(|c| !c.is_lost());
            }
            (kept, contended)
        }));
    }
    let mut kept = Vec::new();
    let mut contended = 0;
    for w in workers {
        let (k, c) = w.await.expect("worker");
        kept.extend(k);
        contended += c;
    }
    let run = started.elapsed();

    let claims = std::mem::take(&mut *lock(&checker.claims));
    let confirms = std::mem::take(&mut *lock(&checker.confirms));
    assert!(
        claims.len() > NODES * ROUNDS / 2,
        "too few claims won: {}",
        claims.len()
    );

    // The chain, per tenant, in epoch order.
    let mut by_tenant: HashMap<&str, Vec<&Claimed>> = HashMap::new();
    for c in &claims {
        by_tenant.entry(&c.tenant).or_default().push(c);
    }
    for (tenant, list) in by_tenant.iter_mut() {
        list.sort_by_key(|c| c.epoch);
        for pair in list.windows(2) {
            let (before, after) = (pair[0], pair[1]);
            assert!(
                after.replaced >= before.epoch,
                "{tenant}: the claim at {} by {} was made on revision {}, older than the claim at {} by {}: two claims won from one state",
                after.epoch,
                after.node,
                after.replaced,
                before.epoch,
                before.node
            );
        }
    }

    // Fenced actions: a confirm that succeeded started before any newer claim was acked.
    let mut confirmed_ok = 0;
    for f in confirms.iter().filter(|f| f.ok) {
        confirmed_ok += 1;
        let newer = by_tenant[f.tenant.as_str()]
            .iter()
            .find(|c| c.epoch > f.epoch && c.acked_at < f.started_at);
        if let Some(newer) = newer {
            panic!(
                "{} confirmed {} at epoch {} after {} had claimed it at {}",
                f.node, f.tenant, f.epoch, newer.node, newer.epoch
            );
        }
    }
    for (t, e) in lock(&checker.stale_releases).iter() {
        assert!(
            by_tenant[t.as_str()].iter().any(|c| c.epoch > *e),
            "the release of {t} at {e} failed with no newer claim"
        );
    }

    // Every replaced claim hears of it; the notice's delay is measured from the newer claim's
    // acknowledgement.
    let mut worst_notice = Duration::ZERO;
    for list in by_tenant.values() {
        for pair in list.windows(2) {
            let (old, new) = (pair[0], pair[1]);
            let key = (old.tenant.clone(), old.epoch);
            let limit = Duration::from_secs(10);
            eventually("a replaced claim's lost notice", limit, || {
                lock(&checker.lost_at).contains_key(&key)
            })
            .await;
            let fired = lock(&checker.lost_at)[&key];
            worst_notice = worst_notice.max(fired.saturating_duration_since(new.acked_at));
        }
    }

    // At rest: one believer per tenant at most, the bucket's owner, and every node agrees.
    for tenant in TENANTS {
        let believers: Vec<(u64, String)> = lock(&checker.beliefs)
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, e), n)| (*e, n.clone()))
            .collect();
        assert!(
            believers.len() <= 1,
            "{tenant}: several believers at rest: {believers:?}"
        );
        let holder = kept.iter().find(|c| c.tenant == tenant && !c.is_lost());
        match (believers.first(), holder) {
            (Some((epoch, node_name)), Some(claim)) => {
                assert_eq!(claim.epoch.0, *epoch);
                let owner = nodes.iter().find(|n| n.node() == node_name).expect("node");
                assert!(
                    owner.confirm(claim).await.expect("confirm"),
                    "{tenant}: the believer is not the bucket's owner"
                );
                eventually(
                    "every node agrees on the owner",
                    Duration::from_secs(10),
                    || {
                        nodes.iter().all(|n| {
                            n.owner(tenant)
                                .is_some_and(|o| o.node == *node_name && o.epoch.0 == *epoch)
                        })
                    },
                )
                .await;
            }
            (None, None) => {
                eventually(
                    "every node sees the tenant offline",
                    Duration::from_secs(10),
                    || nodes.iter().all(|n| n.owner(tenant).is_none()),
                )
                .await;
            }
            (b, h) => panic!(
                "{tenant}: believer {b:?} but kept claim {:?}",
                h.map(|c| c.epoch)
            ),
        }
    }
    println!(
        "{} claims won ({} contended out) by {NODES} nodes over {} tenants in {run:?}; {} owner actions confirmed; \
         at most {} nodes believed in one tenant at once (older epochs awaiting their notice); \
         slowest lost notice {worst_notice:?}",
        claims.len(),
        contended,
        TENANTS.len(),
        confirmed_ok,
        *lock(&checker.most_believers),
    );
    assert!(
        worst_notice < Duration::from_secs(5),
        "lost notice took {worst_notice:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_dead_within_bounds_and_its_tenants_move() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let a = node(&server, "sp-a").await;
    let b = node(&server, "sp-b").await;
    let claim = a.claim("acme").await.expect("claim");
    eventually("b sees a's tenant", Duration::from_secs(10), || {
        b.owner("acme").is_some_and(|o| o.node == "sp-a")
    })
    .await;
    assert!(b.is_alive("sp-a"));
    let listed: Vec<String> = b.nodes().into_iter().map(|n| n.name).collect();
    assert_eq!(listed, ["sp-a", "sp-b"]);

    // a stops without a word (its heartbeat stops, as with kill -9).
    drop(claim);
    drop(a);
    let dead_after = server.node_config("x").dead_after;
    let took = eventually(
        "b counts a dead",
        dead_after + Duration::from_secs(10),
        || !b.is_alive("sp-a"),
    )
    .await;
    println!("a silent node was counted dead after {took:?} (dead_after {dead_after:?})");
    assert!(
        took >= dead_after - Duration::from_millis(500),
        "dead too early: {took:?}"
    );
    assert!(
        b.owner("acme").is_none(),
        "a dead node's tenant still shows online"
    );
    assert!(b.online().is_empty());

    // The tenant reconnects to b, which takes it over.
    let moved = b.claim("acme").await.expect("takeover");
    assert_eq!(moved.previous_owner.as_deref(), Some("sp-a"));
    assert_eq!(b.owner("acme").map(|o| o.node), Some("sp-b".to_string()));

    // A node restarted under the same name does not inherit its old entries.
    let c = node(&server, "sp-c").await;
    let ghost = c.claim("ghost").await.expect("claim");
    eventually("b sees c's tenant", Duration::from_secs(10), || {
        b.owner("ghost").is_some()
    })
    .await;
    drop(ghost);
    drop(c);
    let c_again = node(&server, "sp-c").await;
    eventually("b sees the new c alive", Duration::from_secs(10), || {
        b.is_alive("sp-c")
    })
    .await;
    eventually(
        "the old c's tenant is offline",
        Duration::from_secs(10),
        || b.owner("ghost").is_none(),
    )
    .await;

    // A clean exit: the others see the node gone and its tenants released at once.
    let held = c_again.claim("kept").await.expect("claim");
    eventually("b sees c's new tenant", Duration::from_secs(10), || {
        b.owner("kept").is_some()
    })
    .await;
    let left_at = Instant::now();
    c_again.leave().await.expect("leave");
    assert!(held.is_lost());
    let took = eventually("b sees c leave", Duration::from_secs(10), || {
        !b.nodes().iter().any(|n| n.name == "sp-c") && b.owner("kept").is_none()
    })
    .await;
    println!("a node that left was gone from the others' view after {took:?}");
    assert!(
        left_at.elapsed() < dead_after,
        "leaving waited for the dead-node timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_owner_and_fail_clearly_otherwise() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let a = node(&server, "sp-a").await;
    let b = node(&server, "sp-b").await;
    let c = node(&server, "sp-c").await;
    let timeout = Duration::from_secs(2);

    assert_eq!(
        a.open_on_owner(ask("nobody", "backup", "s0"), timeout)
            .await,
        Err(RequestError::TenantOffline("nobody".into()))
    );

    // b owns acme and serves requests: it answers what its handler says.
    let claim = b.claim("acme").await.expect("claim");
    let mut requests = b.serve_open_requests(16).await.expect("serve");
    let handler = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(incoming) = requests.next().await {
            seen.push(incoming.request.clone());
            let reply = if incoming.request.service == "backup" {
                OpenDataReply::Accepted {
                    client_hello_sent: incoming.request.client_hello.is_some(),
                }
            } else {
                OpenDataReply::Refused {
                    reason: "service not offered".into(),
                }
            };
            incoming.respond(reply).await.expect("respond");
            if seen.len() == 2 {
                return seen;
            }
        }
        seen
    });
    eventually("a sees b own acme", Duration::from_secs(10), || {
        a.owner("acme").is_some()
    })
    .await;
    // The console's ClientHello sent ahead travels with the request.
    let first = OpenData {
        client_hello: Some("1603010004aabbccdd".into()),
        ..ask("acme", "backup", "s1")
    };
    let (owner, reply) = a.open_on_owner(first, timeout).await.expect("request");
    assert_eq!((owner.node.as_str(), owner.epoch), ("sp-b", claim.epoch));
    assert_eq!(
        reply,
        OpenDataReply::Accepted {
            client_hello_sent: true
        }
    );
    let (_, reply) = a
        .open_on_owner(ask("acme", "rdp", "s2"), timeout)
        .await
        .expect("request");
    assert_eq!(
        reply,
        OpenDataReply::Refused {
            reason: "service not offered".into()
        }
    );
    let seen = handler.await.expect("handler");
    assert_eq!(seen[0].session_id, "s1");
    assert_eq!(seen[0].client_hello.as_deref(), Some("1603010004aabbccdd"));
    assert_eq!(seen[0].from_node, "sp-a");
    assert_eq!(seen[0].epoch, claim.epoch);

    // A request routed by a stale epoch is refused by the module itself.
    let mut requests = b.serve_open_requests(16).await.expect("serve again");
    let stale = OpenData {
        tenant: "acme".into(),
        epoch: Epoch(claim.epoch.0 - 1),
        session_id: "s3".into(),
        service: "backup".into(),
        from_node: "sp-a".into(),
        nonce: String::new(),
        grant: None,
        client_hello: None,
    };
    assert_eq!(
        a.request_open("sp-b", &stale, timeout).await,
        Ok(OpenDataReply::NotOwner)
    );

    // An owner that takes the request and never answers: a timeout that names it.
    let (_, held) = tokio::join!(
        async {
            let asked = Instant::now();
            let r = a.open_on_owner(ask("acme", "backup", "s4"), timeout).await;
            assert_eq!(
                r,
                Err(RequestError::TimedOut {
                    node: "sp-b".into(),
                    after: timeout
                })
            );
            assert!(asked.elapsed() >= timeout);
        },
        async { requests.next().await }
    );
    assert!(held.is_some());

    // An owner that does not serve at all: no responder, at once rather than at the timeout.
    c.claim("beta").await.map(drop).expect("claim");
    eventually("a sees c own beta", Duration::from_secs(10), || {
        a.owner("beta").is_some()
    })
    .await;
    let asked = Instant::now();
    assert_eq!(
        a.open_on_owner(ask("beta", "backup", "s5"), Duration::from_secs(20))
            .await,
        Err(RequestError::NoResponder("sp-c".into()))
    );
    println!(
        "a request to a node that serves nothing failed after {:?}",
        asked.elapsed()
    );
    assert!(asked.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_changes_reach_every_node_within_a_second() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let mut nodes = Vec::new();
    for name in ["sp-a", "sp-b", "sp-c"] {
        nodes.push(node(&server, name).await);
    }
    let mut subs = Vec::new();
    for n in &nodes {
        subs.push(n.account_changes().await.expect("subscribe"));
    }
    let changes = [
        AccountChange::Tenant {
            name: "acme".into(),
        },
        AccountChange::Operator {
            name: "alice".into(),
        },
        AccountChange::All,
    ];
    let mut worst = Duration::ZERO;
    for (i, change) in changes.iter().enumerate() {
        let sender = &nodes[i % nodes.len()];
        let sent = Instant::now();
        sender
            .publish_account_change(change.clone())
            .await
            .expect("publish");
        for sub in subs.iter_mut() {
            let event = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .expect("the change arrived")
                .expect("subscription open");
            worst = worst.max(sent.elapsed());
            assert_eq!(&event.change, change);
            assert_eq!(event.origin, sender.node());
        }
    }
    println!("an account change reached all 3 nodes within {worst:?} (the bound is 1 s)");
    assert!(worst < Duration::from_secs(2), "slowest delivery {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_nats_is_reported_and_survived() {
    let Some(mut server) = NatsServer::start().await else {
        return;
    };
    let a = node(&server, "sp-a").await;
    let b = node(&server, "sp-b").await;
    assert_eq!(a.ready(), Ok(()));
    let held = a.claim("acme").await.expect("claim");
    let mut connection = a.connection();
    assert!(connection.borrow().connected);

    server.kill();
    let took = eventually("a says it is not ready", Duration::from_secs(20), || {
        a.ready().is_err()
    })
    .await;
    println!("a reported the lost NATS after {took:?}: {:?}", a.ready());
    // `ready` reads the client's state; the watch hears of it from the client's events, a
    // moment later.
    eventually(
        "the connection watch says disconnected",
        Duration::from_secs(20),
        || !connection.borrow_and_update().connected,
    )
    .await;
    assert!(
        a.claim("beta").await.is_err(),
        "a claim succeeded without NATS"
    );

    server.restart().await;
    let took = eventually("a is ready again", Duration::from_secs(30), || {
        a.ready().is_ok()
    })
    .await;
    println!("a was ready again {took:?} after NATS restarted");
    assert!(connection.borrow().connected);
    assert!(connection.borrow().reconnects >= 1);
    eventually("b is ready again", Duration::from_secs(30), || {
        b.ready().is_ok()
    })
    .await;

    // The watches resumed: b's takeover reaches a, which loses its claim made before.
    let moved = b.claim("acme").await.expect("claim after the restart");
    let notice = tokio::time::timeout(Duration::from_secs(15), held.lost()).await;
    assert!(
        notice.is_ok(),
        "a's claim from before the outage never learned of b's takeover"
    );
    eventually("a sees b own acme", Duration::from_secs(15), || {
        a.owner("acme")
            .is_some_and(|o| o.node == "sp-b" && o.epoch == moved.epoch)
    })
    .await;
    // And the bus carries requests and broadcasts again.
    let mut subs = b.account_changes().await.expect("subscribe");
    a.publish_account_change(AccountChange::All)
        .await
        .expect("publish");
    let event = tokio::time::timeout(Duration::from_secs(10), subs.next()).await;
    assert!(matches!(
        event,
        Ok(Some(AccountEvent {
            change: AccountChange::All,
            ..
        }))
    ));
}

/// A request to open `session_id` on `tenant`'s owner (epoch and node filled in on the way).
fn ask(tenant: &str, service: &str, session_id: &str) -> OpenData {
    OpenData {
        tenant: tenant.into(),
        epoch: Epoch(0),
        session_id: session_id.into(),
        service: service.into(),
        from_node: String::new(),
        nonce: String::new(),
        grant: None,
        client_hello: None,
    }
}
