//! Several nodes sharing one store (`shared_store`), each a core of its own, with a
//! model of the Redis scripts' semantics (`src/store/redis_scripts.rs`): a request for
//! a location no shard of a node holds is held and asks the I/O side to take it over;
//! the adoption answers it (2.04, an update message, the command filter subscribed, no
//! register message); the node that held it lets it go silently, keeping its command
//! subscription until the new node's is in place (or a deadline); and two nodes racing
//! for one registration end with one owner.

use super::harness::*;
use crate::coap::{codes, opt, MessageWriter, MsgType};
use crate::lwm2m::handover::HANDOVER_DEADLINE_MS;
use crate::lwm2m::record;
use crate::lwm2m::{ClusterRequest, Input, ShardMsg, StoreChange, Timer};
use std::collections::HashMap;
use std::net::SocketAddr;

const EPOCH: u64 = 1_700_000_000_000;

/// The store as the Redis scripts keep it: name → (location, record, owner), location
/// → name. Redis runs one script at a time; so does the model.
#[derive(Default)]
struct Model {
    regs: HashMap<String, (u64, Vec<u8>, usize)>,
    locs: HashMap<u64, String>,
}

impl Model {
    /// PUT: a claim takes the name; anything else applies while `node` owns the name at
    /// that location. The previous owner of a claimed name, when another node.
    fn put(
        &mut self,
        node: usize,
        name: &str,
        loc: u64,
        rec: Vec<u8>,
        claim: bool,
    ) -> Option<(usize, u64)> {
        let old = self.regs.get(name).map(|(l, _, o)| (*l, *o));
        if !claim && old.is_some_and(|o| o != (loc, node)) {
            return None;
        }
        if self.locs.get(&loc).is_some_and(|n| n != name) {
            return None;
        }
        if let Some((l, _)) = old.filter(|(l, _)| *l != loc) {
            self.locs.remove(&l);
        }
        self.regs.insert(name.into(), (loc, rec, node));
        self.locs.insert(loc, name.into());
        old.filter(|(_, o)| *o != node).map(|(l, o)| (o, l))
    }

    /// REMOVE: only `node`'s record of that location.
    fn remove(&mut self, node: usize, name: &str, loc: u64) {
        if self
            .regs
            .get(name)
            .is_some_and(|(l, _, o)| *l == loc && *o == node)
        {
            self.regs.remove(name);
            self.locs.remove(&loc);
        }
    }

    /// TAKE: the registration at `loc` becomes `node`'s: (name, record, previous owner).
    fn take(&mut self, node: usize, loc: u64) -> Option<(String, Vec<u8>, usize)> {
        let name = self.locs.get(&loc)?.clone();
        let reg = self.regs.get_mut(&name)?;
        if reg.0 != loc {
            return None;
        }
        let prev = std::mem::replace(&mut reg.2, node);
        Some((name, reg.1.clone(), prev))
    }

    /// TAKE_PEER: the plain registration at address `peer`, held by another node,
    /// becomes `node`'s (the scripts find it through their `peer:` index).
    fn take_peer(&mut self, node: usize, peer: SocketAddr) -> Option<(String, Vec<u8>, usize)> {
        let (name, reg) = self
            .regs
            .iter_mut()
            .find(|(_, r)| record::plain_peer_of(&r.1) == Some(peer) && r.2 != node)?;
        let prev = std::mem::replace(&mut reg.2, node);
        Some((name.clone(), reg.1.clone(), prev))
    }
}

/// Nodes of one shard each, the store they share, and what their I/O sides do.
struct Cluster {
    nodes: Vec<Harness>,
    store: Model,
    /// The subscriptions adoptions asked to confirm to the node they were taken from,
    /// waiting for their SUBACK: (node that asked, node to tell, name, location).
    confirms: Vec<(usize, usize, String, u64)>,
}

