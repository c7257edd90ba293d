//! CoAP (RFC 7252) messages: a zero-copy parser into borrowed views and a writer into
//! caller-owned buffers, plus the option numbers and codes the gateway uses.
//!
//! The parser validates the whole option region once, so iterating options afterwards
//! cannot fail. Nothing here allocates per datagram.

pub mod codes;
mod message;
mod options;
mod writer;

pub use codes::{code_name, Code};
pub use message::{Message, MsgType, ParseError};
pub use options::{opt, BlockOpt, OptionIter};
pub use writer::MessageWriter;

#[cfg(test)]
mod tests;
