//! The stored form of a registration and its observations: what a gateway needs to go on
//! serving a device after a restart (name, location, address, lifetime and its deadline,
//! parameters, object list, binding and queue mode, whether it was made over DTLS, its
//! mountpoint, and each observation's token, path, command and last Observe value).
//!
//! A versioned binary encoding, written by the core ([`encode`]) and read back at start
//! ([`decode`]). Times are stored as Unix milliseconds: the core's clock starts at zero in
//! every process, so a deadline is turned into wall-clock time with the process's
//! `clock_epoch_ms` on the way out and back on the way in.
//!
//! Not stored, by design: commands waiting or in flight (their exchanges, retransmission
//! state and block-wise transfers: the bytes a transfer holds are bounded per shard and
//! live only as long as the exchange), the reply cache, per-endpoint counters and the
//! results kept for the API's `lookup`. A DTLS session does not outlive the process, so a
//! registration made over DTLS comes back waiting for one (`session_lost`).
//!
//! Decoding is total: hostile or damaged bytes give a [`RecordError`], never a panic, and
//! no length is trusted before it is checked against what remains.

use super::command::{Command, Echo, Op};
use super::endpoint::{Endpoint, EndpointCounters, LastReply, Objects};
use super::publish::name_hash;
use super::session::{Observation, Session};
use crate::model::LwPath;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// The encoding's version, the record's first byte.
pub const VERSION: u8 = 1;

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record version {0} is not one this gateway reads (it reads version {VERSION})")]
    Version(u8),
    #[error("record ends early (reading {0})")]
    Truncated(&'static str),
    #[error("record has {0} bytes after its end")]
    Trailing(usize),
    #[error("record has a bad {0}")]
    Invalid(&'static str),
}

/// Encodes `ep` (its observations included) into `out`, its times as Unix ms
/// (`epoch_ms`: Unix time of the core clock's zero).
pub fn encode(ep: &Endpoint, epoch_ms: u64, out: &mut Vec<u8>) {
    let unix = |t: u64| epoch_ms.saturating_add(t);
    out.push(VERSION);
    put_str(out, &ep.name);
    put_u64(out, ep.location);
    put_addr(out, ep.peer);
    put_u32(out, ep.lifetime_s);
    put_u64(out, unix(ep.expires_ms));
    put_u64(out, unix(ep.registered_ms));
    put_u64(out, unix(ep.last_seen_ms));
    put_str(out, &ep.mountpoint);
    put_str(out, &ep.params);
    put_opt_str(out, ep.alternate_path());
    put_opt_str(out, ep.object_list());
    out.push(ep.queue_mode as u8 | (ep.secure as u8) << 1);
    put_opt_u16(out, ep.content_format());
    put_opt_u16(out, ep.composite_format());
    let observations = ep.session.as_ref().map_or(&[][..], |s| &s.observations[..]);
    put_u32(out, observations.len() as u32);
    for o in observations {
        put_u32(out, o.token);
        put_path(out, &o.path);
        match o.last_seq {
            Some(s) => {
                out.push(1);
                put_u32(out, s);
            }
            None => out.push(0),
        }
        put_u64(out, unix(o.last_ms));
        put_command(out, &o.cmd, epoch_ms);
    }
}

/// Decodes a record into an endpoint on a core whose clock's zero is `epoch_ms` (Unix
/// ms): a deadline that passed before that zero becomes 0 (due at once).
pub fn decode(bytes: &[u8], epoch_ms: u64) -> Result<Endpoint, RecordError> {
    let mut r = Reader { b: bytes };
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(RecordError::Version(version));
    }
    let mono = |t: u64| t.saturating_sub(epoch_ms);
    let name: Box<str> = r.string("name")?.into();
    if name.is_empty() {
        return Err(RecordError::Invalid("endpoint name"));
    }
    let location = r.u64("location")?;
    let peer = r.addr()?;
    let lifetime_s = r.u32("lifetime")?;
    let expires_ms = mono(r.u64("deadline")?);
    let registered_ms = mono(r.u64("registration time")?);
    let last_seen_ms = mono(r.u64("last seen")?);
    let mountpoint = r.string("mountpoint")?.into();
    let params = r.string("parameters")?.into();
    let alternate_path = r.opt_string("alternate path")?;
    let object_list = r.opt_string("object list")?;
    let flags = r.u8("flags")?;
    if flags > 3 {
        return Err(RecordError::Invalid("flags"));
    }
    let content_format = r.opt_u16("content format")?;
    let composite_format = r.opt_u16("composite format")?;
    // Written together (an object list sets both); formats come only with a list.
    let objects = match (alternate_path, object_list) {
        (Some(alternate_path), Some(list)) => Some(Arc::new(Objects {
            alternate_path: alternate_path.into(),
            list: list.into(),
            content_format,
            composite_format,
        })),
        (None, None) if content_format.is_none() && composite_format.is_none() => None,
        _ => return Err(RecordError::Invalid("object list")),
    };
    let count = r.u32("observation count")? as usize;
    // Each observation takes far more than 8 bytes: a count beyond that is a lie.
    if count > r.b.len() / 8 {
        return Err(RecordError::Invalid("observation count"));
    }
    let mut observations = Vec::with_capacity(count);
    for _ in 0..count {
        let token = r.u32("observation token")?;
        let path = r.path()?;
        let last_seq = match r.u8("observe value flag")? {
            0 => None,
            1 => Some(r.u32("observe value")?),
            _ => return Err(RecordError::Invalid("observe value flag")),
        };
        let last_ms = mono(r.u64("last notification time")?);
        let cmd = r.command(epoch_ms)?;
        observations.push(Observation {
            token,
            path,
            cmd,
            last_seq,
            last_ms,
        });
    }
    if !r.b.is_empty() {
        return Err(RecordError::Trailing(r.b.len()));
    }
    let secure = flags & 2 != 0;
    let session = (!observations.is_empty()).then(|| {
        let mut s = Box::<Session>::default();
        s.observations = observations;
        s
    });
    Ok(Endpoint {
        lane: name_hash(&name),
        name,
        location,
        peer,
        lifetime_s,
        expires_ms,
        mountpoint,
        params,
        objects,
        queue_mode: flags & 1 != 0,
        secure,
        // No DTLS session outlives the process.
        session_lost: secure,
        last_reply: LastReply::default(),
        prev_reply: LastReply::default(),
        registered_ms,
        last_seen_ms,
        counters: EndpointCounters::default(),
        session,
    })
}

