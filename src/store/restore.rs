//! Reading the store back at start: every record decoded (a damaged or foreign one
//! refuses the start) and handed to a shard.

use super::{Backend, StoreError};
use crate::lwm2m::endpoint::Endpoint;
use crate::lwm2m::publish::name_hash;
use crate::lwm2m::record::{self, RecordError};
use std::time::{Duration, Instant};

/// The registrations read back, by the shard that takes them.
pub struct Restored {
    pub shards: Vec<Vec<Endpoint>>,
    pub count: u64,
    pub elapsed: Duration,
}

/// Reads every record of `backend` for a process whose clock's zero is `epoch_ms` (Unix
/// ms), spread over `shards` by a hash of the name (a device whose datagrams reach
/// another shard is handed over there, as after a NAT rebinding).
pub fn load(
    backend: &mut dyn Backend,
    epoch_ms: u64,
    shards: usize,
) -> Result<Restored, StoreError> {
    let started = Instant::now();
    let shards = shards.max(1);
    let mut out: Vec<Vec<Endpoint>> = (0..shards).map(|_| Vec::new()).collect();
    let mut count = 0u64;
    let path = backend.describe();
    backend.load(&mut |name, bytes| {
        let ep = record::decode(bytes, epoch_ms).map_err(|e| match e {
            RecordError::Version(_) => StoreError::Incompatible {
                path: path.clone(),
                detail: format!("the record of endpoint {name:?}: {e}"),
            },
            _ => StoreError::Corrupt {
                path: path.clone(),
                detail: format!("the record of endpoint {name:?}: {e}"),
            },
        })?;
        if &*ep.name != name {
            return Err(StoreError::Corrupt {
                path: path.clone(),
                detail: format!(
                    "the record kept under {name:?} is endpoint {:?}'s",
                    &*ep.name
                ),
            });
        }
        out[name_hash(name) as usize % shards].push(ep);
        count += 1;
        Ok(())
    })?;
    Ok(Restored {
        shards: out,
        count,
        elapsed: started.elapsed(),
    })
}
