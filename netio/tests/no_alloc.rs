//! Steady state allocates nothing: a counting global allocator watches a
//! warmed-up send/receive cycle on this thread.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::bind;
use netio::{enable_pktinfo, RecvBatch, RecvBatchPktinfo, SendBatch, SendBatchPktinfo};

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping only touches const-initialised thread-locals, which never
// allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from System via `alloc`/`realloc` above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's; `ptr` came from System.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn count() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            ALLOCS.with(|n| n.set(n.get() + 1));
        }
    });
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> u64 {
    ALLOCS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    ALLOCS.with(|n| n.get())
}

#[test]
fn warmed_up_batches_do_not_allocate() {
    let rx = bind("127.0.0.1:0");
    let tx = bind("0.0.0.0:0");
    enable_pktinfo(&rx).unwrap();
    let to = rx.local_addr().unwrap();
    let std::net::SocketAddr::V4(to4) = to else {
        panic!()
    };
    let from = std::net::Ipv4Addr::new(127, 0, 0, 1);
    let mut out = SendBatch::new(16);
    let mut out_pi = SendBatchPktinfo::new(16);
    let mut batch = RecvBatch::new(64, 1500);
    let mut batch_pi = RecvBatchPktinfo::new(64, 1500);
    let payload = [0x5Au8; 1000];

    let mut cycle = || {
        for i in 0..50 {
            out.push(to, &payload[..i * 20]);
            out_pi.push(from, to4, &payload[..i * 20]);
        }
        assert_eq!(out.flush(&tx).unwrap(), 50);
        assert_eq!(batch.recv(&rx).unwrap(), 50);
        assert_eq!(out_pi.flush(&tx).unwrap(), 50);
        assert_eq!(batch_pi.recv(&rx).unwrap(), 50);
        let mut bytes = 0;
        for i in 0..50 {
            bytes += batch.get(i).1.len() + batch_pi.get(i).2.len();
            assert_eq!(batch_pi.get(i).1, from);
        }
        assert_eq!(bytes, 2 * 20 * (0..50).sum::<usize>());
    };
    // The counter works:
    assert!(allocations_in(|| drop(std::hint::black_box(Vec::<u8>::with_capacity(10)))) > 0);
    cycle(); // warm up: the arenas grow to their working size
    assert_eq!(allocations_in(&mut cycle), 0);
}