/// The location of a record's registration, read without decoding the rest (a store
/// removes a record only when it is of the location the removal names). None when the
/// record is too short or of another version.
pub fn location_of(bytes: &[u8]) -> Option<u64> {
    let mut r = Reader { b: bytes };
    if r.u8("version").ok()? != VERSION {
        return None;
    }
    r.bytes("name").ok()?;
    r.u64("location").ok()
}

/// The address a record's device speaks from, if its registration was made over plain
/// CoAP (None for a DTLS registration, or bytes that do not read as a record): what the
/// shared store indexes registrations by for a take by address (`ClusterRequest::TakePeer`).
pub fn plain_peer_of(bytes: &[u8]) -> Option<SocketAddr> {
    let mut r = Reader { b: bytes };
    if r.u8("version").ok()? != VERSION {
        return None;
    }
    r.bytes("name").ok()?;
    r.u64("location").ok()?;
    let peer = r.addr().ok()?;
    r.u32("lifetime").ok()?;
    for what in ["deadline", "registration time", "last seen"] {
        r.u64(what).ok()?;
    }
    r.string("mountpoint").ok()?;
    r.string("parameters").ok()?;
    r.opt_string("alternate path").ok()?;
    r.opt_string("object list").ok()?;
    let secure = r.u8("flags").ok()? & 2 != 0;
    (!secure).then_some(peer)
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
        None => out.push(0),
    }
}

fn put_opt_u16(out: &mut Vec<u8>, v: Option<u16>) {
    match v {
        Some(v) => {
            out.push(1);
            put_u16(out, v);
        }
        None => out.push(0),
    }
}

fn put_addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    put_u16(out, a.port());
}

fn put_path(out: &mut Vec<u8>, p: &LwPath) {
    out.push(p.len() as u8);
    for &id in p.ids() {
        put_u16(out, id);
    }
}