impl Cluster {
    fn new(n: usize) -> Self {
        // Each node hands out locations of its own (a random key per process).
        let node = |i: u64| crate::lwm2m::CoreSettings {
            clock_epoch_ms: EPOCH,
            shared_store: true,
            location_key: [0x0123_4567_89ab_cdef ^ i, 0x0fed_cba9_8765_4321],
            ..settings()
        };
        Cluster {
            nodes: (0..n).map(|i| Harness::new(1, node(i as u64))).collect(),
            store: Model::default(),
            confirms: Vec::new(),
        }
    }

    /// Writes node `i`'s store changes; the nodes whose names it claimed are told.
    fn write(&mut self, i: usize) {
        for (_, c) in std::mem::take(&mut self.nodes[i].store) {
            match c {
                StoreChange::Put {
                    name,
                    location,
                    record,
                    claim,
                } => {
                    if let Some((prev, l)) = self.store.put(i, &name, location, record, claim) {
                        self.release(prev, &name, l);
                    }
                }
                StoreChange::Remove { name, location } => self.store.remove(i, &name, location),
            }
        }
    }

    fn release(&mut self, node: usize, name: &str, location: u64) {
        let name = name.into();
        self.nodes[node].input(0, Input::ClusterRelease { name, location });
    }

    /// Runs node `i`'s takes (one at a time, as its cluster thread does) and hands each
    /// answer back; the replies to the held requests.
    fn takes(&mut self, i: usize) -> Vec<Reply> {
        let mut replies = Vec::new();
        while !self.nodes[i].cluster.is_empty() {
            let (_, r) = self.nodes[i].cluster.remove(0);
            replies.extend(self.take(i, r));
        }
        replies
    }

    /// The broker acknowledged node `i`'s subscriptions: the nodes its adoptions were
    /// taken from are told (`Input::ClusterUnsubscribe`).
    fn acknowledge(&mut self, i: usize) {
        let (mine, others) = std::mem::take(&mut self.confirms)
            .into_iter()
            .partition(|c| c.0 == i);
        self.confirms = others;
        for (_, to, name, location) in mine {
            let name = name.into();
            self.nodes[to].input(0, Input::ClusterUnsubscribe { name, location });
        }
    }

    fn take(&mut self, i: usize, r: ClusterRequest) -> Vec<Reply> {
        let (location, peer, datagram, identity) = match r {
            ClusterRequest::Take {
                location,
                peer,
                datagram,
                identity,
            } => (location, peer, datagram, identity),
            ClusterRequest::TakePeer { peer, datagram } => {
                return match self.store.take_peer(i, peer) {
                    Some((name, rec, prev)) => {
                        let endpoint = Box::new(record::decode(&rec, EPOCH).expect("a record"));
                        self.release(prev, &name, endpoint.location);
                        let from = Some(format!("node{prev}").into());
                        let adopt = Input::ClusterAdopt {
                            endpoint,
                            peer,
                            datagram,
                            identity: None,
                            from,
                        };
                        self.nodes[i].input(0, adopt)
                    }
                    None => self.nodes[i].input(0, Input::ClusterPeerMiss { peer, datagram }),
                };
            }
            ClusterRequest::Subscribed {
                node,
                name,
                location,
                filter,
            } => {
                assert_eq!(filter, format!("lwm2m/{name}/dn/#"));
                let to = node.trim_start_matches("node").parse().expect("a node");
                self.confirms.push((i, to, name.into(), location));
                return Vec::new();
            }
        };
        match self.store.take(i, location) {
            Some((name, rec, prev)) => {
                if prev != i {
                    self.release(prev, &name, location);
                }
                let endpoint = Box::new(record::decode(&rec, EPOCH).expect("a record"));
                let from = (prev != i).then(|| format!("node{prev}").into());
                self.nodes[i].input(
                    0,
                    Input::ClusterAdopt {
                        endpoint,
                        peer,
                        datagram,
                        identity,
                        from,
                    },
                )
            }
            None => self.nodes[i].input(
                0,
                Input::ClusterMiss {
                    location,
                    peer,
                    datagram,
                    identity,
                },
            ),
        }
    }

    /// Which nodes hold `name` in their table.
    fn holders(&self, name: &str) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].cores[0].endpoints().find_name(name).is_some())
            .collect()
    }
}

