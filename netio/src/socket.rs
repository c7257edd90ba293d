//! Binding UDP sockets.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Options for [`bind_udp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOptions {
    /// Set `SO_REUSEADDR` and `SO_REUSEPORT` so several sockets (one per
    /// shard) can bind the same address; the kernel spreads datagrams over
    /// them by a hash of the peer address.
    pub reuse_port: bool,
    /// `SO_RCVBUF` in bytes; 0 leaves the kernel default.
    pub rcvbuf: usize,
    /// `SO_SNDBUF` in bytes; 0 leaves the kernel default.
    pub sndbuf: usize,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            reuse_port: true,
            rcvbuf: 0,
            sndbuf: 0,
        }
    }
}

/// Binds a non-blocking UDP socket (IPv4 or IPv6 by the address) with the
/// given options. The result can be wrapped with `mio::net::UdpSocket::from_std`.
///
/// `SO_REUSEADDR` is set only together with `SO_REUSEPORT`: on Linux,
/// `SO_REUSEADDR` alone lets a second UDP socket bind the same port and
/// silently take its traffic, so a socket bound without `reuse_port` is
/// exclusive.
///
/// Buffer sizes above `net.core.rmem_max`/`wmem_max` are retried with
/// `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`, which succeeds only with
/// `CAP_NET_ADMIN`; otherwise the kernel's cap stays in effect (no error).
/// IPv6 sockets keep the system's `IPV6_V6ONLY` default.
pub fn bind_udp(addr: SocketAddr, opts: &SocketOptions) -> io::Result<UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if opts.reuse_port {
        sock.set_reuse_address(true)?;
        sock.set_reuse_port(true)?;
    }
    if opts.rcvbuf > 0 {
        sock.set_recv_buffer_size(opts.rcvbuf)?;
        if sock.recv_buffer_size()? < opts.rcvbuf.saturating_mul(2) {
            let _ = set_int_opt(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, opts.rcvbuf);
        }
    }
    if opts.sndbuf > 0 {
        sock.set_send_buffer_size(opts.sndbuf)?;
        if sock.send_buffer_size()? < opts.sndbuf.saturating_mul(2) {
            let _ = set_int_opt(&sock, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, opts.sndbuf);
        }
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// `setsockopt` with an `int` value (clamped to `c_int::MAX`).
pub(crate) fn set_int_opt(
    sock: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: usize,
) -> io::Result<()> {
    let fd: RawFd = sock.as_raw_fd();
    let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: we pass a pointer to a live c_int together with its exact size;
    // the kernel only reads it. An invalid fd or option yields an error code.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
