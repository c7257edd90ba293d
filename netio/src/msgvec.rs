//! Storage for the kernel-facing message headers of one batch.

use std::ops::{Deref, DerefMut};

/// A vector of C structs that contain raw pointers (`iovec`, `mmsghdr`).
///
/// The pointers always point into buffers owned by the same batch object and
/// are rewritten from `&mut self` right before every system call, so they are
/// never dereferenced by anyone while another thread could hold the batch.
pub(crate) struct RawVec<T>(pub(crate) Vec<T>);

// SAFETY: the raw pointers inside are only used by the kernel during a
// recvmmsg/sendmmsg call made through `&mut` access to the owning batch, after
// being refreshed to point into that batch's own heap buffers. Moving the
// batch to another thread moves ownership of those buffers along with it.
unsafe impl<T> Send for RawVec<T> {}
// SAFETY: shared (`&`) access only reads plain integer fields (lengths,
// flags); the pointers are never dereferenced through `&self`.
unsafe impl<T> Sync for RawVec<T> {}

impl<T> Deref for RawVec<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<T> DerefMut for RawVec<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.0
    }
}

/// An `iovec` describing nothing; filled in before each call.
pub(crate) fn empty_iovec() -> libc::iovec {
    libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }
}

/// An all-empty `mmsghdr`; filled in before each call.
pub(crate) fn empty_mmsghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is a C struct of integers and raw pointers (plus
    // private padding on some libcs); all-zero bytes are a valid value
    // (null pointers, zero lengths).
    unsafe { std::mem::zeroed() }
}

/// `vec![f(); n]` for types that are not `Clone`.
pub(crate) fn filled<T>(n: usize, f: impl Fn() -> T) -> Vec<T> {
    (0..n).map(|_| f()).collect()
}
