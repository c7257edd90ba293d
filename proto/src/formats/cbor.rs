//! A small CBOR (RFC 8949) reader and writer: the subset LwM2M needs (integers, floats 16/32/64,
//! byte and text strings, arrays, maps, simple values; tags are kept as a wrapper). Indefinite-length
//! items are accepted on input; output is always definite-length.
//!
//! Hand-written rather than pulled in as a crate: the subset is small, and owning it lets every
//! length be checked against the remaining input before allocation and the nesting depth be bounded.

use std::borrow::Cow;

use super::{DecodeError, MAX_DEPTH};

/// One decoded CBOR data item, borrowing strings from the input where possible.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Item<'a> {
    Uint(u64),
    /// Negative integer `-1 - n`.
    Nint(u64),
    Bytes(Cow<'a, [u8]>),
    Text(Cow<'a, str>),
    Array(Vec<Item<'a>>),
    Map(Vec<(Item<'a>, Item<'a>)>),
    Tag(u64, Box<Item<'a>>),
    Bool(bool),
    Null,
    Undefined,
    Float(f64),
    Simple(u8),
}

impl Item<'_> {
    /// The item under any tags.
    pub(crate) fn untagged(&self) -> &Self {
        let mut it = self;
        while let Item::Tag(_, inner) = it {
            it = inner;
        }
        it
    }

    /// An integer as i128 (covers the whole CBOR range).
    pub(crate) fn as_int(&self) -> Option<i128> {
        match self.untagged() {
            Item::Uint(u) => Some(*u as i128),
            Item::Nint(n) => Some(-1 - *n as i128),
            _ => None,
        }
    }

    pub(crate) fn as_text(&self) -> Option<&str> {
        match self.untagged() {
            Item::Text(t) => Some(t),
            _ => None,
        }
    }
}

/// Parses exactly one data item filling the whole buffer.
pub(crate) fn parse(buf: &[u8]) -> Result<Item<'_>, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let item = r.item(0)?;
    if r.pos != buf.len() {
        return Err(DecodeError::TrailingBytes("CBOR"));
    }
    Ok(item)
}

/// What an initial byte announces.
enum Head {
    /// major type, additional information, argument
    Definite(u8, u8, u64),
    Indefinite(u8),
    Break,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() - self.pos < n {
            return Err(DecodeError::Truncated(self.buf.len()));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn head(&mut self) -> Result<Head, DecodeError> {
        let ib = self.take(1)?[0];
        let major = ib >> 5;
        let ai = ib & 0x1f;
        let arg = match ai {
            0..=23 => ai as u64,
            24 => self.take(1)?[0] as u64,
            25 => {
                let b = self.take(2)?;
                u16::from_be_bytes([b[0], b[1]]) as u64
            }
            26 => {
                let b = self.take(4)?;
                u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64
            }
            27 => {
                let b = self.take(8)?;
                u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            }
            28..=30 => return Err(DecodeError::Cbor("reserved additional information")),
            _ => {
                return match major {
                    2..=5 => Ok(Head::Indefinite(major)),
                    7 => Ok(Head::Break),
                    _ => Err(DecodeError::Cbor("indefinite length on an integer or tag")),
                }
            }
        };
        Ok(Head::Definite(major, ai, arg))
    }

    /// A length that must fit the remaining input (each element takes at least `min_each` bytes).
    fn checked_len(&self, n: u64, min_each: usize) -> Result<usize, DecodeError> {
        let max = self.remaining() / min_each.max(1);
        if n > max as u64 {
            return Err(DecodeError::Truncated(self.buf.len()));
        }
        Ok(n as usize)
    }

    fn item(&mut self, depth: usize) -> Result<Item<'a>, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep(MAX_DEPTH));
        }
        match self.head()? {
            Head::Break => Err(DecodeError::Cbor("unexpected break")),
            Head::Definite(major, ai, arg) => self.definite(major, ai, arg, depth),
            Head::Indefinite(major) => self.indefinite(major, depth),
        }
    }

    fn definite(
        &mut self,
        major: u8,
        ai: u8,
        arg: u64,
        depth: usize,
    ) -> Result<Item<'a>, DecodeError> {
        Ok(match major {
            0 => Item::Uint(arg),
            1 => Item::Nint(arg),
            2 => {
                let n = self.checked_len(arg, 1)?;
                Item::Bytes(Cow::Borrowed(self.take(n)?))
            }
            3 => {
                let n = self.checked_len(arg, 1)?;
                let b = self.take(n)?;
                let s =
                    std::str::from_utf8(b).map_err(|_| DecodeError::Cbor("text is not UTF-8"))?;
                Item::Text(Cow::Borrowed(s))
            }
            4 => {
                let n = self.checked_len(arg, 1)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.item(depth + 1)?);
                }
                Item::Array(v)
            }
            5 => {
                let n = self.checked_len(arg, 2)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = self.item(depth + 1)?;
                    let val = self.item(depth + 1)?;
                    v.push((k, val));
                }
                Item::Map(v)
            }
            6 => Item::Tag(arg, Box::new(self.item(depth + 1)?)),
            _ => simple(ai, arg)?,
        })
    }

    fn indefinite(&mut self, major: u8, depth: usize) -> Result<Item<'a>, DecodeError> {
        match major {
            2 | 3 => {
                let mut acc: Vec<u8> = Vec::new();
                loop {
                    match self.head()? {
                        Head::Break => break,
                        Head::Definite(m, _, n) if m == major => {
                            let n = self.checked_len(n, 1)?;
                            acc.extend_from_slice(self.take(n)?);
                        }
                        _ => return Err(DecodeError::Cbor("bad chunk in indefinite string")),
                    }
                }
                if major == 2 {
                    Ok(Item::Bytes(Cow::Owned(acc)))
                } else {
                    let s = String::from_utf8(acc)
                        .map_err(|_| DecodeError::Cbor("text is not UTF-8"))?;
                    Ok(Item::Text(Cow::Owned(s)))
                }
            }
            4 => {
                let mut v = Vec::new();
                loop {
                    if self.peek_break()? {
                        break;
                    }
                    v.push(self.item(depth + 1)?);
                }
                Ok(Item::Array(v))
            }
            _ => {
                let mut v = Vec::new();
                loop {
                    if self.peek_break()? {
                        break;
                    }
                    let k = self.item(depth + 1)?;
                    let val = self.item(depth + 1)?;
                    v.push((k, val));
                }
                Ok(Item::Map(v))
            }
        }
    }

    fn peek_break(&mut self) -> Result<bool, DecodeError> {
        match self.buf.get(self.pos) {
            None => Err(DecodeError::Truncated(self.buf.len())),
            Some(0xff) => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) => Ok(false),
        }
    }
}

