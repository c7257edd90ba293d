//! The start of the shards with a store: each shard takes its share of the restored
//! registrations into its core before any shard serves a device, so that a request for
//! any restored location finds it in the directory, wherever it lands.

use super::mail::ShardTimer;
use super::udp_shard::UdpShard;
use crate::lwm2m::endpoint::Endpoint;
use crate::lwm2m::Input;
use parking_lot::{Condvar, Mutex};
use shard::TimerWheel;

/// How many restored registrations a shard takes in before it drains its outputs.
const DRAIN_EVERY: usize = 4096;

/// Hands `restored` to the shard's core, draining its outputs (timers into the wheel,
/// subscriptions to the broker connections) as it goes.
pub(super) fn restore_into(
    app: &mut UdpShard,
    now_ms: u64,
    restored: Vec<Endpoint>,
    timers: &mut TimerWheel<ShardTimer>,
) {
    for (i, ep) in restored.into_iter().enumerate() {
        app.core.handle(now_ms, Input::Restore(Box::new(ep)));
        if i % DRAIN_EVERY == DRAIN_EVERY - 1 {
            app.route_outputs_at(now_ms, timers);
        }
    }
    app.route_outputs_at(now_ms, timers);
}

/// Holds every shard until all of them restored their registrations (or failed).
pub(super) struct StartGate {
    left: Mutex<usize>,
    all_in: Condvar,
}

impl StartGate {
    pub(super) fn new(shards: usize) -> Self {
        StartGate {
            left: Mutex::new(shards),
            all_in: Condvar::new(),
        }
    }

    /// A shard's place at the gate: it arrives once, when it calls [`Pass::wait`] or
    /// when it is dropped (a shard that failed before it got there).
    pub(super) fn pass(&self) -> Pass<'_> {
        Pass {
            gate: self,
            arrived: false,
        }
    }

    fn arrive(&self) {
        let mut left = self.left.lock();
        *left = left.saturating_sub(1);
        if *left == 0 {
            self.all_in.notify_all();
        }
    }
}

pub(super) struct Pass<'a> {
    gate: &'a StartGate,
    arrived: bool,
}

impl Pass<'_> {
    /// Arrives and waits for every other shard.
    pub(super) fn wait(mut self) {
        self.arrived = true;
        self.gate.arrive();
        let mut left = self.gate.left.lock();
        while *left > 0 {
            self.gate.all_in.wait(&mut left);
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if !self.arrived {
            self.gate.arrive();
        }
    }
}