fn loc_num(loc: &str) -> u64 {
    u64::from_str_radix(loc, 16).expect("a location")
}

fn register(c: &mut Cluster, node: usize, from: SocketAddr, ep: &str) -> String {
    let r = c.nodes[node].one(0, from, &Req::register(ep, 1).bytes());
    assert_eq!(r.code(), codes::CREATED);
    c.write(node);
    r.location()
}

#[test]
fn a_request_for_a_location_held_by_another_node_is_taken_over_through_the_store() {
    let mut c = Cluster::new(2);
    let loc = register(&mut c, 0, addr(1, 5000), "dev");
    assert_eq!(c.store.regs["dev"].2, 0);
    let (mark_a, mark_b) = (c.nodes[0].mark(), c.nodes[1].mark());
    // The device moved to node 1 (a new address): its Update is held, node 1 asks.
    let moved = addr(2, 6000);
    let held = c.nodes[1].exchange(0, moved, &Req::update(&loc, 7).bytes());
    assert!(held.is_empty(), "held while the store is asked: {held:?}");
    assert_eq!(c.nodes[1].cluster.len(), 1);
    // A retransmission meanwhile asks nothing more.
    assert!(c.nodes[1]
        .exchange(0, moved, &Req::update(&loc, 7).bytes())
        .is_empty());
    assert_eq!(c.nodes[1].cluster.len(), 1);
    // The take: node 1 owns it, adopts it and answers the Update.
    let replies = c.takes(1);
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!((replies[0].to, replies[0].code()), (moved, codes::CHANGED));
    assert_eq!(c.store.regs["dev"].2, 1);
    let published = c.nodes[1].published_since(mark_b);
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].0, "lwm2m/dev/up/update");
    assert_eq!(published[0].1["msgType"], "update");
    let (subs, _) = c.nodes[1].subscriptions();
    assert!(subs.contains(&"lwm2m/dev/dn/#".to_string()), "{subs:?}");
    // Its record is written as node 1's (an Update, not a claim), with the new address.
    c.write(1);
    let (l, rec, owner) = &c.store.regs["dev"];
    assert_eq!((format!("{l:x}"), *owner), (loc.clone(), 1));
    assert_eq!(record::decode(rec, EPOCH).unwrap().peer, moved);
    // Node 0 let it go: no message, nothing removed, its subscription kept until node
    // 1's is in place.
    assert_eq!(c.holders("dev"), [1]);
    assert!(c.nodes[0].published_since(mark_a).is_empty());
    let (_, unsubs) = c.nodes[0].subscriptions();
    assert!(unsubs.is_empty(), "{unsubs:?}");
    assert_eq!(c.confirms, [(1, 0, "dev".to_string(), loc_num(&loc))]);
    c.acknowledge(1);
    let (_, unsubs) = c.nodes[0].subscriptions();
    assert_eq!(unsubs, ["lwm2m/dev/dn/#"]);
    assert_eq!(c.nodes[0].cores[0].stats().handovers_confirmed, 1);
    c.write(0);
    assert_eq!(c.store.regs["dev"].2, 1, "node 0 removed nothing");
    assert_eq!(c.nodes[0].cores[0].stats().cluster_released, 1);
    assert_eq!(c.nodes[1].cores[0].stats().cluster_adopted, 1);
    // Updates go on at node 1 without asking.
    let r = c.nodes[1].one(0, moved, &Req::update(&loc, 8).bytes());
    assert_eq!(r.code(), codes::CHANGED);
    assert!(c.nodes[1].cluster.is_empty());
}

#[test]
fn a_take_that_finds_nothing_is_answered_not_found() {
    let mut c = Cluster::new(2);
    let from = addr(3, 5000);
    assert!(c.nodes[1]
        .exchange(0, from, &Req::update("0123456789abcdef", 3).bytes())
        .is_empty());
    let replies = c.takes(1);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].code(), codes::NOT_FOUND);
    assert_eq!(c.nodes[1].cores[0].stats().cluster_missed, 1);
    // The next request asks again (the store may have it by then).
    assert!(c.nodes[1]
        .exchange(0, from, &Req::update("0123456789abcdef", 4).bytes())
        .is_empty());
    assert_eq!(c.nodes[1].cluster.len(), 1);
}

