//! The core's side of the store: the records of changed registrations written out when
//! the outputs are drained, and registrations read back at start taken in again.

use super::core::cx;
use super::endpoint::Endpoint;
use super::output::StoreChange;
use super::record;
use super::ShardCore;

impl ShardCore {
    /// A registration read back from the store (`Input::Restore`): claimed in the
    /// directory, its lifetime timer armed and its command filter subscribed, as a
    /// Register would, with nothing published and no record written (the store has it).
    /// A deadline already passed ends it at the timer's first turn (`expired`).
    pub(super) fn restore(&mut self, ep: Endpoint) {
        if self.table.find_name(&ep.name).is_some()
            || self.table.find_location(ep.location).is_some()
            || self.cluster.is_registered(&ep.name)
            || !self.cluster.location_free(ep.location)
        {
            // A store holds one record per name; a second copy is refused, not merged.
            self.stats.restore_refused += 1;
            return;
        }
        let claimed =
            self.cluster
                .claim(cx!(self), &ep.name, ep.location, ep.secure, &ep.mountpoint);
        if claimed.is_err() {
            self.stats.restore_refused += 1;
            return;
        }
        self.security.registration_here(ep.secure);
        let slot = self.table.insert(ep);
        self.arm_expiry(slot);
        let ep = self.table.get(slot).expect("inserted");
        self.cluster.registered(cx!(self), ep);
        self.stats.restored += 1;
    }

    /// The records of the registrations that changed since the last drain, once each
    /// (nothing when the settings keep no store).
    pub(super) fn drain_records(&mut self, mut f: impl FnMut(StoreChange)) {
        if self.out.store_dirty.is_empty() {
            return;
        }
        let mut dirty = std::mem::take(&mut self.out.store_dirty);
        let mut claimed = std::mem::take(&mut self.out.store_claimed);
        if self.settings.store_records {
            dirty.sort_unstable();
            dirty.dedup();
            claimed.sort_unstable();
            let epoch = self.settings.clock_epoch_ms;
            for &slot in &dirty {
                // Gone meanwhile (removed: its removal is out; moved: the new shard writes it).
                let Some(ep) = self.table.get(slot) else {
                    continue;
                };
                let mut bytes = Vec::with_capacity(256);
                record::encode(ep, epoch, &mut bytes);
                self.stats.records_written += 1;
                f(StoreChange::Put {
                    name: ep.name.clone(),
                    location: ep.location,
                    record: bytes,
                    claim: claimed.binary_search(&slot).is_ok(),
                });
            }
        }
        dirty.clear();
        claimed.clear();
        self.out.store_dirty = dirty;
        self.out.store_claimed = claimed;
    }

    /// A registration left (`register.rs` `remove_endpoint`): its record goes.
    pub(super) fn record_removed(&mut self, ep: &Endpoint) {
        if self.settings.store_records {
            self.out.store.push(StoreChange::Remove {
                name: ep.name.clone(),
                location: ep.location,
            });
        }
    }
}
