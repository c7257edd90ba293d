//! Batched send with `sendmmsg`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use crate::msgvec::{empty_iovec, empty_mmsghdr, filled, RawVec};
use crate::pktinfo::{write_pktinfo_cmsg, PKTINFO_SPACE_WORDS};
use crate::sockaddr::RawAddr;

/// One queued datagram: a range of the arena, its destination and (with
/// pktinfo) its source address.
struct Entry {
    off: usize,
    len: usize,
    to: SocketAddr,
    from: Ipv4Addr,
}

/// The queue and `sendmmsg` driver shared by [`SendBatch`] and
/// `SendBatchPktinfo`.
pub(crate) struct SendCore {
    max_batch: usize,
    pktinfo: bool,
    arena: Vec<u8>,
    entries: Vec<Entry>,
    /// Entries before `head` are already sent or dropped.
    head: usize,
    failed: u64,
    // Per-call scratch, `max_batch` long, rebuilt for every chunk.
    addrs: Vec<RawAddr>,
    ctrl: Vec<u64>,
    iovs: RawVec<libc::iovec>,
    hdrs: RawVec<libc::mmsghdr>,
}

impl SendCore {
    pub(crate) fn new(max_batch: usize, pktinfo: bool) -> Self {
        let max_batch = max_batch.clamp(1, crate::MAX_BATCH);
        let ctrl_len = if pktinfo {
            max_batch * PKTINFO_SPACE_WORDS
        } else {
            0
        };
        SendCore {
            max_batch,
            pktinfo,
            arena: Vec::new(),
            entries: Vec::new(),
            head: 0,
            failed: 0,
            addrs: filled(max_batch, RawAddr::empty),
            ctrl: vec![0; ctrl_len],
            iovs: RawVec(filled(max_batch, empty_iovec)),
            hdrs: RawVec(filled(max_batch, empty_mmsghdr)),
        }
    }

    pub(crate) fn push_with(
        &mut self,
        to: SocketAddr,
        from: Ipv4Addr,
        f: impl FnOnce(&mut Vec<u8>),
    ) {
        let off = self.arena.len();
        f(&mut self.arena);
        assert!(
            self.arena.len() >= off,
            "SendBatch::push_with: the closure must only append to the buffer"
        );
        let len = self.arena.len() - off;
        self.entries.push(Entry { off, len, to, from });
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len() - self.head
    }

    pub(crate) fn failed(&self) -> u64 {
        self.failed
    }

    pub(crate) fn clear(&mut self) {
        self.arena.clear();
        self.entries.clear();
        self.head = 0;
    }

    /// Fills the headers for the next chunk of queued datagrams; returns how
    /// many.
    fn prepare(&mut self) -> usize {
        let pending = &self.entries[self.head..];
        let n = pending.len().min(self.max_batch);
        let mut ctrl = self.ctrl.chunks_exact_mut(PKTINFO_SPACE_WORDS);
        let slots = pending
            .iter()
            .zip(self.addrs.iter_mut())
            .zip(self.iovs.iter_mut())
            .zip(self.hdrs.iter_mut());
        for (((e, addr), iov), hdr) in slots.take(n) {
            let payload = &self.arena[e.off..e.off + e.len];
            // The kernel only reads through this pointer (sendmmsg).
            iov.iov_base = payload.as_ptr().cast_mut().cast();
            iov.iov_len = payload.len();
            let m = &mut hdr.msg_hdr;
            m.msg_namelen = addr.set(&e.to);
            m.msg_name = (addr as *mut RawAddr).cast();
            m.msg_iov = iov;
            m.msg_iovlen = 1;
            m.msg_control = std::ptr::null_mut();
            m.msg_controllen = 0;
            m.msg_flags = 0;
            hdr.msg_len = 0;
            if self.pktinfo {
                let c = ctrl.next().expect("one control slot per message");
                write_pktinfo_cmsg(m, c, e.from);
            }
        }
        n
    }

