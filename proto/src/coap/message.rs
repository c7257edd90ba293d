//! Parsing a CoAP datagram into a borrowed [`Message`] view.

use super::codes::{self, Code};
use super::options::{validate_options, OptionIter};

/// CoAP message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    Con = 0,
    Non = 1,
    Ack = 2,
    Rst = 3,
}

impl MsgType {
    fn from_bits(b: u8) -> Self {
        match b & 3 {
            0 => Self::Con,
            1 => Self::Non,
            2 => Self::Ack,
            _ => Self::Rst,
        }
    }
}

/// Why a datagram is not a well-formed CoAP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than the 4-byte header.
    #[error("shorter than a CoAP header")]
    TooShort,
    /// Version field is not 1.
    #[error("CoAP version is not 1")]
    BadVersion,
    /// Token length 9..15 (reserved) or longer than the datagram.
    #[error("bad token length")]
    BadToken,
    /// An option header uses the reserved nibble 15 or runs past the datagram.
    #[error("malformed option")]
    BadOption,
    /// A payload marker followed by no payload.
    #[error("payload marker without payload")]
    EmptyPayload,
    /// An empty message (code 0.00) with a token, options or payload.
    #[error("empty message with content")]
    BadEmpty,
}

impl ParseError {
    /// True when the header was readable, so the sender may be answered with a Reset
    /// (RFC 7252 §4.2/§4.3: a message with a format error is rejected).
    pub fn header_ok(&self) -> bool {
        !matches!(self, Self::TooShort | Self::BadVersion)
    }
}

/// A parsed CoAP message borrowing the datagram.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub mtype: MsgType,
    pub code: Code,
    pub mid: u16,
    pub token: &'a [u8],
    options: &'a [u8],
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// Parses and validates a datagram.
    pub fn parse(buf: &'a [u8]) -> Result<Self, ParseError> {
        if buf.len() < 4 {
            return Err(ParseError::TooShort);
        }
        if buf[0] >> 6 != 1 {
            return Err(ParseError::BadVersion);
        }
        let mtype = MsgType::from_bits(buf[0] >> 4);
        let tkl = (buf[0] & 0x0f) as usize;
        let code = buf[1];
        let mid = u16::from_be_bytes([buf[2], buf[3]]);
        if tkl > 8 || buf.len() < 4 + tkl {
            return Err(ParseError::BadToken);
        }
        let token = &buf[4..4 + tkl];
        let rest = &buf[4 + tkl..];
        let opt_len = validate_options(rest)?;
        let options = &rest[..opt_len];
        let payload = match rest.get(opt_len) {
            None => &rest[opt_len..],
            Some(_) => {
                // validate_options stops only at the end or at a 0xFF marker.
                let p = &rest[opt_len + 1..];
                if p.is_empty() {
                    return Err(ParseError::EmptyPayload);
                }
                p
            }
        };
        if code == codes::EMPTY && (tkl != 0 || !options.is_empty() || !payload.is_empty()) {
            return Err(ParseError::BadEmpty);
        }
        Ok(Self {
            mtype,
            code,
            mid,
            token,
            options,
            payload,
        })
    }

    /// Reads only the type and message ID of a datagram whose header is readable
    /// (used to answer a malformed message with a Reset).
    pub fn peek_header(buf: &[u8]) -> Option<(MsgType, u16)> {
        if buf.len() < 4 || buf[0] >> 6 != 1 {
            return None;
        }
        Some((
            MsgType::from_bits(buf[0] >> 4),
            u16::from_be_bytes([buf[2], buf[3]]),
        ))
    }

    /// Every option in order, as `(number, value)`.
    pub fn options(&self) -> OptionIter<'a> {
        OptionIter::new(self.options)
    }

    /// The values of every instance of option `number`.
    pub fn option_values(&self, number: u16) -> impl Iterator<Item = &'a [u8]> {
        self.options()
            .filter(move |(n, _)| *n == number)
            .map(|(_, v)| v)
    }

    /// The first instance of option `number`.
    pub fn option(&self, number: u16) -> Option<&'a [u8]> {
        self.options().find(|(n, _)| *n == number).map(|(_, v)| v)
    }

    /// The first instance of a uint option (RFC 7252 §3.2: big-endian, at most 4 bytes here).
    pub fn option_uint(&self, number: u16) -> Option<u32> {
        self.option(number).and_then(super::options::decode_uint)
    }

    pub fn is_request(&self) -> bool {
        codes::is_request(self.code)
    }

    pub fn is_response(&self) -> bool {
        codes::is_response(self.code)
    }

    /// An empty message: ping (CON), empty ACK, or Reset.
    pub fn is_empty(&self) -> bool {
        self.code == codes::EMPTY
    }
}
