//! The table's revision rules, and a randomized test in which subscribers that lose pushes,
//! fall behind, leave and come back all converge to the table's lists.

use std::collections::BTreeMap;

use stardust::discovery::api::{
    DiscoveryDelta, DiscoveryEvent, DiscoveryPush, Revision, WatchReply,
};

use super::*;

/// A tiny deterministic generator (xorshift64*): reproducible runs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const SERVICES: [&str; 2] = ["svc.A", "svc.B"];
const REQS: [&str; 3] = ["*", "^1", ">=1.5"];
const VERSIONS: [&str; 3] = ["1.0.0", "1.5.0", "2.0.0"];

fn instance(service: &str, endpoint: u64, version: &str, weight: u32, tag: u64) -> Instance {
    Instance {
        app: "app".into(),
        service: service.into(),
        version: version.into(),
        endpoint: format!("127.0.0.1:{}", 1000 + endpoint),
        weight,
        tags: [("t".to_owned(), tag.to_string())].into(),
        tls: false,
    }
}

fn lease(i: Instance, session: u64) -> Lease {
    let v = Version::parse(&i.version).unwrap();
    Lease::new(i, v, session)
}

/// A client's side of one subscription.
struct Client {
    id: u64,
    service: &'static str,
    req: &'static str,
    kind: Kind,
    view: BTreeMap<String, Instance>,
    at: Option<Revision>,
    joined: bool,
}

impl Client {
    fn watch(&mut self, table: &mut Table<u64>) {
        table.join(
            self.service,
            self.req,
            VersionReq::parse(self.req).unwrap(),
            self.id,
            self.id,
            self.kind,
        );
        self.joined = true;
        match self.kind {
            Kind::Delta => {
                let reply = table.answer(self.service, self.req, self.at);
                self.apply_reply(reply);
            }
            Kind::Full => {
                let req = VersionReq::parse(self.req).unwrap();
                self.view = table
                    .matching(self.service, &req)
                    .map(|l| (l.instance.endpoint.clone(), l.instance.clone()))
                    .collect();
            }
        }
    }

    fn apply_reply(&mut self, reply: WatchReply) {
        match reply {
            WatchReply::Unchanged { at } => assert_eq!(Some(at), self.at),
            WatchReply::Delta(d) => {
                assert_eq!(self.at.map(|a| a.rev), Some(d.from));
                self.apply_delta(d);
            }
            WatchReply::Snapshot { at, instances } => {
                self.view = instances
                    .decode()
                    .unwrap()
                    .into_iter()
                    .map(|i| (i.endpoint.clone(), i))
                    .collect();
                self.at = Some(at);
            }
        }
    }

    fn apply_delta(&mut self, d: DiscoveryDelta) {
        for e in d.removed {
            self.view.remove(&e);
        }
        for i in d.upserted {
            self.view.insert(i.endpoint.clone(), i);
        }
        self.at = Some(Revision {
            epoch: d.epoch,
            rev: d.to,
        });
    }

    /// A push arrived: applied if it continues the client's list, else the client asks again.
    fn receive(&mut self, table: &mut Table<u64>, job: &PushJob<u64>) {
        match self.kind {
            Kind::Full => {
                let event: DiscoveryEvent =
                    rmp_serde::from_slice(job.full.as_ref().expect("full payload")).unwrap();
                self.view = event
                    .instances
                    .into_iter()
                    .map(|i| (i.endpoint.clone(), i))
                    .collect();
            }
            Kind::Delta => {
                let push: DiscoveryPush =
                    rmp_serde::from_slice(job.delta.as_ref().expect("delta payload")).unwrap();
                match push {
                    DiscoveryPush::Delta(d) if self.at.map(|a| a.rev) == Some(d.from) => {
                        self.apply_delta(d)
                    }
                    DiscoveryPush::Delta(d) if self.at.is_some_and(|a| d.to <= a.rev) => {}
                    // A gap, or told to resync: ask with what it holds.
                    _ => self.watch(table),
                }
            }
        }
    }

