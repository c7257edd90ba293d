//! Helpers shared by the socket tests.
#![allow(dead_code)]

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use netio::{bind_udp, RecvBatch, RecvBatchPktinfo, SocketOptions};

/// Upper bound on waiting for datagrams that should already be queued
/// (loopback delivers synchronously); only there so a bug cannot hang the run.
const HANG_GUARD: Duration = Duration::from_secs(10);

pub fn opts() -> SocketOptions {
    SocketOptions {
        reuse_port: false,
        rcvbuf: 1 << 20,
        sndbuf: 0,
    }
}

pub fn bind(addr: &str) -> UdpSocket {
    bind_udp(addr.parse().unwrap(), &opts()).unwrap()
}

/// One received datagram: peer, payload, truncated.
pub type Got = (SocketAddr, Vec<u8>, bool);

/// Receives until `want` datagrams have arrived.
pub fn recv_n(sock: &UdpSocket, batch: &mut RecvBatch, want: usize) -> Vec<Got> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < want {
        match batch.recv(sock) {
            Ok(n) => {
                assert_eq!(n, batch.len());
                for i in 0..n {
                    let (peer, payload, trunc) = batch.get(i);
                    got.push((peer, payload.to_vec(), trunc));
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(
                    start.elapsed() < HANG_GUARD,
                    "only {} of {want} datagrams arrived",
                    got.len()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
    got
}

/// Like `recv_n` with pktinfo: peer, local destination, payload, truncated.
pub fn recv_n_pktinfo(
    sock: &UdpSocket,
    batch: &mut RecvBatchPktinfo,
    want: usize,
) -> Vec<(SocketAddr, Ipv4Addr, Vec<u8>, bool)> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < want {
        match batch.recv(sock) {
            Ok(n) => {
                for i in 0..n {
                    let (peer, dst, payload, trunc) = batch.get(i);
                    got.push((peer, dst, payload.to_vec(), trunc));
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(
                    start.elapsed() < HANG_GUARD,
                    "only {} of {want} datagrams arrived",
                    got.len()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
    got
}
