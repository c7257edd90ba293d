//! IP_PKTINFO: many source addresses from one socket.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use common::{bind, recv_n, recv_n_pktinfo};
use netio::{enable_pktinfo, RecvBatch, RecvBatchPktinfo, SendBatch, SendBatchPktinfo};

#[test]
fn send_from_and_receive_at_many_loopback_addresses() {
    let multi = bind("0.0.0.0:0");
    enable_pktinfo(&multi).unwrap();
    let port = multi.local_addr().unwrap().port();
    let plain = bind("127.0.0.1:0");
    let plain_addr = match plain.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        a => panic!("{a}"),
    };

    let a = Ipv4Addr::new(127, 0, 0, 7);
    let b = Ipv4Addr::new(127, 3, 4, 5);
    let mut out = SendBatchPktinfo::new(8);
    out.push(a, plain_addr, b"from a");
    out.push(b, plain_addr, b"from b");
    out.push(a, plain_addr, b"a again");
    assert_eq!(out.len(), 3);
    assert_eq!(out.flush(&multi).unwrap(), 3);
    assert_eq!(out.failed(), 0);
    assert!(out.is_empty());

    let mut batch = RecvBatch::new(8, 256);
    let got = recv_n(&plain, &mut batch, 3);
    let sa = |ip| SocketAddr::V4(SocketAddrV4::new(ip, port));
    assert_eq!(got[0], (sa(a), b"from a".to_vec(), false));
    assert_eq!(got[1], (sa(b), b"from b".to_vec(), false));
    assert_eq!(got[2], (sa(a), b"a again".to_vec(), false));

    // Replies come back to the one 0.0.0.0 socket, tagged with the address
    // they were sent to.
    let mut reply = SendBatch::new(8);
    reply.push(sa(b), b"to b");
    reply.push(sa(a), b"to a");
    assert_eq!(reply.flush(&plain).unwrap(), 2);
    let mut batch = RecvBatchPktinfo::new(8, 256);
    let got = recv_n_pktinfo(&multi, &mut batch, 2);
    let from = SocketAddr::V4(plain_addr);
    assert_eq!(got[0], (from, b, b"to b".to_vec(), false));
    assert_eq!(got[1], (from, a, b"to a".to_vec(), false));
}

#[test]
fn non_local_source_is_refused_alone() {
    let multi = bind("0.0.0.0:0");
    let plain = bind("127.0.0.1:0");
    let SocketAddr::V4(to) = plain.local_addr().unwrap() else {
        panic!()
    };
    let mut out = SendBatchPktinfo::new(8);
    out.push(Ipv4Addr::new(127, 0, 0, 9), to, b"ok 1");
    // TEST-NET-3, not an address of this host.
    out.push(Ipv4Addr::new(203, 0, 113, 1), to, b"refused");
    out.push(Ipv4Addr::UNSPECIFIED, to, b"ok 2");
    assert_eq!(out.flush(&multi).unwrap(), 2);
    assert_eq!(out.failed(), 1);

    let mut batch = RecvBatch::new(8, 64);
    let got = recv_n(&plain, &mut batch, 2);
    assert_eq!(got[0].1, b"ok 1");
    assert_eq!(got[0].0.ip(), Ipv4Addr::new(127, 0, 0, 9));
    assert_eq!(got[1].1, b"ok 2");
}

#[test]
fn truncation_with_pktinfo() {
    let multi = bind("0.0.0.0:0");
    enable_pktinfo(&multi).unwrap();
    let port = multi.local_addr().unwrap().port();
    let plain = bind("127.0.0.1:0");
    let mut out = SendBatch::new(4);
    out.push(
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 9, 9, 9), port)),
        &[7; 100],
    );
    assert_eq!(out.flush(&plain).unwrap(), 1);
    let mut batch = RecvBatchPktinfo::new(4, 10);
    let got = recv_n_pktinfo(&multi, &mut batch, 1);
    assert_eq!(got[0].1, Ipv4Addr::new(127, 9, 9, 9));
    assert_eq!(got[0].2, vec![7; 10]);
    assert!(got[0].3);
}
