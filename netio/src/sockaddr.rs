//! Conversions between `std::net` addresses and C socket addresses.

use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// A C socket address for sending: IPv4 or IPv6. Built without `unsafe`
/// (writing a union field is safe); its address is handed to the kernel.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) union RawAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl RawAddr {
    pub(crate) fn empty() -> Self {
        RawAddr {
            v4: sockaddr_in(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        }
    }

    /// Writes `addr`; returns the length to pass as `msg_namelen`.
    pub(crate) fn set(&mut self, addr: &SocketAddr) -> libc::socklen_t {
        match addr {
            SocketAddr::V4(a) => {
                *self = RawAddr { v4: sockaddr_in(a) };
                size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                *self = RawAddr {
                    v6: sockaddr_in6(a),
                };
                size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }
}

fn sockaddr_in(a: &SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: in_addr(*a.ip()),
        sin_zero: [0; 8],
    }
}

fn sockaddr_in6(a: &SocketAddrV6) -> libc::sockaddr_in6 {
    libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: a.port().to_be(),
        // Same convention as std: flowinfo and scope id are passed through as is.
        sin6_flowinfo: a.flowinfo(),
        sin6_addr: libc::in6_addr {
            s6_addr: a.ip().octets(),
        },
        sin6_scope_id: a.scope_id(),
    }
}

pub(crate) fn in_addr(ip: Ipv4Addr) -> libc::in_addr {
    libc::in_addr {
        s_addr: u32::from(ip).to_be(),
    }
}

pub(crate) fn ipv4_of(a: libc::in_addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(a.s_addr))
}

/// An empty `sockaddr_storage` for the kernel to write a peer address into.
pub(crate) fn empty_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data (integers and byte arrays);
    // all-zero bytes are a valid value (family AF_UNSPEC).
    unsafe { std::mem::zeroed() }
}

/// Reads an address the kernel wrote; `None` for families other than
/// IPv4/IPv6 or a length too short for the family.
pub(crate) fn from_storage(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match s.ss_family as libc::c_int {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: sockaddr_storage is larger than and at least as aligned
            // as sockaddr_in, every bit pattern is a valid sockaddr_in, and the
            // kernel wrote a full sockaddr_in (family AF_INET, length checked).
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                ipv4_of(a.sin_addr),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above for sockaddr_in6 (family AF_INET6, length checked).
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(addr: SocketAddr) -> Option<SocketAddr> {
        let mut raw = RawAddr::empty();
        let len = raw.set(&addr);
        let mut storage = empty_storage();
        let n = (len as usize).min(size_of::<RawAddr>());
        // SAFETY: both are plain old data; we copy `n` bytes, which is within
        // the size of RawAddr (source) and of sockaddr_storage (destination).
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&raw as *const RawAddr).cast::<u8>(),
                (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                n,
            );
        }
        from_storage(&storage, len)
    }

    #[test]
    fn v4_and_v6_round_trip() {
        for a in [
            "127.0.0.1:5683".parse().unwrap(),
            "10.1.2.3:1".parse().unwrap(),
            "[::1]:5684".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 9, 0, 3)),
        ] {
            assert_eq!(round_trip(a), Some(a));
        }
    }

    #[test]
    fn unknown_family_or_short_length() {
        let mut s = empty_storage();
        assert_eq!(from_storage(&s, 16), None);
        s.ss_family = libc::AF_INET as libc::sa_family_t;
        assert_eq!(from_storage(&s, 4), None);
        assert!(from_storage(&s, 16).is_some());
    }
}
