//! TCP_NODELAY for a listening socket that another library of this process opened.
//!
//! The embedded MQTT broker binds its own listener and writes to its clients with Nagle's
//! algorithm on; against the clients' delayed ACKs that adds 10–40 ms to every small PUBLISH
//! it forwards. On Linux an accepted socket inherits TCP_NODELAY from its listener, so setting
//! it once on the broker's listener turns Nagle off for every client connection it accepts.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};

use socket2::{SockRef, Type};

/// Finds this process's listening TCP socket bound to `addr` (by scanning `/proc/self/fd`) and
/// sets TCP_NODELAY on it, so that connections it accepts from now on send without delay.
/// Returns how many listeners matched (0 when none is bound to `addr`).
pub fn set_nodelay_on_own_listener(addr: SocketAddr) -> io::Result<usize> {
    let mut matched = 0;
    let mut result = Ok(());
    for_each_own_socket(|sock| {
        if result.is_ok() && is_tcp_listener_on(&sock, addr) {
            result = sock.set_tcp_nodelay(true);
            matched += 1;
        }
    })?;
    result.map(|()| matched)
}

/// Calls `f` with every socket open in this process (from `/proc/self/fd`), for reading or
/// setting options on sockets that another library opened.
pub fn for_each_own_socket(mut f: impl FnMut(SockRef<'_>)) -> io::Result<()> {
    for entry in fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        else {
            continue;
        };
        // Only sockets: the link target reads "socket:[inode]".
        match fs::read_link(entry.path()) {
            Ok(target) if target.to_string_lossy().starts_with("socket:") => {}
            _ => continue,
        }
        // SAFETY: `fd` was listed in /proc/self/fd a moment ago, so it is (or was) open in this
        // process; the borrow lives only for this call of `f`, which gets a `SockRef` (it can
        // read and set options, not close the fd). Should another thread close the fd
        // meanwhile, the calls fail with EBADF, or reach whatever socket took the number; the
        // callers check a socket's type and addresses before they set anything on it.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        f(SockRef::from(&fd));
    }
    Ok(())
}

fn is_tcp_listener_on(sock: &SockRef<'_>, addr: SocketAddr) -> bool {
    let bound = sock.local_addr().ok().and_then(|a| a.as_socket());
    sock.r#type().ok() == Some(Type::STREAM)
        && bound == Some(addr)
        && sock.is_listener().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn accepted_connections_inherit_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // A client socket connected to the same port is not a listener and is left alone.
        let client = TcpStream::connect(addr).unwrap();
        let (before, _) = listener.accept().unwrap();
        assert!(!before.nodelay().unwrap());

        assert_eq!(set_nodelay_on_own_listener(addr).unwrap(), 1);
        assert!(!client.nodelay().unwrap());

        let _client2 = TcpStream::connect(addr).unwrap();
        let (after, _) = listener.accept().unwrap();
        assert!(after.nodelay().unwrap());
    }

    #[test]
    fn no_listener_on_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert_eq!(set_nodelay_on_own_listener(addr).unwrap(), 0);
    }
}