#[test]
fn without_a_shared_store_an_unknown_location_is_not_found_at_once() {
    let mut h = Harness::new(1, settings());
    let r = h.one(
        0,
        addr(3, 5000),
        &Req::update("0123456789abcdef", 3).bytes(),
    );
    assert_eq!(r.code(), codes::NOT_FOUND);
    assert!(h.cluster.is_empty());
}

#[test]
fn two_nodes_racing_to_take_one_registration_end_with_one_owner() {
    let mut c = Cluster::new(3);
    let loc = register(&mut c, 0, addr(1, 5000), "dev");
    // Its Updates reach nodes 1 and 2 (the balancer moved it twice); both ask, and the
    // store serves node 2's take first.
    assert!(c.nodes[1]
        .exchange(0, addr(2, 1), &Req::update(&loc, 5).bytes())
        .is_empty());
    assert!(c.nodes[2]
        .exchange(0, addr(2, 2), &Req::update(&loc, 6).bytes())
        .is_empty());
    let r2 = c.takes(2);
    let r1 = c.takes(1);
    assert_eq!(r2[0].code(), codes::CHANGED);
    assert_eq!(r1[0].code(), codes::CHANGED);
    for i in 0..3 {
        c.write(i);
    }
    // Node 1 took it last: node 2 was told and let it go.
    assert_eq!(c.holders("dev"), [1]);
    assert_eq!(c.store.regs["dev"].2, 1);
}

#[test]
fn a_register_on_one_node_racing_a_take_on_another_ends_with_one_owner() {
    for register_first in [true, false] {
        let mut c = Cluster::new(3);
        let old = register(&mut c, 0, addr(1, 5000), "dev");
        // Node 1 holds an Update for the old location; node 2 gets a new Register.
        assert!(c.nodes[1]
            .exchange(0, addr(2, 1), &Req::update(&old, 5).bytes())
            .is_empty());
        let r = c.nodes[2].one(0, addr(2, 2), &Req::register("dev", 9).bytes());
        assert_eq!(r.code(), codes::CREATED);
        if register_first {
            c.write(2);
            let r1 = c.takes(1);
            // The claim ended the old location: nothing to take.
            assert_eq!(r1[0].code(), codes::NOT_FOUND);
        } else {
            let r1 = c.takes(1);
            assert_eq!(r1[0].code(), codes::CHANGED);
            c.write(1);
            c.write(2);
        }
        for i in 0..3 {
            c.write(i);
        }
        assert_eq!(c.holders("dev"), [2], "register_first = {register_first}");
        assert_eq!(c.store.regs["dev"].2, 2);
        assert_eq!(format!("{:x}", c.store.regs["dev"].0), r.location());
    }
}

/// Moves `dev`, registered on node 0, to node 1 (its Update there takes it over); node
/// 0 has let it go and keeps its subscription. Returns the location.
fn moved_to_node_1(c: &mut Cluster) -> String {
    let loc = register(c, 0, addr(1, 5000), "dev");
    assert!(c.nodes[1]
        .exchange(0, addr(2, 6000), &Req::update(&loc, 7).bytes())
        .is_empty());
    let r = c.takes(1);
    assert_eq!(r[0].code(), codes::CHANGED);
    assert_eq!(c.holders("dev"), [1]);
    assert_eq!(c.nodes[0].cores[0].stats().handovers_kept, 1);
    assert_eq!(c.nodes[0].cores[0].stats().handovers_pending, 1);
    loc
}

