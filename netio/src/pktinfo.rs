//! `IP_PKTINFO`: per-datagram local addresses on one IPv4 socket.
//!
//! A socket bound to `0.0.0.0:port` can receive datagrams sent to any local
//! address (all of 127.0.0.0/8 on Linux) and learn which one each was sent
//! to, and can choose the source address of each datagram it sends. The load
//! generator uses this to speak for many simulated devices from one socket.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use crate::recv::RecvCore;
use crate::send::SendCore;
use crate::sockaddr::{in_addr, ipv4_of};
use crate::socket::set_int_opt;

// SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic on their argument.
const PKTINFO_SPACE: usize =
    unsafe { libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) } as usize;
// SAFETY: as above.
const PKTINFO_LEN: usize = unsafe { libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) } as usize;

/// Control space for one outgoing `IP_PKTINFO` message, in u64 words.
pub(crate) const PKTINFO_SPACE_WORDS: usize = PKTINFO_SPACE.div_ceil(8);

/// Control space per received datagram, in u64 words: room for
/// `IP_PKTINFO` plus other control messages the socket may have enabled.
const RECV_CTRL_WORDS: usize = 16;

/// Turns on `IP_PKTINFO` (IPv4) so [`RecvBatchPktinfo`] learns each
/// datagram's destination address. Sending with [`SendBatchPktinfo`] works
/// without it.
pub fn enable_pktinfo(sock: &UdpSocket) -> io::Result<()> {
    set_int_opt(sock, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
}

/// Attaches an `IP_PKTINFO` control message with source `from` to `m`,
/// using `buf` (at least `PKTINFO_SPACE_WORDS` words) as control space.
pub(crate) fn write_pktinfo_cmsg(m: &mut libc::msghdr, buf: &mut [u64], from: Ipv4Addr) {
    assert!(buf.len() * 8 >= PKTINFO_SPACE);
    buf.fill(0);
    m.msg_control = buf.as_mut_ptr().cast();
    m.msg_controllen = PKTINFO_SPACE as _;
    let info = libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: in_addr(from),
        ipi_addr: in_addr(Ipv4Addr::UNSPECIFIED),
    };
    let c = buf.as_mut_ptr().cast::<libc::cmsghdr>();
    // SAFETY: `buf` is u64-aligned (enough for cmsghdr) and holds at least
    // CMSG_SPACE(sizeof in_pktinfo) bytes, i.e. one cmsghdr followed by the
    // aligned in_pktinfo payload that CMSG_DATA points at; the write of the
    // payload is unaligned-tolerant. `buf` outlives this function's writes.
    unsafe {
        (*c).cmsg_len = PKTINFO_LEN as _;
        (*c).cmsg_level = libc::IPPROTO_IP;
        (*c).cmsg_type = libc::IP_PKTINFO;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(), info);
    }
}

/// The `IP_PKTINFO` destination address in the control messages of a
/// received datagram, if any.
fn pktinfo_dst(m: &libc::msghdr) -> Option<Ipv4Addr> {
    // SAFETY: `m` is a header recvmmsg just filled: msg_control points to the
    // slot's control buffer (owned by the RecvCore that `m` borrows from, so
    // alive) and msg_controllen is the number of bytes the kernel wrote there,
    // as well-formed cmsghdrs. CMSG_FIRSTHDR/CMSG_NXTHDR stay within that
    // range (they return null at its end), we read the payload only when
    // cmsg_len says it holds a whole in_pktinfo, and read it unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(m);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP
                && (*c).cmsg_type == libc::IP_PKTINFO
                && (*c).cmsg_len as usize >= PKTINFO_LEN
            {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>());
                return Some(ipv4_of(info.ipi_addr));
            }
            c = libc::CMSG_NXTHDR(m, c);
        }
    }
    None
}

/// Like [`RecvBatch`](crate::RecvBatch), and also records each datagram's
/// destination IPv4 address (from `IP_PKTINFO`; call [`enable_pktinfo`] on
/// the socket first).
pub struct RecvBatchPktinfo {
    core: RecvCore,
    dsts: Vec<Ipv4Addr>,
}

impl RecvBatchPktinfo {
    pub fn new(batch: usize, buf_size: usize) -> Self {
        let core = RecvCore::new(batch, buf_size, RECV_CTRL_WORDS);
        let slots = batch.clamp(1, crate::MAX_BATCH);
        RecvBatchPktinfo {
            core,
            dsts: vec![Ipv4Addr::UNSPECIFIED; slots],
        }
    }

    /// One `recvmmsg(MSG_DONTWAIT)`; see [`RecvBatch::recv`](crate::RecvBatch::recv).
    pub fn recv(&mut self, fd: &impl AsRawFd) -> io::Result<usize> {
        let n = self.core.recv(fd.as_raw_fd())?;
        for i in 0..n {
            self.dsts[i] = pktinfo_dst(self.core.hdr(i)).unwrap_or(Ipv4Addr::UNSPECIFIED);
        }
        Ok(n)
    }

    pub fn len(&self) -> usize {
        self.core.len()
    }

    pub fn is_empty(&self) -> bool {
        self.core.len() == 0
    }

    /// Datagram `i` of the last `recv`: peer address, the local address it
    /// was sent to (`0.0.0.0` if the datagram carried no `IP_PKTINFO`),
    /// payload, truncated flag.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn get(&self, i: usize) -> (SocketAddr, Ipv4Addr, &[u8], bool) {
        let (peer, payload, truncated) = self.core.get(i);
        (peer, self.dsts[i], payload, truncated)
    }
}

/// Like [`SendBatch`](crate::SendBatch), but each datagram carries its IPv4
/// source address (`IP_PKTINFO` `ipi_spec_dst`), so one socket bound to
/// `0.0.0.0:port` can send from any local address such as 127.x.y.z.
/// `0.0.0.0` as source lets the kernel choose. A source address that is not
/// local makes the kernel refuse that datagram (counted in `failed`).
pub struct SendBatchPktinfo {
    core: SendCore,
}

impl SendBatchPktinfo {
    pub fn new(max_batch: usize) -> Self {
        SendBatchPktinfo {
            core: SendCore::new(max_batch, true),
        }
    }

    pub fn push(&mut self, from: Ipv4Addr, to: SocketAddrV4, payload: &[u8]) {
        self.push_with(from, to, |buf| buf.extend_from_slice(payload));
    }

    /// Queues a datagram that `f` appends directly to the arena; see
    /// [`SendBatch::push_with`](crate::SendBatch::push_with).
    pub fn push_with(&mut self, from: Ipv4Addr, to: SocketAddrV4, f: impl FnOnce(&mut Vec<u8>)) {
        self.core.push_with(SocketAddr::V4(to), from, f);
    }

    pub fn len(&self) -> usize {
        self.core.len()
    }

    pub fn is_empty(&self) -> bool {
        self.core.len() == 0
    }

    /// See [`SendBatch::flush`](crate::SendBatch::flush).
    pub fn flush(&mut self, fd: &impl AsRawFd) -> io::Result<usize> {
        self.core.flush(fd.as_raw_fd())
    }

    pub fn failed(&self) -> u64 {
        self.core.failed()
    }

    pub fn clear(&mut self) {
        self.core.clear();
    }
}