    pub(crate) fn flush(&mut self, fd: RawFd) -> io::Result<usize> {
        self.drive(|hdrs| {
            // SAFETY: `hdrs` are initialised mmsghdrs that `prepare` just
            // pointed at live buffers owned by this SendCore (addresses,
            // iovecs, arena ranges checked by slice indexing, control
            // buffers) with their true lengths; nothing is mutated until the
            // call returns, and sendmmsg only reads them (it writes msg_len).
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    hdrs.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        })
    }

    /// The flush loop, with the system call passed in (tests use a fake).
    fn drive(
        &mut self,
        mut send: impl FnMut(&mut [libc::mmsghdr]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let mut sent = 0;
        while self.head < self.entries.len() {
            let n = self.prepare();
            match send(&mut self.hdrs[..n]) {
                Ok(0) => {
                    // sendmmsg reports a failure of the first message as an
                    // error, so 0 should not happen; treat it as "not now".
                    self.compact();
                    return Ok(sent);
                }
                Ok(k) => {
                    let k = k.min(n);
                    self.head += k;
                    sent += k;
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::EAGAIN) => {
                        self.compact();
                        return Ok(sent);
                    }
                    Some(libc::EBADF) | Some(libc::ENOTSOCK) | Some(libc::EFAULT) => {
                        self.compact();
                        return Err(e);
                    }
                    // Anything else is about the first message of the chunk
                    // (EMSGSIZE, ENETUNREACH, EHOSTUNREACH, EPERM, EACCES,
                    // ECONNREFUSED, EAFNOSUPPORT, EINVAL, ENOBUFS...): drop it
                    // and go on with the rest.
                    _ => {
                        self.head += 1;
                        self.failed += 1;
                    }
                },
            }
        }
        self.clear();
        Ok(sent)
    }

    /// Drops the finished entries and moves the unsent bytes to the front of
    /// the arena, so a queue that is never fully drained does not grow.
    fn compact(&mut self) {
        if self.head == 0 {
            return;
        }
        if self.head >= self.entries.len() {
            self.clear();
            return;
        }
        let base = self.entries[self.head].off;
        self.arena.copy_within(base.., 0);
        self.arena.truncate(self.arena.len() - base);
        self.entries.drain(..self.head);
        for e in &mut self.entries {
            e.off -= base;
        }
        self.head = 0;
    }
}

/// Outgoing datagrams queued in one reusable arena and sent with `sendmmsg`.
///
/// `max_batch` is clamped to `1..=`[`MAX_BATCH`](crate::MAX_BATCH). Once the
/// arena and queue have grown to their working size, pushing and flushing
/// allocate nothing.
pub struct SendBatch {
    core: SendCore,
}

impl SendBatch {
    pub fn new(max_batch: usize) -> Self {
        SendBatch {
            core: SendCore::new(max_batch, false),
        }
    }

    /// Queues a copy of `payload` for `to`.
    pub fn push(&mut self, to: SocketAddr, payload: &[u8]) {
        self.push_with(to, |buf| buf.extend_from_slice(payload));
    }

    /// Queues a datagram for `to` that `f` writes directly into the arena.
    /// `f` must only append to the vector; everything it appends is the
    /// datagram.
    ///
    /// # Panics
    /// If `f` shortens the vector.
    pub fn push_with(&mut self, to: SocketAddr, f: impl FnOnce(&mut Vec<u8>)) {
        self.core.push_with(to, Ipv4Addr::UNSPECIFIED, f);
    }

    /// Datagrams queued and not yet sent.
    pub fn len(&self) -> usize {
        self.core.len()
    }

    pub fn is_empty(&self) -> bool {
        self.core.len() == 0
    }

