//! RFC 9146 connection_id extension: `opaque cid<0..2^8-1>`.

use arrayvec::ArrayVec;
use nom::error::{Error, ErrorKind};
use nom::{Err, IResult};

use crate::buffer::Buf;

/// Longest connection ID this implementation takes or issues.
pub const MAX_CID_LEN: usize = 32;

/// A connection ID (RFC 9146), possibly empty.
pub type ConnectionId = ArrayVec<u8, MAX_CID_LEN>;

/// Parses the extension's data. `Ok(None)`: a well-formed CID longer than
/// [`MAX_CID_LEN`] (treated as not offered).
pub fn parse_connection_id(input: &[u8]) -> IResult<&[u8], Option<ConnectionId>> {
    let Some((&len, rest)) = input.split_first() else {
        return Err(Err::Failure(Error::new(input, ErrorKind::Eof)));
    };
    if rest.len() != len as usize {
        return Err(Err::Failure(Error::new(input, ErrorKind::LengthValue)));
    }
    let cid = ConnectionId::try_from(rest).ok();
    Ok((&rest[rest.len()..], cid))
}

/// Writes the extension's data.
pub fn serialize_connection_id(cid: &[u8], out: &mut Buf) {
    out.push(cid.len() as u8);
    out.extend_from_slice(cid);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let mut b = Buf::new();
        serialize_connection_id(&[1, 2, 3], &mut b);
        let (_, cid) = parse_connection_id(&b).unwrap();
        assert_eq!(cid.unwrap().as_slice(), &[1, 2, 3]);
        assert!(parse_connection_id(&[]).is_err());
        assert!(parse_connection_id(&[2, 1]).is_err());
        let mut long = vec![33u8];
        long.extend([0u8; 33]);
        assert_eq!(parse_connection_id(&long).unwrap().1, None);
        assert_eq!(parse_connection_id(&[0]).unwrap().1.unwrap().len(), 0);
    }
}
