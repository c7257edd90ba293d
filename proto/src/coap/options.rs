//! CoAP options: numbers, validation of the encoded option region, iteration.

use super::message::ParseError;

/// Option numbers used by the gateway.
pub mod opt {
    pub const IF_MATCH: u16 = 1;
    pub const URI_HOST: u16 = 3;
    pub const ETAG: u16 = 4;
    pub const OBSERVE: u16 = 6;
    pub const URI_PORT: u16 = 7;
    pub const LOCATION_PATH: u16 = 8;
    pub const URI_PATH: u16 = 11;
    pub const CONTENT_FORMAT: u16 = 12;
    pub const MAX_AGE: u16 = 14;
    pub const URI_QUERY: u16 = 15;
    pub const ACCEPT: u16 = 17;
    pub const LOCATION_QUERY: u16 = 20;
    pub const BLOCK2: u16 = 23;
    pub const BLOCK1: u16 = 27;
    pub const SIZE2: u16 = 28;
    pub const SIZE1: u16 = 60;

    /// Critical options (odd numbers) must be understood or the request rejected (RFC 7252 §5.4.1).
    pub const fn is_critical(n: u16) -> bool {
        n & 1 == 1
    }
}

/// Walks an option region and returns the length of the options (the index of the
/// payload marker, or the region's length). Errors on any malformed option.
pub(super) fn validate_options(buf: &[u8]) -> Result<usize, ParseError> {
    let mut pos = 0;
    let mut number: u32 = 0;
    while pos < buf.len() {
        if buf[pos] == 0xff {
            return Ok(pos);
        }
        let (delta, len, next) = read_header(buf, pos).ok_or(ParseError::BadOption)?;
        number += delta as u32;
        if number > u16::MAX as u32 {
            return Err(ParseError::BadOption);
        }
        let end = next.checked_add(len).ok_or(ParseError::BadOption)?;
        if end > buf.len() {
            return Err(ParseError::BadOption);
        }
        pos = end;
    }
    Ok(pos)
}

/// Reads one option header at `pos`: (delta, length, position of the value).
fn read_header(buf: &[u8], pos: usize) -> Option<(usize, usize, usize)> {
    let b = buf[pos];
    let mut p = pos + 1;
    let delta = ext(buf, &mut p, b >> 4)?;
    let len = ext(buf, &mut p, b & 0x0f)?;
    Some((delta, len, p))
}

fn ext(buf: &[u8], p: &mut usize, nibble: u8) -> Option<usize> {
    match nibble {
        0..=12 => Some(nibble as usize),
        13 => {
            let v = *buf.get(*p)? as usize + 13;
            *p += 1;
            Some(v)
        }
        14 => {
            let hi = *buf.get(*p)? as usize;
            let lo = *buf.get(*p + 1)? as usize;
            *p += 2;
            Some((hi << 8 | lo) + 269)
        }
        _ => None,
    }
}

/// Iterator over a validated option region.
#[derive(Debug, Clone)]
pub struct OptionIter<'a> {
    buf: &'a [u8],
    pos: usize,
    number: u16,
}

impl<'a> OptionIter<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            number: 0,
        }
    }
}

impl<'a> Iterator for OptionIter<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        // The region was validated at parse time; stay total anyway.
        let (delta, len, p) = read_header(self.buf, self.pos)?;
        let value = self.buf.get(p..p + len)?;
        self.number = self.number.checked_add(delta as u16)?;
        self.pos = p + len;
        Some((self.number, value))
    }
}

/// Decodes a uint option value (up to 4 bytes).
pub(super) fn decode_uint(v: &[u8]) -> Option<u32> {
    if v.len() > 4 {
        return None;
    }
    Some(v.iter().fold(0u32, |acc, b| acc << 8 | *b as u32))
}

/// Encodes a uint option value minimally into `buf`, returning the used bytes.
pub(super) fn encode_uint(v: u32, buf: &mut [u8; 4]) -> &[u8] {
    *buf = v.to_be_bytes();
    let skip = (v.leading_zeros() / 8) as usize;
    &buf[skip..]
}

/// A Block1/Block2 option value (RFC 7959 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockOpt {
    pub num: u32,
    pub more: bool,
    /// Size exponent: block size is `1 << (szx + 4)`; 7 is reserved.
    pub szx: u8,
}

impl BlockOpt {
    pub fn decode(v: &[u8]) -> Option<Self> {
        if v.len() > 3 {
            return None;
        }
        let raw = decode_uint(v)?;
        let szx = (raw & 7) as u8;
        if szx == 7 {
            return None;
        }
        Some(Self {
            num: raw >> 4,
            more: raw & 8 != 0,
            szx,
        })
    }

    pub fn encode(&self) -> u32 {
        self.num << 4 | (self.more as u32) << 3 | self.szx as u32
    }

    pub fn size(&self) -> usize {
        1 << (self.szx + 4)
    }
}
