//! The `cluster` thread: the shards' requests to the other nodes, run on Redis.

use super::notices;
use super::{ClusterAnswer, ClusterStats, Deliver};
use crate::lwm2m::record;
use crate::lwm2m::{ClusterRequest, Directory};
use crate::store::redis_scripts;
use crate::store::{RedisConn, StoreError};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Requests the shards may have waiting for the cluster thread.
const QUEUE_CAPACITY: usize = 16_384;
/// How often an idle cluster thread checks that Redis answers.
const PING_EVERY: Duration = Duration::from_secs(1);
/// How long a take that found nothing waits before it asks once more: a registration
/// made on another node moments ago reaches Redis with that node's next batch, at most
/// [`FLUSH_INTERVAL`](crate::store::FLUSH_INTERVAL) later plus a round trip. Well within
/// the shard's takeover timeout (2 s), during which the device's retransmissions wait.
const MISS_RETRY_AFTER: Duration = Duration::from_millis(500);

/// What the cluster thread is asked.
enum Job {
    /// The core's.
    Core(ClusterRequest),
    /// A command for `name`, which no shard here holds: to the node that does.
    Forward {
        name: String,
        topic: String,
        payload: Vec<u8>,
        expiry_s: Option<u32>,
    },
    /// Node `node` may give up the subscription it kept for `name` at `location`
    /// (this node's is in place).
    Unsubscribe {
        node: Box<str>,
        name: Box<str>,
        location: u64,
    },
}

/// A shard's handle on the cluster thread: never blocks.
#[derive(Clone)]
pub struct ClusterSender {
    tx: Sender<(u16, Job)>,
    stats: Arc<ClusterStats>,
}

impl ClusterSender {
    /// Queues a request of shard `shard`; a full queue hands it back (the shard answers
    /// it as a miss), counted.
    pub fn send(&self, shard: u16, r: ClusterRequest) -> Result<(), ClusterRequest> {
        match self.tx.try_send((shard, Job::Core(r))) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full((_, j)) | TrySendError::Disconnected((_, j))) => {
                ClusterStats::add(&self.stats.take_failures, 1);
                match j {
                    Job::Core(r) => Err(r),
                    _ => unreachable!("sent a take"),
                }
            }
        }
    }

    /// Queues a command for `name` (no shard here holds it) to go to the node holding
    /// it; a full queue hands topic and payload back (the shard answers it as usual).
    pub fn forward(
        &self,
        shard: u16,
        name: &str,
        topic: String,
        payload: Vec<u8>,
        expiry_s: Option<u32>,
    ) -> Result<(), (String, Vec<u8>)> {
        let job = Job::Forward {
            name: name.to_string(),
            topic,
            payload,
            expiry_s,
        };
        match self.tx.try_send((shard, job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full((_, j)) | TrySendError::Disconnected((_, j))) => match j {
                Job::Forward { topic, payload, .. } => Err((topic, payload)),
                _ => unreachable!("sent a forward"),
            },
        }
    }

    /// Queues the notice to node `node` that this node's subscription of `name`'s
    /// commands is in place (the broker acknowledged it). A full queue drops it,
    /// counted: that node gives its kept subscription up at its deadline.
    pub fn unsubscribe_elsewhere(&self, node: Box<str>, name: Box<str>, location: u64) {
        let job = Job::Unsubscribe {
            node,
            name,
            location,
        };
        if self.tx.try_send((0, job)).is_err() {
            ClusterStats::add(&self.stats.unsubscribes_unsent, 1);
        }
    }
}

/// The cluster threads of this node and the way to stop them.
pub struct ClusterSide {
    tx: Sender<(u16, Job)>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub stats: Arc<ClusterStats>,
    /// The management API's reads.
    pub view: Arc<super::ClusterView>,
}

/// What the cluster thread needs.
struct Worker {
    con: RedisConn,
    node: String,
    epoch_ms: u64,
    take: redis::Script,
    take_peer: redis::Script,
    deliver: Deliver,
    stats: Arc<ClusterStats>,
    /// Takes that found nothing once, with the time to ask again (oldest first), at
    /// most [`QUEUE_CAPACITY`].
    retries: VecDeque<(Instant, u16, ClusterRequest)>,
}