fn put_command(out: &mut Vec<u8>, c: &Command, epoch_ms: u64) {
    out.push(c.op.index() as u8);
    put_str(out, &c.echo.members);
    put_opt_str(out, c.echo.msg_type.as_deref());
    put_str(out, &c.echo.data);
    put_opt_str(out, c.echo.req_path.as_deref());
    put_u32(out, c.echo.req_paths.len() as u32);
    for p in c.echo.req_paths.iter() {
        put_str(out, p);
    }
    put_path(out, &c.path);
    put_u32(out, c.paths.len() as u32);
    for p in &c.paths {
        put_path(out, p);
    }
    put_opt_u16(out, c.accept);
    put_u32(out, c.query.len() as u32);
    for q in &c.query {
        put_str(out, q);
    }
    out.push(c.code);
    match &c.payload {
        Some((cf, body)) => {
            out.push(1);
            put_u16(out, *cf);
            put_bytes(out, body);
        }
        None => out.push(0),
    }
    out.push(c.bypass_queue as u8);
    put_u64(out, epoch_ms.saturating_add(c.received_ms));
}

/// Reads a record front to back; every read checks what remains first.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], RecordError> {
        if self.b.len() < n {
            return Err(RecordError::Truncated(what));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, RecordError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, RecordError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, RecordError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, RecordError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, RecordError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(RecordError::Invalid(what)),
        }
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], RecordError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    fn string(&mut self, what: &'static str) -> Result<&'a str, RecordError> {
        std::str::from_utf8(self.bytes(what)?).map_err(|_| RecordError::Invalid(what))
    }

    fn opt_string(&mut self, what: &'static str) -> Result<Option<&'a str>, RecordError> {
        if self.flag(what)? {
            self.string(what).map(Some)
        } else {
            Ok(None)
        }
    }

    fn opt_u16(&mut self, what: &'static str) -> Result<Option<u16>, RecordError> {
        if self.flag(what)? {
            self.u16(what).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A count of items each at least `min` bytes long, checked against what remains.
    fn count(&mut self, min: usize, what: &'static str) -> Result<usize, RecordError> {
        let n = self.u32(what)? as usize;
        if n > self.b.len() / min.max(1) {
            return Err(RecordError::Invalid(what));
        }
        Ok(n)
    }

    fn addr(&mut self) -> Result<SocketAddr, RecordError> {
        let ip = match self.u8("address family")? {
            4 => {
                let b = self.take(4, "address")?;
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(self.take(16, "address")?);
                IpAddr::V6(Ipv6Addr::from(a))
            }
            _ => return Err(RecordError::Invalid("address family")),
        };
        Ok(SocketAddr::new(ip, self.u16("port")?))
    }

    fn path(&mut self) -> Result<LwPath, RecordError> {
        let n = self.u8("path length")? as usize;
        if n > 4 {
            return Err(RecordError::Invalid("path length"));
        }
        let mut ids = [0u16; 4];
        for id in ids.iter_mut().take(n) {
            *id = self.u16("path")?;
        }
        LwPath::from_ids(&ids[..n]).map_err(|_| RecordError::Invalid("path"))
    }

    fn command(&mut self, epoch_ms: u64) -> Result<Command, RecordError> {
        let op = *Op::ALL
            .get(self.u8("operation")? as usize)
            .ok_or(RecordError::Invalid("operation"))?;
        let members = self.string("command members")?.into();
        let msg_type = self.opt_string("command msgType")?.map(Into::into);
        let data = self.string("command data")?.into();
        let req_path = self.opt_string("command reqPath")?.map(Into::into);
        let n = self.count(4, "command reqPath list")?;
        let req_paths = (0..n)
            .map(|_| self.string("command reqPath list").map(Into::into))
            .collect::<Result<Vec<Box<str>>, _>>()?
            .into_boxed_slice();
        let path = self.path()?;
        let n = self.count(1, "command paths")?;
        let paths = (0..n).map(|_| self.path()).collect::<Result<Vec<_>, _>>()?;
        let accept = self.opt_u16("command accept")?;
        let n = self.count(4, "command query")?;
        let query = (0..n)
            .map(|_| self.string("command query").map(String::from))
            .collect::<Result<Vec<_>, _>>()?;
        let code = self.u8("command code")?;
        let payload = if self.flag("command payload")? {
            let cf = self.u16("command content format")?;
            Some((cf, self.bytes("command payload")?.to_vec()))
        } else {
            None
        };
        let bypass_queue = self.flag("command queue bypass")?;
        let received_ms = self.u64("command time")?.saturating_sub(epoch_ms);
        Ok(Command {
            op,
            echo: Echo {
                members,
                msg_type,
                data,
                req_path,
                req_paths,
            },
            path,
            paths,
            accept,
            query,
            code,
            payload,
            bypass_queue,
            received_ms,
        })
    }
}