/// Major type 7 with a definite argument.
fn simple<'a>(ai: u8, arg: u64) -> Result<Item<'a>, DecodeError> {
    Ok(match ai {
        20 => Item::Bool(false),
        21 => Item::Bool(true),
        22 => Item::Null,
        23 => Item::Undefined,
        0..=19 => Item::Simple(arg as u8),
        24 => {
            if arg < 32 {
                return Err(DecodeError::Cbor("two-byte simple value below 32"));
            }
            Item::Simple(arg as u8)
        }
        25 => Item::Float(f16_to_f64(arg as u16)),
        26 => Item::Float(super::value::f32_to_f64(f32::from_bits(arg as u32))),
        _ => Item::Float(f64::from_bits(arg)),
    })
}

/// IEEE 754 half precision to f64.
pub(crate) fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let mant = (h & 0x3ff) as f64;
    let mag = match exp {
        0 => mant * 2f64.powi(-24),
        31 => {
            if mant == 0.0 {
                f64::INFINITY
            } else {
                f64::NAN
            }
        }
        _ => (1.0 + mant / 1024.0) * 2f64.powi(exp - 15),
    };
    sign * mag
}

// ---- writer ----

fn head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    if arg < 24 {
        out.push(m | arg as u8);
    } else if arg <= 0xff {
        out.extend_from_slice(&[m | 24, arg as u8]);
    } else if arg <= 0xffff {
        out.push(m | 25);
        out.extend_from_slice(&(arg as u16).to_be_bytes());
    } else if arg <= 0xffff_ffff {
        out.push(m | 26);
        out.extend_from_slice(&(arg as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

pub(crate) fn write_uint(out: &mut Vec<u8>, v: u64) {
    head(out, 0, v);
}

pub(crate) fn write_int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        head(out, 0, v as u64);
    } else {
        head(out, 1, !(v as u64));
    }
}

/// Floats go out as single precision when that is exact, else double.
pub(crate) fn write_float(out: &mut Vec<u8>, v: f64) {
    let s = v as f32;
    if s as f64 == v || v.is_nan() {
        out.push(0xfa);
        out.extend_from_slice(&s.to_bits().to_be_bytes());
    } else {
        out.push(0xfb);
        out.extend_from_slice(&v.to_bits().to_be_bytes());
    }
}

pub(crate) fn write_bool(out: &mut Vec<u8>, v: bool) {
    out.push(if v { 0xf5 } else { 0xf4 });
}

pub(crate) fn write_text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, 2, b.len() as u64);
    out.extend_from_slice(b);
}

pub(crate) fn write_array(out: &mut Vec<u8>, n: usize) {
    head(out, 4, n as u64);
}

pub(crate) fn write_map(out: &mut Vec<u8>, n: usize) {
    head(out, 5, n as u64);
}