    /// Sends as many queued datagrams as the socket takes, `max_batch` per
    /// `sendmmsg`. Returns `Ok(sent)`. On `WouldBlock` the unsent datagrams
    /// stay queued (flush again when the socket is writable). A datagram the
    /// kernel refuses on its own (`EMSGSIZE`, `ENETUNREACH`, `EPERM`,
    /// `ECONNREFUSED`, `ENOBUFS`, ...) is dropped and counted in
    /// [`failed`](SendBatch::failed). `Err` only for errors about the socket
    /// itself (`EBADF`, `ENOTSOCK`, `EFAULT`); the unsent datagrams then stay
    /// queued.
    pub fn flush(&mut self, fd: &impl AsRawFd) -> io::Result<usize> {
        self.core.flush(fd.as_raw_fd())
    }

    /// Datagrams dropped by `flush` since this batch was created.
    pub fn failed(&self) -> u64 {
        self.core.failed()
    }

    /// Discards every queued datagram (`failed` is kept).
    pub fn clear(&mut self) {
        self.core.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    fn pending(core: &SendCore) -> Vec<Vec<u8>> {
        core.entries[core.head..]
            .iter()
            .map(|e| core.arena[e.off..e.off + e.len].to_vec())
            .collect()
    }

    fn err(code: i32) -> io::Result<usize> {
        Err(io::Error::from_raw_os_error(code))
    }

    fn queue(n: u8, max_batch: usize) -> SendCore {
        let mut core = SendCore::new(max_batch, false);
        for i in 0..n {
            core.push_with(to(), Ipv4Addr::UNSPECIFIED, |b| {
                b.extend_from_slice(&[i; 3])
            });
        }
        core
    }

    #[test]
    fn chunks_of_max_batch() {
        let mut core = queue(7, 3);
        let mut calls = Vec::new();
        let sent = core
            .drive(|h| {
                calls.push(h.len());
                Ok(h.len())
            })
            .unwrap();
        assert_eq!(sent, 7);
        assert_eq!(calls, [3, 3, 1]);
        assert_eq!(core.len(), 0);
        assert!(core.arena.is_empty());
    }

    #[test]
    fn would_block_keeps_the_rest_and_compacts() {
        let mut core = queue(5, 8);
        let mut script = vec![Ok(2), err(libc::EAGAIN)].into_iter();
        assert_eq!(core.drive(|_| script.next().unwrap()).unwrap(), 2);
        assert_eq!(core.len(), 3);
        assert_eq!(core.head, 0);
        assert_eq!(pending(&core), [vec![2; 3], vec![3; 3], vec![4; 3]]);
        assert_eq!(core.arena.len(), 9);
        core.push_with(to(), Ipv4Addr::UNSPECIFIED, |b| b.push(7));
        assert_eq!(pending(&core).last().unwrap(), &vec![7]);
        assert_eq!(core.drive(|h| Ok(h.len())).unwrap(), 4);
        assert_eq!(core.len(), 0);
        assert_eq!(core.failed(), 0);
    }

    #[test]
    fn refused_datagram_is_dropped_and_counted() {
        let mut core = queue(4, 8);
        let mut script = vec![Ok(1), err(libc::EMSGSIZE), err(libc::EINTR), Ok(2)].into_iter();
        assert_eq!(core.drive(|_| script.next().unwrap()).unwrap(), 3);
        assert_eq!(core.failed(), 1);
        assert_eq!(core.len(), 0);
    }

    #[test]
    fn socket_error_is_returned_and_queue_kept() {
        let mut core = queue(3, 8);
        let mut script = vec![Ok(1), err(libc::EBADF)].into_iter();
        let e = core.drive(|_| script.next().unwrap()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        assert_eq!(pending(&core), [vec![1; 3], vec![2; 3]]);
    }

    #[test]
    #[should_panic(expected = "only append")]
    fn push_with_must_not_shrink() {
        let mut core = queue(1, 8);
        core.push_with(to(), Ipv4Addr::UNSPECIFIED, |b| b.clear());
    }
}