#[test]
fn a_kept_subscription_is_given_up_at_the_deadline_without_the_new_nodes_notice() {
    let mut c = Cluster::new(2);
    let loc = moved_to_node_1(&mut c);
    let kept: Vec<&str> = c.nodes[0].cores[0].kept_for_handover().collect();
    assert_eq!(kept, ["lwm2m/dev/"]);
    // The notice is lost (or node 1 died before its SUBACK).
    c.confirms.clear();
    // A deadline timer that comes early gives nothing up (and is armed again).
    let location = loc_num(&loc);
    c.nodes[0].input(0, Input::Timer(Timer::HandoverDeadline { location }));
    assert!(c.nodes[0].subscriptions().1.is_empty(), "an early timer");
    c.nodes[0].advance(HANDOVER_DEADLINE_MS - 1);
    assert!(
        c.nodes[0].subscriptions().1.is_empty(),
        "kept until the deadline"
    );
    c.nodes[0].advance(1);
    assert_eq!(c.nodes[0].subscriptions().1, ["lwm2m/dev/dn/#"]);
    let stats = c.nodes[0].cores[0].stats();
    assert_eq!((stats.handovers_timed_out, stats.handovers_pending), (1, 0));
    assert_eq!(c.nodes[0].dir.sub_homes(), 0);
    // A late notice changes nothing.
    c.acknowledge(1);
    assert_eq!(c.nodes[0].subscriptions().1.len(), 1);
}

#[test]
fn a_registration_made_again_on_the_old_node_meanwhile_keeps_the_subscription() {
    let mut c = Cluster::new(2);
    moved_to_node_1(&mut c);
    // The device registers again at node 0 before node 1's notice arrives.
    let r = c.nodes[0].one(0, addr(1, 5001), &Req::register("dev", 9).bytes());
    assert_eq!(r.code(), codes::CREATED);
    c.acknowledge(1);
    assert!(c.nodes[0].subscriptions().1.is_empty(), "still subscribed");
    assert_eq!(c.nodes[0].cores[0].stats().handovers_confirmed, 1);
    // Nor does the deadline take it.
    c.nodes[0].advance(HANDOVER_DEADLINE_MS);
    assert!(c.nodes[0].subscriptions().1.is_empty());
    assert_eq!(c.nodes[0].dir.sub_homes(), 1);
}

#[test]
fn a_registration_taken_back_by_the_old_node_meanwhile_keeps_the_subscription() {
    let mut c = Cluster::new(2);
    let loc = moved_to_node_1(&mut c);
    c.write(1);
    // Its next Update reaches node 0 again, before node 1's notice.
    assert!(c.nodes[0]
        .exchange(0, addr(1, 5002), &Req::update(&loc, 8).bytes())
        .is_empty());
    let r = c.takes(0);
    assert_eq!(r[0].code(), codes::CHANGED);
    assert_eq!(c.holders("dev"), [0]);
    // Node 1 let it go in turn and keeps its own until node 0's SUBACK.
    assert!(c.nodes[1].subscriptions().1.is_empty());
    c.acknowledge(1);
    c.nodes[0].advance(HANDOVER_DEADLINE_MS);
    assert!(
        c.nodes[0].subscriptions().1.is_empty(),
        "node 0 holds dev again: its subscription stays"
    );
    c.acknowledge(0);
    assert_eq!(c.nodes[1].subscriptions().1, ["lwm2m/dev/dn/#"]);
}

#[test]
fn without_per_endpoint_subscriptions_nothing_is_kept() {
    let node = |i: u64| crate::lwm2m::CoreSettings {
        clock_epoch_ms: EPOCH,
        shared_store: true,
        per_endpoint_subscriptions: false,
        location_key: [0x0123_4567_89ab_cdef ^ i, 0x0fed_cba9_8765_4321],
        ..settings()
    };
    let mut c = Cluster {
        nodes: (0..2).map(|i| Harness::new(1, node(i))).collect(),
        store: Model::default(),
        confirms: Vec::new(),
    };
    let loc = register(&mut c, 0, addr(1, 5000), "dev");
    assert!(c.nodes[1]
        .exchange(0, addr(2, 6000), &Req::update(&loc, 7).bytes())
        .is_empty());
    assert_eq!(c.takes(1)[0].code(), codes::CHANGED);
    assert!(c.confirms.is_empty());
    assert_eq!(c.nodes[0].cores[0].stats().handovers_kept, 0);
    assert_eq!(c.nodes[0].cores[0].kept_for_handover().count(), 0);
}