    fn expected(&self, table: &Table<u64>) -> BTreeMap<String, Instance> {
        let req = VersionReq::parse(self.req).unwrap();
        table
            .matching(self.service, &req)
            .map(|l| (l.instance.endpoint.clone(), l.instance.clone()))
            .collect()
    }
}

/// Delivers `jobs`, dropping each push with probability `drop` (percent).
fn deliver(
    table: &mut Table<u64>,
    clients: &mut [Client],
    jobs: Vec<PushJob<u64>>,
    rng: &mut Rng,
    drop: u64,
) {
    for job in jobs {
        for (id, handle, kind) in &job.to {
            assert_eq!(id, handle);
            let c = &mut clients[*id as usize];
            assert!(c.kind == *kind && c.service == job.service && c.req == job.version_req);
            // Queued before the client unsubscribed: it ignores pushes for what it no longer
            // watches.
            if !c.joined || rng.chance(drop) {
                continue;
            }
            c.receive(table, &job);
        }
    }
}

#[test]
fn every_view_converges_despite_lost_pushes_and_lagging_subscribers() {
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut table: Table<u64> = Table::new(seed);
        let mut clients: Vec<Client> = (0..12)
            .map(|id| Client {
                id,
                service: SERVICES[(id % 2) as usize],
                req: REQS[(id % 3) as usize],
                kind: if id % 4 == 3 { Kind::Full } else { Kind::Delta },
                view: BTreeMap::new(),
                at: None,
                joined: false,
            })
            .collect();
        for _ in 0..600 {
            match rng.below(10) {
                0..=3 => {
                    let service = SERVICES[rng.below(2) as usize];
                    let v = VERSIONS[rng.below(3) as usize];
                    let i = instance(
                        service,
                        rng.below(12),
                        v,
                        1 + rng.below(3) as u32,
                        rng.below(2),
                    );
                    table.put(lease(i, 1 + rng.below(4)));
                }
                4 | 5 => {
                    let service = SERVICES[rng.below(2) as usize];
                    let endpoint = format!("127.0.0.1:{}", 1000 + rng.below(12));
                    table.remove(service, &endpoint);
                }
                6 => {
                    table.remove_leases_of(1 + rng.below(4));
                }
                7 => {
                    let c = &mut clients[rng.below(12) as usize];
                    if c.joined && rng.chance(30) {
                        table.leave(c.service, c.req, c.id);
                        c.joined = false;
                    } else {
                        c.watch(&mut table);
                    }
                }
                8 => {
                    let c = &clients[rng.below(12) as usize];
                    if c.joined {
                        table.mark_behind(c.service, c.req, c.id);
                    }
                    if rng.chance(50) {
                        let jobs = table.catch_up(c.id);
                        deliver(&mut table, &mut clients, jobs, &mut rng, 0);
                    }
                }
                _ => {
                    let jobs = table.collect();
                    deliver(&mut table, &mut clients, jobs, &mut rng, 20);
                }
            }
        }
        // Quiet now: every pending push and every catch-up is delivered, then every client makes
        // its periodic check. Lost pushes are repaired by these, never by luck.
        for c in 0..clients.len() {
            let jobs = table.catch_up(c as u64);
            deliver(&mut table, &mut clients, jobs, &mut rng, 0);
        }
        let jobs = table.collect();
        deliver(&mut table, &mut clients, jobs, &mut rng, 0);
        for c in clients.iter_mut().filter(|c| c.joined) {
            c.watch(&mut table);
            assert_eq!(c.view, c.expected(&table), "seed {seed}, client {}", c.id);
        }
        // And with nothing lost, pushes alone keep everyone current.
        for round in 0..50 {
            let service = SERVICES[rng.below(2) as usize];
            let i = instance(
                service,
                rng.below(12),
                VERSIONS[rng.below(3) as usize],
                5,
                round,
            );
            table.put(lease(i, 1));
            let jobs = table.collect();
            deliver(&mut table, &mut clients, jobs, &mut rng, 0);
            for c in clients.iter().filter(|c| c.joined) {
                assert_eq!(c.view, c.expected(&table), "seed {seed}, client {}", c.id);
            }
        }
    }
}

