//! Who else is bound to a UDP port. With `SO_REUSEPORT`, a second process of the same user
//! may bind the port a gateway serves and silently take part of its traffic (the kernel
//! spreads datagrams over every socket of the group); the gateway checks after binding that
//! every socket on its port is its own.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// How many UDP sockets that are not this process's are bound to `addr`'s port with an
/// overlapping address (equal, or either one unspecified), read from `/proc/net/udp` and
/// `/proc/net/udp6` against the sockets listed in `/proc/self/fd`.
pub fn foreign_udp_sockets(addr: SocketAddr) -> io::Result<usize> {
    let own = own_socket_inodes()?;
    let mut foreign = 0;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = match fs::read_to_string(table) {
            Ok(t) => t,
            // A kernel without IPv6 has no udp6 table.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        foreign += parse_table(&text)
            .filter(|(bound, inode)| overlaps(*bound, addr) && !own.contains(inode))
            .count();
    }
    Ok(foreign)
}

/// The inodes of this process's sockets ("socket:[inode]" links in /proc/self/fd).
fn own_socket_inodes() -> io::Result<HashSet<u64>> {
    let mut own = HashSet::new();
    for entry in fs::read_dir("/proc/self/fd")? {
        let Ok(target) = fs::read_link(entry?.path()) else {
            continue; // closed meanwhile
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|n| n.parse().ok())
        {
            own.insert(inode);
        }
    }
    Ok(own)
}

/// (local address, inode) of every line of a /proc/net/udp{,6} table.
fn parse_table(text: &str) -> impl Iterator<Item = (SocketAddr, u64)> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = parse_hex_addr(fields.get(1)?)?;
        let inode = fields.get(9)?.parse().ok()?;
        Some((local, inode))
    })
}

/// "0100007F:16A7" (IPv4) or 32 hex digits and a port (IPv6): each 32-bit group is printed
/// as a host-order integer of the address's network-order bytes.
fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for k in (0..ip.len()).step_by(8) {
        let word = u32::from_str_radix(ip.get(k..k + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Whether a socket bound to `a` shares traffic with one bound to `b`: same port, and the
/// same address or either one unspecified (an IPv6 wildcard may also take IPv4).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (x, y) = (canon(a.ip()), canon(b.ip()));
    a.port() == b.port() && (x == y || x.is_unspecified() || y.is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{bind_udp, SocketOptions};

    #[test]
    fn parses_kernel_lines() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            \x20 97: 0100007F:16A7 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0\n\
            \x20 12: 00000000000000000000000001000000:16A8 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 77 2 0000000000000000 0\n";
        let rows: Vec<_> = parse_table(table).collect();
        assert_eq!(
            rows,
            vec![
                ("127.0.0.1:5799".parse().unwrap(), 4242),
                ("[::1]:5800".parse().unwrap(), 77),
            ]
        );
    }

    #[test]
    fn overlap_rules() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(a("0.0.0.0:5783"), a("127.0.0.1:5783")));
        assert!(overlaps(a("[::]:5783"), a("127.0.0.1:5783")));
        assert!(overlaps(a("[::ffff:127.0.0.1]:5783"), a("127.0.0.1:5783")));
        assert!(!overlaps(a("127.0.0.1:5783"), a("127.0.0.2:5783")));
        assert!(!overlaps(a("0.0.0.0:5783"), a("0.0.0.0:5784")));
    }

    #[test]
    fn own_sockets_are_not_foreign() {
        let opts = SocketOptions::default();
        let first = bind_udp("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        let addr = first.local_addr().unwrap();
        let _second = bind_udp(addr, &opts).unwrap();
        assert_eq!(foreign_udp_sockets(addr).unwrap(), 0);
    }
}
