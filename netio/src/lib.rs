//! UDP sockets for the gateway and the load generator: `SO_REUSEPORT` binding,
//! `recvmmsg`/`sendmmsg` batching with preallocated buffers, `IP_PKTINFO`
//! source/destination addressing, CPU pinning, and TCP_NODELAY for a listener that
//! another library of the process opened (the embedded MQTT broker's).
//!
//! This crate is Linux-only and is the only place in the project where
//! `unsafe` is allowed; every `unsafe` block carries a `// SAFETY:` comment.
//!
//! ```
//! use netio::{bind_udp, RecvBatch, SendBatch, SocketOptions};
//!
//! let opts = SocketOptions { reuse_port: false, ..SocketOptions::default() };
//! let rx = bind_udp("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
//! let tx = bind_udp("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
//!
//! let mut out = SendBatch::new(64);
//! out.push(rx.local_addr().unwrap(), b"hello");
//! out.push_with(rx.local_addr().unwrap(), |buf| buf.extend_from_slice(b"world"));
//! assert_eq!(out.flush(&tx).unwrap(), 2);
//!
//! let mut batch = RecvBatch::new(64, 1500);
//! let n = batch.recv(&rx).unwrap(); // loopback delivers at once
//! assert_eq!(n, 2);
//! let (peer, payload, truncated) = batch.get(0);
//! assert_eq!((peer, payload, truncated), (tx.local_addr().unwrap(), &b"hello"[..], false));
//! ```

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod affinity;
mod msgvec;
mod pktinfo;
mod port_owners;
mod recv;
mod send;
mod sockaddr;
mod socket;
mod tcp_listener;

pub use affinity::{available_cores, pin_current_thread};
pub use pktinfo::{enable_pktinfo, RecvBatchPktinfo, SendBatchPktinfo};
pub use port_owners::foreign_udp_sockets;
pub use recv::RecvBatch;
pub use send::SendBatch;
pub use socket::{bind_udp, SocketOptions};
pub use tcp_listener::{for_each_own_socket, set_nodelay_on_own_listener};

/// Largest batch the kernel accepts in one `recvmmsg`/`sendmmsg` call
/// (`UIO_MAXIOV`); larger batches are clamped to it.
pub const MAX_BATCH: usize = 1024;
