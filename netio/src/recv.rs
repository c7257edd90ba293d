//! Batched receive with `recvmmsg`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};

use crate::msgvec::{empty_iovec, empty_mmsghdr, filled, RawVec};
use crate::sockaddr::{empty_storage, from_storage};

/// Reported for a datagram whose peer address is not IPv4/IPv6 (never seen
/// on UDP sockets in practice).
const UNKNOWN_PEER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// The machinery shared by [`RecvBatch`] and `RecvBatchPktinfo`: `batch`
/// slots of `buf_size` bytes, each with room for a peer address and
/// (optionally) `ctrl_words * 8` bytes of control messages.
pub(crate) struct RecvCore {
    buf_size: usize,
    bufs: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    /// Control-message space, u64 words so every slot is aligned for `cmsghdr`.
    ctrl: Vec<u64>,
    ctrl_words: usize,
    iovs: RawVec<libc::iovec>,
    hdrs: RawVec<libc::mmsghdr>,
    len: usize,
}

impl RecvCore {
    pub(crate) fn new(batch: usize, buf_size: usize, ctrl_words: usize) -> Self {
        let batch = batch.clamp(1, crate::MAX_BATCH);
        let buf_size = buf_size.max(1);
        let total = batch
            .checked_mul(buf_size)
            .expect("RecvBatch: batch * buf_size overflows");
        RecvCore {
            buf_size,
            bufs: vec![0; total],
            names: filled(batch, empty_storage),
            ctrl: vec![0; batch * ctrl_words],
            ctrl_words,
            iovs: RawVec(filled(batch, empty_iovec)),
            hdrs: RawVec(filled(batch, empty_mmsghdr)),
            len: 0,
        }
    }

    /// Points every header at its slot again (the batch may have moved, and
    /// the kernel overwrote the lengths last time).
    fn prepare(&mut self) {
        let name_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let ctrl_bytes = self.ctrl_words * 8;
        let mut ctrl = self.ctrl.chunks_exact_mut(self.ctrl_words.max(1));
        let slots = self
            .bufs
            .chunks_exact_mut(self.buf_size)
            .zip(self.names.iter_mut())
            .zip(self.iovs.iter_mut())
            .zip(self.hdrs.iter_mut());
        for (((buf, name), iov), hdr) in slots {
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = buf.len();
            let m = &mut hdr.msg_hdr;
            m.msg_name = (name as *mut libc::sockaddr_storage).cast();
            m.msg_namelen = name_len;
            m.msg_iov = iov;
            m.msg_iovlen = 1;
            match ctrl.next() {
                Some(c) if ctrl_bytes > 0 => {
                    m.msg_control = c.as_mut_ptr().cast();
                    m.msg_controllen = ctrl_bytes as _;
                }
                _ => {
                    m.msg_control = std::ptr::null_mut();
                    m.msg_controllen = 0;
                }
            }
            m.msg_flags = 0;
            hdr.msg_len = 0;
        }
    }

    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.len = 0;
        self.prepare();
        let vlen = self.hdrs.len() as libc::c_uint;
        loop {
            // SAFETY: `hdrs` holds `vlen` initialised mmsghdrs whose name,
            // iovec and control pointers were just set by `prepare` to
            // buffers owned by `self`, with their true sizes; none of those
            // buffers is borrowed or moved until the call returns. The
            // kernel writes at most the given lengths. A null timeout is
            // allowed; MSG_DONTWAIT makes the call non-blocking.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    vlen,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                self.len = (n as usize).min(self.hdrs.len());
                return Ok(self.len);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Slots: the most datagrams one receive returns.
    pub(crate) fn capacity(&self) -> usize {
        self.names.len()
    }

    /// The message header of datagram `i` of the last receive.
    pub(crate) fn hdr(&self, i: usize) -> &libc::msghdr {
        assert!(
            i < self.len,
            "datagram index {i} out of range (len {})",
            self.len
        );
        &self.hdrs[i].msg_hdr
    }

    pub(crate) fn get(&self, i: usize) -> (SocketAddr, &[u8], bool) {
        let hdr = self.hdr(i);
        let n = (self.hdrs[i].msg_len as usize).min(self.buf_size);
        let start = i * self.buf_size;
        let peer = from_storage(&self.names[i], hdr.msg_namelen).unwrap_or(UNKNOWN_PEER);
        let truncated = hdr.msg_flags & libc::MSG_TRUNC != 0;
        (peer, &self.bufs[start..start + n], truncated)
    }
}

/// A preallocated `recvmmsg` batch: `batch` slots of `buf_size` bytes,
/// allocated once and reused by every [`recv`](RecvBatch::recv).
///
/// `batch` is clamped to `1..=`[`MAX_BATCH`](crate::MAX_BATCH) and `buf_size`
/// to at least 1.
pub struct RecvBatch {
    core: RecvCore,
}

impl RecvBatch {
    pub fn new(batch: usize, buf_size: usize) -> Self {
        RecvBatch {
            core: RecvCore::new(batch, buf_size, 0),
        }
    }

    /// One `recvmmsg(MSG_DONTWAIT)` into the slots. `Ok(n)` datagrams
    /// (n ≥ 1); `Err(WouldBlock)` when nothing is queued. `EINTR` is retried.
    pub fn recv(&mut self, fd: &impl AsRawFd) -> io::Result<usize> {
        self.core.recv(fd.as_raw_fd())
    }

    /// Datagrams held from the last `recv` (0 after an error).
    pub fn len(&self) -> usize {
        self.core.len()
    }

    pub fn is_empty(&self) -> bool {
        self.core.len() == 0
    }

    /// The batch size: the most datagrams one [`recv`](RecvBatch::recv) returns. A receive
    /// that returned fewer emptied the socket's queue at that moment.
    pub fn capacity(&self) -> usize {
        self.core.capacity()
    }

    /// Datagram `i` of the last `recv`: peer address, payload, and whether it
    /// was truncated (it was longer than `buf_size`; the payload holds its
    /// first `buf_size` bytes). Peers on a dual-stack IPv6 socket appear as
    /// IPv4-mapped IPv6 addresses, as the kernel reports them.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn get(&self, i: usize) -> (SocketAddr, &[u8], bool) {
        self.core.get(i)
    }
}