fn notification(t: MsgType, mid: u16, token: &[u8], seq: u32, value: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, t, codes::CONTENT, mid, token);
    w.option_uint(opt::OBSERVE, seq);
    w.option_uint(opt::CONTENT_FORMAT, 0);
    w.payload(value);
    buf
}

/// Registers `dev` on node 0 from `from` and observes `/3/0/9` there; the token.
fn observed_on_node_0(c: &mut Cluster, from: SocketAddr) -> Vec<u8> {
    register(c, 0, from, "dev");
    let out = c.nodes[0].command(
        0,
        "lwm2m/dev/dn/cmd",
        r#"{"reqID":"obs-1","msgType":"observe","data":{"path":"/3/0/9"}}"#,
    );
    assert_eq!(out.len(), 1);
    let req = out[0].msg();
    let token = req.token.to_vec();
    let mut ack = Vec::new();
    let mut w = MessageWriter::new(&mut ack, MsgType::Ack, codes::CONTENT, req.mid, &token);
    w.option_uint(opt::OBSERVE, 1);
    w.option_uint(opt::CONTENT_FORMAT, 0);
    w.payload(b"90");
    c.nodes[0].datagram(0, from, &ack);
    c.write(0);
    token
}

#[test]
fn a_notification_reaching_another_node_first_takes_the_registration_over_by_its_address() {
    for t in [MsgType::Con, MsgType::Non] {
        let mut c = Cluster::new(2);
        let dev = addr(1, 5000);
        let token = observed_on_node_0(&mut c, dev);
        let mark = c.nodes[1].mark();
        // The balancer moved the device to node 1 (its address kept): its next datagram
        // there is a notification, long before its next Update. Held, not reset.
        let n = notification(t, 700, &token, 2, b"89");
        assert!(c.nodes[1].exchange(0, dev, &n).is_empty());
        assert_eq!(c.nodes[1].cluster.len(), 1);
        // Its retransmission meanwhile is dropped and asks nothing more.
        assert!(c.nodes[1].exchange(0, dev, &n).is_empty());
        assert_eq!(c.nodes[1].cluster.len(), 1);
        assert_eq!(c.nodes[1].cores[0].stats().peer_takes_waiting, 1);
        // The take by address: node 1 owns the registration, the notification is
        // acknowledged (CON) and published with the observation's reqID.
        let replies = c.takes(1);
        match t {
            MsgType::Con => {
                assert_eq!(replies.len(), 1, "{replies:?}");
                assert_eq!(replies[0].msg().mtype, MsgType::Ack);
                assert_eq!(replies[0].msg().mid, 700);
            }
            _ => assert!(replies.is_empty(), "{replies:?}"),
        }
        assert_eq!(c.holders("dev"), [1]);
        assert_eq!(c.store.regs["dev"].2, 1);
        let p = c.nodes[1].published_since(mark);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "lwm2m/dev/up/notify");
        assert_eq!(p[0].1["reqID"], "obs-1");
        assert_eq!(p[0].1["seqNum"], 2);
        // Node 0 let it go, keeping its subscription until node 1's is in place.
        assert_eq!(c.confirms.len(), 1);
        // The next notification goes straight through.
        let next = notification(t, 701, &token, 3, b"88");
        c.nodes[1].exchange(0, dev, &next);
        assert!(c.nodes[1].cluster.is_empty());
        assert_eq!(c.nodes[1].published_since(mark).len(), 2);
    }
}

#[test]
fn a_notification_from_an_address_the_store_does_not_know_is_reset() {
    let mut c = Cluster::new(2);
    let stranger = addr(9, 9000);
    let con = notification(MsgType::Con, 800, b"\x01\x02\x03\x04", 2, b"1");
    assert!(c.nodes[1].exchange(0, stranger, &con).is_empty());
    let replies = c.takes(1);
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].msg().mtype, MsgType::Rst);
    assert_eq!(c.nodes[1].endpoints(), 0);
    // Without a shared store nothing is asked at all.
    let mut h = Harness::new(1, settings());
    let r = h.exchange(0, stranger, &con);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].msg().mtype, MsgType::Rst);
    assert!(h.cluster.is_empty());
}

