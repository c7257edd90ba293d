//! LwM2M paths: `/obj`, `/obj/inst`, `/obj/inst/res`, `/obj/inst/res/ri`.

use std::fmt;

/// A parsed LwM2M path (at most four numeric levels, each 0..=65535).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LwPath {
    ids: [u16; 4],
    len: u8,
}

/// Why a path string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path has more than four levels")]
    TooDeep,
    #[error("path segment {0:?} is not a number between 0 and 65535")]
    BadSegment(String),
}

impl LwPath {
    /// The root path `/` (no levels).
    pub const ROOT: LwPath = LwPath {
        ids: [0; 4],
        len: 0,
    };

    /// Builds a path from its levels (at most four; extra levels are an error).
    pub fn from_ids(ids: &[u16]) -> Result<Self, PathError> {
        if ids.len() > 4 {
            return Err(PathError::TooDeep);
        }
        let mut p = Self::ROOT;
        p.ids[..ids.len()].copy_from_slice(ids);
        p.len = ids.len() as u8;
        Ok(p)
    }

    /// Parses `"/3/0/1"`, `"3/0/1"`, `"/1/0/"` (leading and trailing `/` optional).
    /// `"/"` alone is the root. Empty strings are rejected.
    pub fn parse(s: &str) -> Result<Self, PathError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(PathError::Empty);
        }
        let t = t.strip_prefix('/').unwrap_or(t);
        let t = t.strip_suffix('/').unwrap_or(t);
        let mut p = Self::ROOT;
        if t.is_empty() {
            return Ok(p);
        }
        for seg in t.split('/') {
            if p.len == 4 {
                return Err(PathError::TooDeep);
            }
            let v: u16 = if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                seg.parse()
                    .map_err(|_| PathError::BadSegment(seg.to_string()))?
            } else {
                return Err(PathError::BadSegment(seg.to_string()));
            };
            p.ids[p.len as usize] = v;
            p.len += 1;
        }
        Ok(p)
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn ids(&self) -> &[u16] {
        &self.ids[..self.len as usize]
    }
    pub fn object(&self) -> Option<u16> {
        self.ids().first().copied()
    }
    pub fn instance(&self) -> Option<u16> {
        self.ids().get(1).copied()
    }
    pub fn resource(&self) -> Option<u16> {
        self.ids().get(2).copied()
    }
    pub fn resource_instance(&self) -> Option<u16> {
        self.ids().get(3).copied()
    }

    /// This path with one more level, or `None` if it is already four deep.
    pub fn child(&self, id: u16) -> Option<Self> {
        if self.len == 4 {
            return None;
        }
        let mut p = *self;
        p.ids[p.len as usize] = id;
        p.len += 1;
        Some(p)
    }

    /// True if `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &LwPath) -> bool {
        self.len >= other.len && self.ids[..other.len as usize] == other.ids[..other.len as usize]
    }
}

impl fmt::Display for LwPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len == 0 {
            return f.write_str("/");
        }
        for id in self.ids() {
            write!(f, "/{id}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_liberally() {
        assert_eq!(LwPath::parse("/3/0/1").unwrap().ids(), &[3, 0, 1]);
        assert_eq!(LwPath::parse("3/0/4").unwrap().ids(), &[3, 0, 4]);
        assert_eq!(LwPath::parse("/1/0/").unwrap().ids(), &[1, 0]);
        assert_eq!(LwPath::parse("/").unwrap(), LwPath::ROOT);
        assert_eq!(LwPath::parse("/3/0/7/1").unwrap().to_string(), "/3/0/7/1");
    }

    #[test]
    fn rejects_bad_paths() {
        assert_eq!(LwPath::parse(""), Err(PathError::Empty));
        assert_eq!(LwPath::parse("/1/2/3/4/5"), Err(PathError::TooDeep));
        assert!(matches!(
            LwPath::parse("/a/0"),
            Err(PathError::BadSegment(_))
        ));
        assert!(matches!(
            LwPath::parse("/70000"),
            Err(PathError::BadSegment(_))
        ));
        assert!(matches!(
            LwPath::parse("//3"),
            Err(PathError::BadSegment(_))
        ));
        assert!(matches!(
            LwPath::parse("/-1"),
            Err(PathError::BadSegment(_))
        ));
    }

    #[test]
    fn relations() {
        let p = LwPath::parse("/3/0/1").unwrap();
        assert!(p.starts_with(&LwPath::parse("/3").unwrap()));
        assert!(!p.starts_with(&LwPath::parse("/4").unwrap()));
        assert_eq!(LwPath::parse("/3/0").unwrap().child(1), Some(p));
    }
}
