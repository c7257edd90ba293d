//! The Bootstrap-Request (`POST /bs?ep=NAME[&pct=FORMAT]`), sequenced over the machines:
//! the name and the DTLS identity's right to it (`security.rs`, as for Register), a
//! retransmission or a restart of a bootstrap in progress (`bootstrap.rs`), admission
//! (the listener's `max_conn_rate` bucket of `registrations.rs`, and at most
//! [`MAX_RUNS`](super::bootstrap::MAX_RUNS) in progress), the configuration (asked of the
//! settings' `BootstrapSource`), the 2.04, and the run's start.
//!
//! Refusals: a missing or bad name 4.00; an identity that may not bootstrap the name 4.03;
//! no configuration 4.00 (4.03 over DTLS) and a `failed` message saying so; over the rate,
//! with too many in progress, or while the broker connections are congested 5.03 with
//! Max-Age. Nothing is written to a refused device.

use std::net::SocketAddr;

use super::bootstrap::{self, BootstrapStatus, Known, MAX_RUNS};
use super::core::cx;
use super::output::ShardMsg;
use super::registration::{check_endpoint_name, BadRequest};
use super::shed::SHED_MAX_AGE_S;
use super::template::Vars;
use super::ShardCore;
use crate::coap::{codes, opt, Message};

/// Why a Bootstrap-Request was refused (an index into `CoreStats::bootstraps_refused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BsRefusal {
    /// No or a bad endpoint name (4.00).
    Malformed,
    /// The DTLS identity may not bootstrap the name (4.03).
    Forbidden,
    /// No configuration for the name (4.00, over DTLS 4.03).
    NoConfiguration,
    /// Over the listener's `max_conn_rate` (5.03).
    RateLimited,
    /// Too many bootstraps in progress on the shard, or the broker connections are
    /// congested (5.03).
    Busy,
}

impl BsRefusal {
    pub const ALL: [BsRefusal; 5] = [
        Self::Malformed,
        Self::Forbidden,
        Self::NoConfiguration,
        Self::RateLimited,
        Self::Busy,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The `reason` label in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Forbidden => "forbidden",
            Self::NoConfiguration => "no_configuration",
            Self::RateLimited => "rate_limited",
            Self::Busy => "busy",
        }
    }
}

/// The error of a device with no configuration.
pub const NO_CONFIGURATION: &str = "no bootstrap configuration for this endpoint";

impl ShardCore {
    /// A `POST /bs` from `peer`.
    pub(super) fn on_bootstrap_request(
        &mut self,
        now: u64,
        peer: SocketAddr,
        msg: &Message<'_>,
        len: usize,
    ) {
        let Some(source) = self.settings.bootstrap_configs.clone() else {
            self.stats.not_found += 1;
            self.reply_error(peer, msg, codes::NOT_FOUND, "", len);
            return;
        };
        let mut ep = None;
        let mut pct = None;
        for q in msg.option_values(opt::URI_QUERY) {
            let Ok(q) = std::str::from_utf8(q) else {
                continue;
            };
            if let Some(v) = q.strip_prefix("ep=") {
                ep = Some(v);
            } else if let Some(v) = q.strip_prefix("pct=") {
                pct = v.parse::<u16>().ok();
            }
        }
        let name = match check_endpoint_name(ep) {
            Ok(n) => n,
            Err(BadRequest(text)) => {
                self.refuse_bootstrap(peer, msg, BsRefusal::Malformed, &text, len);
                return;
            }
        };
        let secure = self.security.secure();
        if let Err(e) = self.identity_may_act(name, false) {
            self.refuse_bootstrap(peer, msg, BsRefusal::Forbidden, &e, len);
            return;
        }
        let known = self.boot.known(peer, name, msg.mid, secure);
        if let Known::Retransmission = known {
            self.stats.duplicates += 1;
            let r = self.reply_header(msg, codes::CHANGED);
            self.write_reply(peer, &r, None);
            return;
        }
        if self.out.shed_next() {
            // The broker connections are congested: a bootstrap would publish
            // progress nobody may get; the device comes back (as Registers do).
            self.stats.bootstraps_refused[BsRefusal::Busy.index()] += 1;
            self.reply_unavailable(peer, msg, SHED_MAX_AGE_S);
            return;
        }
        if matches!(known, Known::New) && self.boot.len() >= MAX_RUNS {
            self.stats.bootstraps_refused[BsRefusal::Busy.index()] += 1;
            self.reply_unavailable(peer, msg, 5);
            return;
        }
        // A restart costs a token too: a flood of requests naming a device in progress
        // (from spoofed addresses) is held to the rate like new ones.
        if let Err(max_age) = self.regs.take_token(now, secure) {
            self.stats.bootstraps_refused[BsRefusal::RateLimited.index()] += 1;
            self.reply_unavailable(peer, msg, max_age);
            return;
        }
        if let Known::Restart = known {
            self.boot.drop_runs(peer, name);
            self.stats.bootstraps_restarted += 1;
        }
        let mountpoint = self.bootstrap_mountpoint(name, peer);
        let Some(config) = source.config_for(name) else {
            self.refuse_bootstrap(peer, msg, BsRefusal::NoConfiguration, NO_CONFIGURATION, len);
            let topic = mountpoint + &self.settings.bootstrap.topic;
            let cx = cx!(self);
            bootstrap::publish(
                cx,
                &topic,
                name,
                BootstrapStatus::Failed,
                Some(NO_CONFIGURATION),
            );
            let error = Some(NO_CONFIGURATION.to_string());
            bootstrap::event(cx, name, BootstrapStatus::Failed, error, Vec::new());
            return;
        };
        let r = self.reply_header(msg, codes::CHANGED);
        self.write_reply(peer, &r, None);
        // The other shards end an older run of the same device (another address).
        for to in (0..self.shards).filter(|&s| s != self.shard) {
            let msg = ShardMsg::BootstrapStarted {
                name: name.into(),
                from: self.shard,
                at_ms: now,
            };
            self.out.to_shards.push((to, msg));
        }
        let format = bootstrap::write_format(pct);
        self.boot.start(
            cx!(self),
            name,
            peer,
            secure,
            msg.mid,
            mountpoint,
            &config,
            format,
        );
    }

    /// The mountpoint of the device's topics, rendered with its endpoint name for every
    /// name placeholder (a bootstrapping device has no registration parameters).
    fn bootstrap_mountpoint(&self, name: &str, peer: SocketAddr) -> String {
        let host = peer.ip().to_string();
        let vars = Vars {
            endpoint_name: name,
            clientid: name,
            username: name,
            peerhost: &host,
        };
        let mut s = String::new();
        self.settings.mountpoint.render(&vars, &mut s);
        s
    }

    fn refuse_bootstrap(
        &mut self,
        peer: SocketAddr,
        msg: &Message<'_>,
        why: BsRefusal,
        text: &str,
        len: usize,
    ) {
        self.stats.bootstraps_refused[why.index()] += 1;
        let code = match why {
            BsRefusal::Forbidden => codes::FORBIDDEN,
            BsRefusal::NoConfiguration if self.security.secure() => codes::FORBIDDEN,
            _ => codes::BAD_REQUEST,
        };
        self.reply_error(peer, msg, code, text, len);
    }
}
