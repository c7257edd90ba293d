//! UDP sockets for the gateway and the load generator: `SO_REUSEPORT` binding,
//! `recvmmsg`/`sendmmsg` batching with preallocated buffers, `IP_PKTINFO`
//! source/destination addressing, and CPU pinning.
//!
//! This crate is Linux-only and is the only place in the project where
//! `unsafe` is allowed; every `unsafe` block carries a `// SAFETY:` comment.

mod affinity;
mod msgvec;
mod pktinfo;
mod recv;
mod send;
mod sockaddr;
mod socket;

pub use affinity::{available_cores, pin_current_thread};
pub use pktinfo::{enable_pktinfo, RecvBatchPktinfo, SendBatchPktinfo};
pub use recv::RecvBatch;
pub use send::SendBatch;
pub use socket::{bind_udp, SocketOptions};

/// Largest batch the kernel accepts in one `recvmmsg`/`sendmmsg` call
/// (`UIO_MAXIOV`); larger batches are clamped to it.
pub const MAX_BATCH: usize = 1024;