impl ClusterSide {
    /// Starts the threads of node `node` (of `shards` shards) on the Redis at `url`;
    /// answers go through `deliver`, notices to the shard the directory names.
    pub fn start(
        url: &str,
        node: &str,
        epoch_ms: u64,
        shards: u16,
        dir: Arc<Directory>,
        deliver: Deliver,
    ) -> Result<ClusterSide, StoreError> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_CAPACITY);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ClusterStats::default());
        let worker = Worker {
            con: RedisConn::new(url)?,
            node: node.to_string(),
            epoch_ms,
            take: redis_scripts::take(),
            take_peer: redis_scripts::take_peer(),
            deliver: deliver.clone(),
            stats: stats.clone(),
            retries: VecDeque::new(),
        };
        let io = |e: std::io::Error| StoreError::Io {
            path: url.to_string(),
            detail: format!("cannot start the cluster thread: {e}"),
        };
        let s = stop.clone();
        let t1 = std::thread::Builder::new()
            .name("cluster".into())
            .spawn(move || worker.run(&rx, &s))
            .map_err(io)?;
        let listener = notices::Listener {
            con: RedisConn::new(url)?,
            lookup: RedisConn::new(url)?,
            node: node.to_string(),
            channel: redis_scripts::node_channel(node),
            dir,
            deliver,
            stats: stats.clone(),
            shards,
        };
        let s = stop.clone();
        let t2 = std::thread::Builder::new()
            .name("cluster-notices".into())
            .spawn(move || listener.run(&s))
            .map_err(io)?;
        let sender = ClusterSender {
            tx: tx.clone(),
            stats: stats.clone(),
        };
        let view = super::ClusterView::new(url, node, epoch_ms, stats.clone(), sender)?;
        Ok(ClusterSide {
            tx,
            stop,
            threads: vec![t1, t2],
            stats,
            view: Arc::new(view),
        })
    }

    pub fn sender(&self) -> ClusterSender {
        ClusterSender {
            tx: self.tx.clone(),
            stats: self.stats.clone(),
        }
    }

    /// Ends the threads (after the shards stopped).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Worker {
    fn run(mut self, rx: &Receiver<(u16, Job)>, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            let wait = self.retries.front().map_or(PING_EVERY, |(due, ..)| {
                due.saturating_duration_since(Instant::now())
                    .min(PING_EVERY)
            });
            match rx.recv_timeout(wait) {
                Ok((shard, r)) => self.handle(shard, r),
                Err(RecvTimeoutError::Timeout) if self.retries.is_empty() => {
                    let ok = self.con.with(|c| redis::cmd("PING").exec(c)).is_ok();
                    self.stats.set_reachable(ok);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.retry_due();
        }
    }

    /// Asks again, for the last time, the takes whose wait is over.
    fn retry_due(&mut self) {
        let now = Instant::now();
        while self.retries.front().is_some_and(|(due, ..)| *due <= now) {
            if let Some((_, shard, r)) = self.retries.pop_front() {
                self.take_for(shard, r, false);
            }
        }
    }

    fn handle(&mut self, shard: u16, job: Job) {
        let r = match job {
            Job::Core(r) => r,
            Job::Forward {
                name,
                topic,
                payload,
                expiry_s,
            } => return self.forward(shard, &name, topic, payload, expiry_s),
            Job::Unsubscribe {
                node,
                name,
                location,
            } => return self.unsubscribe_at(&node, &name, location),
        };
        self.take_for(shard, r, true);
    }

    /// Runs the take `r` of shard `shard` and hands the answer to the shard. On the
    /// `first` try a miss is not answered: the take waits [`MISS_RETRY_AFTER`] and asks
    /// once more (the registration may be on its way to Redis from the node where it was
    /// just made), unless too many wait already.
    fn take_for(&mut self, shard: u16, r: ClusterRequest, first: bool) {
        let location = match r {
            ClusterRequest::Take { location, .. } => location,
            ClusterRequest::TakePeer { peer, datagram } => {
                return self.take_peer_for(shard, peer, datagram)
            }
            // Stays on the shard (`MqttSide::confirm_when_subscribed`).
            ClusterRequest::Subscribed { .. } => return,
        };
        let found = self.take(location);
        if first && matches!(found, Ok(None)) && self.retries.len() < QUEUE_CAPACITY {
            let due = Instant::now() + MISS_RETRY_AFTER;
            self.retries.push_back((due, shard, r));
            return;
        }
        let ClusterRequest::Take {
            location,
            peer,
            datagram,
            identity,
        } = r
        else {
            return;
        };
        let mut release = None;
        let answer = match found {
            Ok(Some((endpoint, from))) => {
                if let Some(from) = &from {
                    release = Some((from.clone(), endpoint.name.clone()));
                }
                ClusterAnswer::Adopt {
                    endpoint: Box::new(endpoint),
                    peer,
                    datagram,
                    identity,
                    from: from.map(String::into_boxed_str),
                }
            }
            Ok(None) => {
                ClusterStats::add(&self.stats.take_misses, 1);
                ClusterAnswer::Miss {
                    location,
                    peer,
                    datagram,
                    identity,
                }
            }
            Err(e) => {
                ClusterStats::add(&self.stats.take_failures, 1);
                tracing::debug!(error = %e, location, "take from the Redis store failed");
                ClusterAnswer::Miss {
                    location,
                    peer,
                    datagram,
                    identity,
                }
            }
        };
        (self.deliver)(shard, answer);
        if let Some((node, name)) = release {
            self.tell_released(&node, location, &name);
        }
    }

    /// Runs TAKE_PEER for shard `shard`'s datagram from `peer` (an address none of its
    /// registrations has) and hands the answer to the shard: the registration the store
    /// has at that address, now this node's, or a miss. No second try: a device that
    /// speaks from an address its registration does not have yet sends an Update first.
    fn take_peer_for(&mut self, shard: u16, peer: std::net::SocketAddr, datagram: Vec<u8>) {
        ClusterStats::add(&self.stats.peer_lookups, 1);
        let (answer, release) = match self.take_peer(peer) {
            Ok(Some((endpoint, from))) => {
                ClusterStats::add(&self.stats.peer_takeovers, 1);
                let release = from
                    .clone()
                    .map(|f| (f, endpoint.location, endpoint.name.clone()));
                let answer = ClusterAnswer::Adopt {
                    endpoint: Box::new(endpoint),
                    peer,
                    datagram,
                    identity: None,
                    from: from.map(String::into_boxed_str),
                };
                (answer, release)
            }
            Ok(None) => (ClusterAnswer::PeerMiss { peer, datagram }, None),
            Err(e) => {
                // Not answered: the shard drops the device's datagrams until its lookup
                // times out, then asks again. A miss would be answered with a reset,
                // which ends an observation on the device for as long as Redis is away.
                ClusterStats::add(&self.stats.take_failures, 1);
                tracing::debug!(error = %e, %peer, "take by address from the Redis store failed");
                return;
            }
        };
        (self.deliver)(shard, answer);
        if let Some((node, location, name)) = release {
            self.tell_released(&node, location, &name);
        }
    }

    /// Publishes the command on the channel of the node holding `name`; when none does
    /// (or it is this node, or Redis is unreachable) hands it back to `shard`, which
    /// answers it as for an endpoint it does not hold.
    fn forward(
        &mut self,
        shard: u16,
        name: &str,
        topic: String,
        payload: Vec<u8>,
        expiry_s: Option<u32>,
    ) {
        let key = redis_scripts::reg_key(name);
        let owner: Option<String> = self
            .con
            .with(|c| redis::cmd("HGET").arg(&key).arg("owner").query(c))
            .ok()
            .flatten();
        if let Some(owner) = owner.filter(|o| *o != self.node) {
            let notice = redis_scripts::command_notice(&topic, &payload, expiry_s);
            let channel = redis_scripts::node_channel(&owner);
            let sent = self.con.with(|c| {
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&notice)
                    .query::<u64>(c)
            });
            // Delivered to a listening node (1 subscriber): its job now.
            if sent.is_ok_and(|n| n > 0) {
                ClusterStats::add(&self.stats.forwards_sent, 1);
                return;
            }
        }
        ClusterStats::add(&self.stats.forwards_unowned, 1);
        let back = ClusterAnswer::Command {
            topic,
            payload,
            expiry_s,
        };
        (self.deliver)(shard, back);
    }

    /// Tells node `node` that this node took `name` at `location` over (after the
    /// adoption went to the shard's mailbox: a command the old node forwards on
    /// hearing it finds the adoption ahead of it when both go to one shard).
    fn tell_released(&mut self, node: &str, location: u64, name: &str) {
        let notice = redis_scripts::release_notice(location, name);
        let channel = redis_scripts::node_channel(node);
        let sent = self
            .con
            .with(|c| redis::cmd("PUBLISH").arg(&channel).arg(&notice).exec(c));
        if sent.is_ok() {
            ClusterStats::add(&self.stats.releases_sent, 1);
        }
    }

    /// Publishes on node `node`'s channel that this node's subscription of `name`'s
    /// commands is in place. Not delivered (Redis unreachable, nobody listening): that
    /// node gives its kept subscription up at its deadline.
    fn unsubscribe_at(&mut self, node: &str, name: &str, location: u64) {
        let notice = redis_scripts::unsubscribe_notice(location, name);
        let channel = redis_scripts::node_channel(node);
        let sent = self
            .con
            .with(|c| redis::cmd("PUBLISH").arg(&channel).arg(&notice).exec(c));
        let counter = match sent {
            Ok(()) => &self.stats.unsubscribes_sent,
            Err(_) => &self.stats.unsubscribes_unsent,
        };
        ClusterStats::add(counter, 1);
    }

    /// Runs TAKE for `location`: the registration there, now this node's, with its
    /// previous owner when it was another node (to be told, [`tell_released`](Self::tell_released));
    /// None when there is none.
    fn take(
        &mut self,
        location: u64,
    ) -> Result<Option<(crate::lwm2m::endpoint::Endpoint, Option<String>)>, String> {
        let (take, node) = (&self.take, &self.node);
        let found = self.con.with(|c| {
            take.key(redis_scripts::loc_key(location))
                .arg(location)
                .arg(node)
                .arg(redis_scripts::PREFIX)
                .invoke::<Option<(String, Vec<u8>, String)>>(c)
        });
        let taken = self.taken(found)?;
        if taken.is_some() {
            ClusterStats::add(&self.stats.takeovers, 1);
        }
        Ok(taken)
    }

    /// Runs TAKE_PEER for `peer`: the plain registration whose record has that
    /// address, now this node's, with its previous owner when another node; None when
    /// the store has none there.
    fn take_peer(
        &mut self,
        peer: std::net::SocketAddr,
    ) -> Result<Option<(crate::lwm2m::endpoint::Endpoint, Option<String>)>, String> {
        let (take, node) = (&self.take_peer, &self.node);
        let found = self.con.with(|c| {
            take.key(redis_scripts::peer_key(&peer))
                .arg(node)
                .arg(redis_scripts::PREFIX)
                .arg(peer.to_string())
                .invoke::<Option<(String, Vec<u8>, String)>>(c)
        });
        self.taken(found)
    }

    /// What a take script answered: the registration decoded, with its previous owner
    /// when another node (None: the store had none); Redis's reachability recorded.
    fn taken(
        &mut self,
        found: Result<Option<(String, Vec<u8>, String)>, StoreError>,
    ) -> Result<Option<(crate::lwm2m::endpoint::Endpoint, Option<String>)>, String> {
        let found = match found {
            Ok(f) => {
                self.stats.set_reachable(true);
                f
            }
            Err(e) => {
                self.stats.set_reachable(self.con.is_connected());
                return Err(e.to_string());
            }
        };
        let Some((name, rec, previous)) = found else {
            return Ok(None);
        };
        let ep = record::decode(&rec, self.epoch_ms)
            .map_err(|e| format!("the record of {name:?} in Redis: {e}"))?;
        let from = (!previous.is_empty() && previous != self.node).then_some(previous);
        Ok(Some((ep, from)))
    }
}