#[test]
fn a_send_reaching_another_node_first_takes_the_registration_over_by_its_address() {
    let mut c = Cluster::new(2);
    let dev = addr(1, 5000);
    let r = c.nodes[0].one(0, dev, &Req::register("dev", 1).q("lwm2m=1.1").bytes());
    assert_eq!(r.code(), codes::CREATED);
    c.write(0);
    let mark = c.nodes[1].mark();
    let send = Req::new(codes::POST, "/dp", 9)
        .opt(
            opt::CONTENT_FORMAT,
            &crate::formats::fmt_id::SENML_JSON.to_be_bytes(),
        )
        .body(br#"[{"n":"/3/0/9","v":87}]"#)
        .bytes();
    // Held while node 1 asks the store by address (not 4.04 "no registration").
    assert!(c.nodes[1].exchange(0, dev, &send).is_empty());
    let replies = c.takes(1);
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].code(), codes::CHANGED);
    assert_eq!(c.holders("dev"), [1]);
    let p = c.nodes[1].published_since(mark);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, "lwm2m/dev/up/send");
    // Its retransmission is answered from the reply cache, published once.
    assert_eq!(c.nodes[1].one(0, dev, &send).code(), codes::CHANGED);
    assert_eq!(c.nodes[1].published_since(mark).len(), 1);
}

/// Whether the last subscription change of `filter` a node sent is a subscribe.
fn subscribed(h: &Harness, filter: &str) -> bool {
    h.mqtt
        .iter()
        .filter_map(|m| match m {
            crate::lwm2m::MqttOut::Subscribe { filter: f, .. } if f == filter => Some(true),
            crate::lwm2m::MqttOut::Unsubscribe { filter: f, .. } if f == filter => Some(false),
            _ => None,
        })
        .next_back()
        .unwrap_or(false)
}

/// `dev` registered on shard 0 of node 0, then again on shard 1, whose Evict for shard
/// 0 waits in a mailbox; node 1 takes the first registration over (node 0's claim not
/// yet written), the second ends, and node 0 takes the first back from node 1 on shard
/// 0. The Evict that arrives then is stale: the registration taken back stays, with
/// its subscription, and its end gives the subscription up.
#[test]
fn an_evict_finding_the_registration_taken_back_in_is_stale() {
    let node = |i: u64, shards| {
        let s = crate::lwm2m::CoreSettings {
            clock_epoch_ms: EPOCH,
            shared_store: true,
            location_key: [0x0123_4567_89ab_cdef ^ i, 0x0fed_cba9_8765_4321],
            ..settings()
        };
        Harness::new(shards, s)
    };
    let mut c = Cluster {
        nodes: vec![node(0, 2), node(1, 1)],
        store: Model::default(),
        confirms: Vec::new(),
    };
    let first = c.nodes[0].one(0, addr(1, 5000), &Req::register("dev", 1).bytes());
    let loc = first.location();
    c.write(0);
    let n = c.nodes[0].replies.len();
    let register = Req::register("dev", 2).bytes();
    let mail = c.nodes[0].datagram_holding_mail(1, addr(2, 5000), &register);
    let second = c.nodes[0].replies[n].clone();
    assert_eq!(second.code(), codes::CREATED);
    let evict = |m: &ShardMsg| matches!(m, ShardMsg::Evict { .. });
    assert!(mail.iter().any(|(to, m)| *to == 0 && evict(m)), "{mail:?}");
    // Node 1 takes the first over; the second ends on shard 1.
    assert!(c.nodes[1]
        .exchange(0, addr(3, 5000), &Req::update(&loc, 3).bytes())
        .is_empty());
    assert_eq!(c.takes(1)[0].code(), codes::CHANGED);
    let del = |loc: &str, mid| Req::new(codes::DELETE, &format!("/rd/{loc}"), mid).bytes();
    let r = c.nodes[0].one(1, addr(2, 5000), &del(&second.location(), 4));
    assert_eq!(r.code(), codes::DELETED);
    assert_eq!(c.nodes[0].endpoints(), 0);
    // The device is back at node 0: shard 0 takes the first back from node 1.
    assert!(c.nodes[0]
        .exchange(0, addr(1, 5000), &Req::update(&loc, 5).bytes())
        .is_empty());
    assert_eq!(c.takes(0)[0].code(), codes::CHANGED);
    assert_eq!(c.holders("dev"), [0]);
    assert!(subscribed(&c.nodes[0], "lwm2m/dev/dn/#"));
    // The Evict (and the rest of that mailbox) arrives now: stale.
    for (to, m) in mail {
        c.nodes[0].message(to as usize, m);
    }
    assert_eq!(c.holders("dev"), [0], "the registration taken back stays");
    assert!(subscribed(&c.nodes[0], "lwm2m/dev/dn/#"));
    let r = c.nodes[0].one(0, addr(1, 5000), &Req::update(&loc, 6).bytes());
    assert_eq!(r.code(), codes::CHANGED);
    // Its end gives the subscription up: nothing is left subscribed.
    let r = c.nodes[0].one(0, addr(1, 5000), &del(&loc, 7));
    assert_eq!(r.code(), codes::DELETED);
    assert!(!subscribed(&c.nodes[0], "lwm2m/dev/dn/#"));
    assert_eq!(c.nodes[0].dir.sub_homes(), 0);
}

