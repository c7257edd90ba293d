//! Writing CoAP messages into a caller-owned buffer.

use super::codes::Code;
use super::message::MsgType;
use super::options::encode_uint;

/// Appends one CoAP message to a buffer. Options must be added in non-decreasing
/// number order (debug-asserted); the payload comes last.
pub struct MessageWriter<'b> {
    buf: &'b mut Vec<u8>,
    last_option: u16,
}

impl<'b> MessageWriter<'b> {
    /// Starts a message: header and token. Tokens longer than 8 bytes are truncated.
    pub fn new(buf: &'b mut Vec<u8>, mtype: MsgType, code: Code, mid: u16, token: &[u8]) -> Self {
        let token = &token[..token.len().min(8)];
        buf.push(0x40 | (mtype as u8) << 4 | token.len() as u8);
        buf.push(code);
        buf.extend_from_slice(&mid.to_be_bytes());
        buf.extend_from_slice(token);
        Self {
            buf,
            last_option: 0,
        }
    }

    /// Adds an option with an opaque or string value.
    pub fn option(&mut self, number: u16, value: &[u8]) -> &mut Self {
        debug_assert!(number >= self.last_option, "options out of order");
        let delta = (number - self.last_option) as usize;
        self.last_option = number;
        let len = value.len();
        let (dn, dext) = nibble(delta);
        let (ln, lext) = nibble(len);
        self.buf.push(dn << 4 | ln);
        push_ext(self.buf, dn, dext);
        push_ext(self.buf, ln, lext);
        self.buf.extend_from_slice(value);
        self
    }

    /// Adds a uint option, minimally encoded.
    pub fn option_uint(&mut self, number: u16, value: u32) -> &mut Self {
        let mut tmp = [0u8; 4];
        let len = encode_uint(value, &mut tmp).len();
        self.option(number, &tmp[4 - len..])
    }

    /// Adds the payload (with its marker when non-empty) and finishes the message.
    pub fn payload(self, payload: &[u8]) {
        if !payload.is_empty() {
            self.buf.push(0xff);
            self.buf.extend_from_slice(payload);
        }
    }

    /// Finishes a message without payload.
    pub fn finish(self) {}
}

fn nibble(v: usize) -> (u8, usize) {
    if v < 13 {
        (v as u8, 0)
    } else if v < 269 {
        (13, v - 13)
    } else {
        (14, v - 269)
    }
}

fn push_ext(buf: &mut Vec<u8>, n: u8, ext: usize) {
    match n {
        13 => buf.push(ext as u8),
        14 => buf.extend_from_slice(&(ext as u16).to_be_bytes()),
        _ => {}
    }
}
