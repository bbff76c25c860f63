//! Output buffers that the crate's parallel kernels fill through raw pointers: each task writes
//! its own disjoint part, so the buffer needs neither a zero-fill pass nor a lock.

/// A raw pointer into one output buffer that tasks writing disjoint parts of it share.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub(crate) *mut f32);
// SAFETY: every user writes, from each task, a set of elements no other task touches (the
// kernels' own SAFETY comments say which).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// A vector of `len` elements that `fill` initialises through a raw pointer.
///
/// # Safety
/// `fill` must write every one of the `len` elements before returning.
pub(crate) unsafe fn filled_by(len: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(v.as_mut_ptr());
    // SAFETY: the caller's `fill` has initialised `len` elements within the capacity.
    unsafe { v.set_len(len) };
    v
}