/// A registration that ended on a node whose record's removal has not reached the store
/// yet: an Update to its location takes the record from the store, the node's own; it is
/// not taken in again (4.04: the device registers again), and the removal, once
/// written, leaves nothing.
#[test]
fn a_take_of_a_record_this_node_owned_does_not_bring_an_ended_registration_back() {
    let mut c = Cluster::new(2);
    let loc = register(&mut c, 0, addr(1, 5000), "dev");
    let del = Req::new(codes::DELETE, &format!("/rd/{loc}"), 2).bytes();
    assert_eq!(
        c.nodes[0].one(0, addr(1, 5000), &del).code(),
        codes::DELETED
    );
    assert_eq!(c.store.regs["dev"].2, 0, "its removal not written yet");
    assert!(c.nodes[0]
        .exchange(0, addr(1, 5000), &Req::update(&loc, 3).bytes())
        .is_empty());
    let r = c.takes(0);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].code(), codes::NOT_FOUND);
    assert_eq!(c.nodes[0].endpoints(), 0);
    assert!(
        c.nodes[0].published("/update").is_empty(),
        "no update message"
    );
    assert!(!subscribed(&c.nodes[0], "lwm2m/dev/dn/#"));
    c.write(0);
    assert!(c.store.regs.is_empty());
    let stats = c.nodes[0].cores[0].stats();
    assert_eq!((stats.cluster_adopted, stats.cluster_missed), (0, 1));
}

#[test]
fn a_registration_whose_lifetime_ran_out_is_ended_not_renewed_by_a_take() {
    let mut c = Cluster::new(2);
    let loc = register(&mut c, 0, addr(1, 5000), "dev");
    // Node 0 stops serving it (down) and its 300 s lifetime runs out; node 1's clock
    // passes the deadline.
    c.nodes[1].advance(301_000);
    let mark = c.nodes[1].mark();
    let moved = addr(2, 6000);
    assert!(c.nodes[1]
        .exchange(0, moved, &Req::update(&loc, 7).bytes())
        .is_empty());
    let replies = c.takes(1);
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].code(), codes::NOT_FOUND);
    let p = c.nodes[1].published_since(mark);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].1["msgType"], "deregister");
    assert_eq!(p[0].1["data"]["reason"], "expired");
    assert!(c.holders("dev").is_empty());
    // Its record goes from the store with node 1's next batch.
    c.write(1);
    assert!(!c.store.regs.contains_key("dev"));
}
