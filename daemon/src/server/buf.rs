//! Frame buffers: 64-byte-aligned byte buffers that frames are read into, lent to the
//! kernel by value (monoio's rent model) and kept in a per-core-thread pool.
//!
//! A frame read at offset 0 of a [`FrameBuf`] has every tensor 64-aligned in memory (the
//! protocol aligns tensors from the frame start), so engines view the bytes in place.
//! Buffers never leave the core thread that took them (`!Send`), so the pool is a plain
//! thread-local with no locking; dropping a buffer hands it back.

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::marker::PhantomData;
use std::ptr::NonNull;

use monoio::buf::{IoBuf, IoBufMut};

/// Alignment of every buffer: the protocol's tensor alignment.
pub const ALIGN: usize = 64;
/// Size of a fresh connection buffer: one read takes up to this much when the next frame's
/// length is not known yet (or is smaller).
pub const CHUNK: usize = 64 << 10;
/// Most buffers one core keeps for reuse.
const POOL_MAX_BUFFERS: usize = 1024;
/// Buffers above this size are pooled only a few at a time, so one burst of huge frames
/// does not pin their memory for the life of the process.
const LARGE: usize = 4 << 20;
const POOL_MAX_LARGE: usize = 8;

/// An owned, 64-byte-aligned buffer: `len` initialised bytes out of `cap`.
pub struct FrameBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
    // Pool membership is per thread: keep buffers on the thread that took them.
    _not_send: PhantomData<*mut u8>,
}

struct Pool {
    free: Vec<(NonNull<u8>, usize)>,
    large: usize,
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (ptr, cap) in self.free.drain(..) {
            // SAFETY: every pooled pointer came from `alloc` with this layout.
            unsafe { alloc::dealloc(ptr.as_ptr(), layout(cap)) };
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { free: Vec::new(), large: 0 }) };
}

fn layout(cap: usize) -> Layout {
    // cap is a non-zero multiple of ALIGN, well below isize::MAX (frames are capped at
    // the protocol's frame limit), so the layout is always valid.
    Layout::from_size_align(cap, ALIGN).expect("frame buffer layout")
}

impl FrameBuf {
    /// A buffer with room for at least `min_cap` bytes, from this thread's pool when one
    /// fits, else newly allocated (at least [`CHUNK`]).
    pub fn take(min_cap: usize) -> FrameBuf {
        let reused = POOL
            .try_with(|p| {
                let mut p = p.borrow_mut();
                // Best fit, and never a buffer far bigger than needed: small frames must
                // not tie up the big buffers that large frames come back for.
                let most = min_cap.max(CHUNK).saturating_mul(4);
                let i = p
                    .free
                    .iter()
                    .enumerate()
                    .filter(|(_, &(_, cap))| cap >= min_cap && cap <= most)
                    .min_by_key(|(_, &(_, cap))| cap)?
                    .0;
                let (ptr, cap) = p.free.swap_remove(i);
                if cap > LARGE {
                    p.large -= 1;
                }
                Some((ptr, cap))
            })
            .ok()
            .flatten();
        let (ptr, cap) = match reused {
            Some(b) => b,
            None => {
                let cap = min_cap.max(CHUNK).next_multiple_of(ALIGN);
                // SAFETY: the layout has a non-zero size.
                let raw = unsafe { alloc::alloc(layout(cap)) };
                let ptr =
                    NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout(cap)));
                (ptr, cap)
            }
        };
        FrameBuf {
            ptr,
            cap,
            len: 0,
            _not_send: PhantomData,
        }
    }

    /// A buffer holding a copy of `bytes` at offset 0.
    pub fn copy_of(bytes: &[u8]) -> FrameBuf {
        let mut b = FrameBuf::take(bytes.len());
        b.as_spare()[..bytes.len()].copy_from_slice(bytes);
        b.len = bytes.len();
        b
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are initialised (written by the kernel or copied in).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Appends `bytes`, which must fit in the capacity.
    pub fn extend_from(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        assert!(end <= self.cap, "frame buffer overflow");
        let len = self.len;
        self.as_spare()[len..end].copy_from_slice(bytes);
        self.len = end;
    }

    /// Forget all but the first `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Moves the initialised bytes from `start` on to the front and keeps only them: what
    /// is left of a partly received frame after the frames before it were consumed.
    pub fn keep_range(&mut self, start: usize) {
        let start = start.min(self.len);
        let n = self.len - start;
        // SAFETY: both ranges lie within the initialised bytes; `copy` allows overlap.
        unsafe { std::ptr::copy(self.ptr.as_ptr().add(start), self.ptr.as_ptr(), n) };
        self.len = n;
    }

    /// The uninitialised tail as writable bytes.
    fn as_spare(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is `cap` bytes; treating uninitialised u8 as writable
        // memory is fine because we only write through this slice before reading.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }
}

impl std::ops::Deref for FrameBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for FrameBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .finish()
    }
}

impl Drop for FrameBuf {
    fn drop(&mut self) {
        let (ptr, cap) = (self.ptr, self.cap);
        let kept = POOL
            .try_with(|p| {
                let mut p = p.borrow_mut();
                if p.free.len() >= POOL_MAX_BUFFERS || (cap > LARGE && p.large >= POOL_MAX_LARGE) {
                    return false;
                }
                if cap > LARGE {
                    p.large += 1;
                }
                p.free.push((ptr, cap));
                true
            })
            .unwrap_or(false);
        if !kept {
            // SAFETY: allocated in `take` with this layout and not pooled.
            unsafe { alloc::dealloc(ptr.as_ptr(), layout(cap)) };
        }
    }
}

// SAFETY: `read_ptr` is the start of a live allocation that does not move while the
// buffer is owned by the runtime, and `bytes_init` initialised bytes follow it.
unsafe impl IoBuf for FrameBuf {
    fn read_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.len
    }
}

// SAFETY: `write_ptr` points at `cap` writable bytes that stay put while the runtime owns
// the buffer; `set_init` is called by the runtime with the count it actually filled.
unsafe impl IoBufMut for FrameBuf {
    fn write_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn bytes_total(&mut self) -> usize {
        self.cap
    }

    unsafe fn set_init(&mut self, pos: usize) {
        self.len = pos.min(self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_reused() {
        let a = FrameBuf::take(10);
        assert_eq!(a.read_ptr() as usize % ALIGN, 0);
        assert!(a.capacity() >= CHUNK);
        let p = a.read_ptr();
        drop(a);
        let b = FrameBuf::take(100);
        assert_eq!(b.read_ptr(), p, "the pooled buffer comes back");
        let big = FrameBuf::take(3 * CHUNK + 1);
        assert!(big.capacity() > 3 * CHUNK);
        assert_eq!(big.read_ptr() as usize % ALIGN, 0);
    }

    #[test]
    fn keep_range_moves_the_tail_to_the_front() {
        let mut b = FrameBuf::copy_of(b"0123456789");
        b.keep_range(7);
        assert_eq!(b.as_slice(), b"789");
        b.keep_range(3);
        assert!(b.is_empty());
    }
}
