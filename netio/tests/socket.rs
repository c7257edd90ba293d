//! bind_udp and its options.

mod common;

use std::io::ErrorKind;
use std::net::SocketAddr;

use netio::{bind_udp, SocketOptions};
use socket2::SockRef;

#[test]
fn default_options() {
    assert_eq!(
        SocketOptions::default(),
        SocketOptions {
            reuse_port: true,
            rcvbuf: 0,
            sndbuf: 0
        }
    );
}

#[test]
fn reuse_port_lets_two_sockets_share_a_port() {
    let opts = SocketOptions::default();
    let a = bind_udp("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
    let addr = a.local_addr().unwrap();
    let b = bind_udp(addr, &opts).unwrap();
    assert_eq!(b.local_addr().unwrap(), addr);
    assert!(SockRef::from(&b).reuse_port().unwrap());
}

#[test]
fn without_reuse_port_the_second_bind_fails() {
    let opts = SocketOptions {
        reuse_port: false,
        ..SocketOptions::default()
    };
    let a = bind_udp("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
    let addr = a.local_addr().unwrap();
    let err = bind_udp(addr, &opts).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
    // A socket that did not ask for sharing is not joined by one that does.
    let err = bind_udp(addr, &SocketOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
}

#[test]
fn buffer_sizes_are_applied() {
    // Small enough to stay under any net.core.rmem_max/wmem_max.
    let (rcv, snd) = (96 * 1024, 80 * 1024);
    let opts = SocketOptions {
        reuse_port: false,
        rcvbuf: rcv,
        sndbuf: snd,
    };
    let s = bind_udp("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
    let r = SockRef::from(&s);
    // Linux doubles the requested value for bookkeeping overhead.
    let got_rcv = r.recv_buffer_size().unwrap();
    let got_snd = r.send_buffer_size().unwrap();
    assert!(got_rcv == rcv || got_rcv == 2 * rcv, "rcvbuf {got_rcv}");
    assert!(got_snd == snd || got_snd == 2 * snd, "sndbuf {got_snd}");
}

#[test]
fn socket_is_nonblocking() {
    let s = common::bind("127.0.0.1:0");
    let mut buf = [0u8; 16];
    assert_eq!(
        s.recv_from(&mut buf).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
}

#[test]
fn ipv6_bind() {
    let addr: SocketAddr = "[::1]:0".parse().unwrap();
    match bind_udp(addr, &SocketOptions::default()) {
        Ok(s) => assert!(s.local_addr().unwrap().is_ipv6()),
        Err(e) if e.kind() == ErrorKind::AddrNotAvailable => {
            eprintln!("no IPv6 loopback here: {e}")
        }
        Err(e) => panic!("{e}"),
    }
}
