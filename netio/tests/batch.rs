//! RecvBatch / SendBatch over real loopback sockets.

mod common;

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};

use common::{bind, recv_n};
use netio::{bind_udp, RecvBatch, SendBatch, SocketOptions};

fn payload(i: usize) -> Vec<u8> {
    // Sizes 0..1400, contents different for every datagram.
    let len = (i * 137) % 1400;
    (0..len).map(|j| (i * 31 + j) as u8).collect()
}

#[test]
fn batches_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<RecvBatch>();
    check::<SendBatch>();
    check::<netio::RecvBatchPktinfo>();
    check::<netio::SendBatchPktinfo>();
}

#[test]
fn hundred_datagrams_round_trip_in_order() {
    let rx = bind("127.0.0.1:0");
    let tx = bind("127.0.0.1:0");
    let to = rx.local_addr().unwrap();
    let mut out = SendBatch::new(16);
    for i in 0..100 {
        if i % 2 == 0 {
            out.push(to, &payload(i));
        } else {
            out.push_with(to, |buf| buf.extend_from_slice(&payload(i)));
        }
    }
    assert_eq!(out.len(), 100);
    assert_eq!(out.flush(&tx).unwrap(), 100);
    assert!(out.is_empty());
    assert_eq!(out.failed(), 0);

    let mut batch = RecvBatch::new(32, 1500);
    let got = recv_n(&rx, &mut batch, 100);
    assert_eq!(got.len(), 100);
    for (i, (peer, data, trunc)) in got.iter().enumerate() {
        assert_eq!(*peer, tx.local_addr().unwrap());
        assert_eq!(*data, payload(i), "datagram {i}");
        assert!(!trunc);
    }
    assert_eq!(batch.recv(&rx).unwrap_err().kind(), ErrorKind::WouldBlock);
}

#[test]
fn send_batch_is_reusable() {
    let rx = bind("127.0.0.1:0");
    let tx = bind("127.0.0.1:0");
    let to = rx.local_addr().unwrap();
    let mut out = SendBatch::new(4);
    let mut batch = RecvBatch::new(8, 64);
    for round in 0..5u8 {
        for k in 0..6u8 {
            out.push(to, &[round, k]);
        }
        assert_eq!(out.flush(&tx).unwrap(), 6);
        let got = recv_n(&rx, &mut batch, 6);
        let want: Vec<Vec<u8>> = (0..6).map(|k| vec![round, k]).collect();
        assert_eq!(got.into_iter().map(|g| g.1).collect::<Vec<_>>(), want);
    }
    out.push(to, b"dropped");
    out.clear();
    assert!(out.is_empty());
    assert_eq!(out.flush(&tx).unwrap(), 0);
}

#[test]
fn truncation_is_reported() {
    let rx = bind("127.0.0.1:0");
    let tx = bind("127.0.0.1:0");
    let to = rx.local_addr().unwrap();
    let long: Vec<u8> = (0..200u8).collect();
    let mut out = SendBatch::new(8);
    out.push(to, &long);
    out.push(to, &long[..64]);
    assert_eq!(out.flush(&tx).unwrap(), 2);

    let mut batch = RecvBatch::new(8, 64);
    let got = recv_n(&rx, &mut batch, 2);
    assert_eq!(
        got[0],
        (tx.local_addr().unwrap(), long[..64].to_vec(), true)
    );
    assert_eq!(
        got[1],
        (tx.local_addr().unwrap(), long[..64].to_vec(), false)
    );
}

#[test]
fn refused_datagram_is_dropped_and_the_rest_sent() {
    let rx = bind("127.0.0.1:0");
    let tx = bind("127.0.0.1:0");
    let to = rx.local_addr().unwrap();
    let mut out = SendBatch::new(8);
    out.push(to, b"one");
    out.push(to, b"two");
    out.push(to, &vec![0xAB; 70_000]); // over the UDP limit: EMSGSIZE
    out.push(to, b"three");
    // An IPv6 destination on an IPv4 socket: refused too (EAFNOSUPPORT).
    out.push("[::1]:9".parse().unwrap(), b"v6");
    out.push(to, b"four");
    assert_eq!(out.flush(&tx).unwrap(), 4);
    assert_eq!(out.failed(), 2);
    assert!(out.is_empty());

    let mut batch = RecvBatch::new(8, 2048);
    let got: Vec<Vec<u8>> = recv_n(&rx, &mut batch, 4)
        .into_iter()
        .map(|g| g.1)
        .collect();
    assert_eq!(got, [&b"one"[..], b"two", b"three", b"four"]);
}

#[test]
fn recv_on_empty_socket_would_block() {
    let rx = bind("127.0.0.1:0");
    let mut batch = RecvBatch::new(4, 64);
    assert_eq!(batch.recv(&rx).unwrap_err().kind(), ErrorKind::WouldBlock);
    assert_eq!(batch.len(), 0);
    assert!(batch.is_empty());
}

#[test]
fn recv_works_on_a_blocking_socket_without_blocking() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut batch = RecvBatch::new(4, 64);
    assert_eq!(batch.recv(&rx).unwrap_err().kind(), ErrorKind::WouldBlock);
}

#[test]
fn ipv6_round_trip() {
    let opts = SocketOptions {
        reuse_port: false,
        ..SocketOptions::default()
    };
    let addr: SocketAddr = "[::1]:0".parse().unwrap();
    let rx = match bind_udp(addr, &opts) {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::AddrNotAvailable => {
            eprintln!("no IPv6 loopback here, skipping: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let tx = bind_udp(addr, &opts).unwrap();
    let to = rx.local_addr().unwrap();
    let mut out = SendBatch::new(4);
    for i in 0..10 {
        out.push(to, &payload(i));
    }
    assert_eq!(out.flush(&tx).unwrap(), 10);

    let mut batch = RecvBatch::new(4, 1500);
    let got = recv_n(&rx, &mut batch, 10);
    for (i, (peer, data, trunc)) in got.into_iter().enumerate() {
        assert_eq!(peer, tx.local_addr().unwrap());
        assert!(peer.is_ipv6());
        assert_eq!(data, payload(i));
        assert!(!trunc);
    }

    // And back, to the IPv6 peer address as received.
    let mut reply = SendBatch::new(4);
    reply.push(tx.local_addr().unwrap(), b"pong");
    assert_eq!(reply.flush(&rx).unwrap(), 1);
    let got = recv_n(&tx, &mut batch, 1);
    assert_eq!(got[0], (to, b"pong".to_vec(), false));
}