#[test]
fn deltas_carry_only_what_a_group_lists() {
    let mut table: Table<u64> = Table::new(7);
    let req = VersionReq::parse("^1").unwrap();
    table.put(lease(instance("s", 1, "1.0.0", 1, 0), 1));
    table.join("s", "^1", req, 9, 9, Kind::Delta);
    let WatchReply::Snapshot { at, instances } = table.answer("s", "^1", None) else {
        panic!("first watch is a snapshot");
    };
    assert_eq!(instances.decode().unwrap().len(), 1);
    assert!(table.collect().is_empty(), "joining pushed nothing");
    // A change the group does not list: no push, and the group stays where it was.
    table.put(lease(instance("s", 2, "2.0.0", 1, 0), 1));
    assert!(table.collect().is_empty());
    assert_eq!(
        table.answer("s", "^1", Some(at)),
        WatchReply::Unchanged { at }
    );
    // A version change moves an instance out of the group: a removal.
    table.put(lease(instance("s", 1, "2.0.0", 1, 0), 1));
    let jobs = table.collect();
    assert_eq!(jobs.len(), 1);
    let push: DiscoveryPush = rmp_serde::from_slice(jobs[0].delta.as_ref().unwrap()).unwrap();
    let DiscoveryPush::Delta(d) = push else {
        panic!("a delta")
    };
    assert_eq!((d.from, d.epoch), (at.rev, 7));
    assert!(d.upserted.is_empty());
    assert_eq!(d.removed, vec!["127.0.0.1:1001".to_owned()]);
    assert!(jobs[0].full.is_none(), "no full-list member, no full list");
    // Another epoch (a restarted registry) gets a snapshot.
    let other = Revision {
        epoch: 8,
        rev: d.to,
    };
    assert!(matches!(
        table.answer("s", "^1", Some(other)),
        WatchReply::Snapshot { .. }
    ));
}

#[test]
fn a_group_older_than_the_log_is_told_to_resync() {
    let mut table: Table<u64> = Table::new(1);
    table.join("s", "*", VersionReq::STAR, 5, 5, Kind::Delta);
    let at = match table.answer("s", "*", None) {
        WatchReply::Snapshot { at, .. } => at,
        other => panic!("{other:?}"),
    };
    // More changes than the log keeps, with no publishing round in between.
    for n in 0..(MIN_LOG as u64 + 10) {
        table.put(lease(instance("s", n % 3, "1.0.0", n as u32 + 1, 0), 1));
    }
    let jobs = table.collect();
    let push: DiscoveryPush = rmp_serde::from_slice(jobs[0].delta.as_ref().unwrap()).unwrap();
    assert!(matches!(push, DiscoveryPush::Resync { .. }), "{push:?}");
    // And a client holding the old revision gets a snapshot, not a delta.
    assert!(matches!(
        table.answer("s", "*", Some(at)),
        WatchReply::Snapshot { .. }
    ));
}

#[test]
fn sessions_take_what_they_hold_with_them() {
    let mut table: Table<u64> = Table::new(1);
    table.put(lease(instance("s", 1, "1.0.0", 1, 0), 4));
    table.put(lease(instance("s", 2, "1.0.0", 1, 0), 4));
    table.join("s", "*", VersionReq::STAR, 4, 4, Kind::Delta);
    assert_eq!(table.leases_of(4), 2);
    assert_eq!(table.subscriptions_of(4, "s", "*"), (1, true));
    // Another session takes one endpoint over.
    table.put(lease(instance("s", 2, "1.0.0", 1, 0), 6));
    assert_eq!((table.leases_of(4), table.leases_of(6)), (1, 1));
    assert_eq!(table.remove_leases_of(4).len(), 1);
    table.end_session(4);
    assert_eq!(table.subscription_count(), 0);
    assert_eq!(table.leases().count(), 1);
}
