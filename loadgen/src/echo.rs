//! The UDP baseline: a recvmmsg/sendmmsg echo server (one SO_REUSEPORT socket and
//! thread per core), and the echo mode of the load run, where each device sends
//! CoAP-sized datagrams carrying their send time and counts the echoes.

use crate::stats::{add, Hist};
use crate::Shared;
use lwm2m_gateway::sim::{device_addr, device_index};
use mio::{Events, Interest, Poll, Token};
use netio::{RecvBatch, RecvBatchPktinfo, SendBatch, SendBatchPktinfo};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Runs the echo server: `threads` threads (0: one per core), each with its own
/// SO_REUSEPORT socket on `bind`, echoing every datagram to its sender in batches.
/// Returns only on error.
pub fn serve(bind: SocketAddr, threads: usize, batch: usize) -> io::Result<()> {
    let threads = if threads == 0 {
        netio::available_cores()
    } else {
        threads
    };
    let opts = netio::SocketOptions {
        reuse_port: true,
        rcvbuf: 16 << 20,
        sndbuf: 16 << 20,
    };
    let mut socks = Vec::new();
    let mut bind = bind;
    for _ in 0..threads {
        let s = netio::bind_udp(bind, &opts)?;
        bind = s.local_addr()?; // port 0: the others join the first one's port
        socks.push(s);
    }
    eprintln!("echo-server ready udp={bind} threads={threads}");
    let handles: Vec<_> = socks
        .into_iter()
        .map(|s| std::thread::spawn(move || echo_loop(s, batch)))
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| io::Error::other("echo thread panicked"))??;
    }
    Ok(())
}

fn echo_loop(sock: std::net::UdpSocket, batch: usize) -> io::Result<()> {
    let mut sock = mio::net::UdpSocket::from_std(sock);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut sock, Token(0), Interest::READABLE)?;
    let mut events = Events::with_capacity(8);
    let mut rx = RecvBatch::new(batch, 2048);
    let mut tx = SendBatch::new(batch);
    loop {
        poll.poll(&mut events, None)?;
        loop {
            let n = match rx.recv(&sock) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            for i in 0..n {
                let (peer, data, _) = rx.get(i);
                tx.push(peer, data);
            }
            while !tx.is_empty() {
                tx.flush(&sock)?;
                if !tx.is_empty() {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
    }
}

/// One echo-mode device thread: devices `base .. base + count`.
pub fn run_worker(sh: Arc<Shared>, base: u32, count: usize, threads: usize) -> io::Result<Hist> {
    let SocketAddr::V4(dest) = sh.opts.gateway else {
        return Err(io::Error::other("IPv4 target only"));
    };
    let opts = netio::SocketOptions {
        reuse_port: false,
        rcvbuf: 32 << 20,
        sndbuf: 32 << 20,
    };
    let std_sock = netio::bind_udp(SocketAddr::from(([0, 0, 0, 0], 0)), &opts)?;
    netio::enable_pktinfo(&std_sock)?;
    let mut sock = mio::net::UdpSocket::from_std(std_sock);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut sock, Token(0), Interest::READABLE)?;
    let mut events = Events::with_capacity(8);
    let mut rx = RecvBatchPktinfo::new(512, 2048);
    let mut tx = SendBatchPktinfo::new(512);
    let mut hist = Hist::new();
    let rate = sh.opts.rate / threads.max(1) as f64;
    let window = sh.opts.window.max(1) as u64;
    let size = sh.opts.size.max(16);
    let duration_us = (sh.opts.duration * 1e6) as u64;
    let start = sh.clock.us();
    let (mut sent, mut received, mut cursor) = (0u64, 0u64, 0usize);
    let count = count.max(1);
    loop {
        let now = sh.clock.us();
        let elapsed = now - start;
        let sending = elapsed < duration_us;
        if !sending && (received >= sent || elapsed > duration_us + 2_000_000) {
            break;
        }
        if sending {
            let target = if rate > 0.0 {
                (elapsed as f64 / 1e6 * rate) as u64
            } else {
                received + window
            };
            let mut burst = 0;
            while sent < target && burst < 512 {
                let li = cursor % count;
                cursor += 1;
                let from = device_addr(base + li as u32);
                tx.push_with(from, dest, |b| {
                    // A CoAP NON header, then the send time and padding.
                    b.extend_from_slice(&[0x50, 0x02, (sent >> 8) as u8, sent as u8]);
                    b.extend_from_slice(&now.to_be_bytes());
                    b.resize(b.len() + size - 12, 0xab);
                });
                sent += 1;
                burst += 1;
            }
            add(&sh.c.echo_sent, burst);
            let before = tx.failed();
            let _ = tx.flush(&sock);
            add(&sh.c.send_failed, tx.failed() - before);
        }
        let wait = if !tx.is_empty() || (rate <= 0.0 && sending && sent < received + window) {
            Duration::ZERO
        } else {
            Duration::from_millis(1)
        };
        poll.poll(&mut events, Some(wait))?;
        loop {
            let n = match rx.recv(&sock) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            let now = sh.clock.us();
            let mut got = 0;
            for k in 0..n {
                let (_, dst, data, _) = rx.get(k);
                let Some(g) = device_index(dst) else { continue };
                if g < base || g >= base + count as u32 || data.len() < 12 {
                    continue;
                }
                let t = u64::from_be_bytes(data[4..12].try_into().expect("8 bytes"));
                hist.record(now.saturating_sub(t));
                got += 1;
            }
            received += got;
            add(&sh.c.echo_received, got);
        }
        if sh.phase.load(Ordering::Relaxed) == crate::worker::PHASE_DONE {
            break;
        }
    }
    Ok(hist)
}
