//! Frame buffers: 64-byte-aligned byte buffers that frames are read into, lent to the
//! kernel by value (monoio's rent model), sized to the frame, and kept in a per-core-thread
//! pool bounded by a byte budget.
//!
//! A frame read at offset 0 of a [`FrameBuf`] has every tensor 64-aligned in memory (the
//! protocol aligns tensors from the frame start), so engines view the bytes in place.
//! Buffers never leave the core thread that took them (`!Send`), so the pool is a plain
//! thread-local with no locking; dropping a buffer hands it back.
//!
//! Memory is bounded by construction:
//! - sizes come in power-of-two classes from [`MIN_CLASS`] up, so a 100-byte request pins a
//!   few hundred bytes, not a read chunk;
//! - only classes up to [`MAX_POOLED`] are pooled, and only while the idle bytes in this
//!   thread's pool stay within its budget (`server.buffer_pool_bytes`);
//! - larger buffers are their own anonymous mappings, unmapped on drop, so their pages go
//!   back to the kernel at once (an allocator would keep a freed 4 MiB block in its arena).

use std::alloc::{self, Layout};
use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::ptr::NonNull;

use monoio::buf::{IoBuf, IoBufMut};

/// Alignment of every buffer: the protocol's tensor alignment.
pub const ALIGN: usize = 64;
/// Size of a connection's read buffer while no large frame is being received: one read
/// takes up to this much, which holds dozens of small pipelined frames.
pub const READ_CHUNK: usize = 16 << 10;
/// Smallest buffer handed out.
pub const MIN_CLASS: usize = 512;
/// Largest buffer kept for reuse; larger ones are mapped and unmapped per frame.
pub const MAX_POOLED: usize = 1 << 20;
/// Default idle-buffer budget per core thread.
pub const DEFAULT_POOL_BYTES: usize = 16 << 20;

const CLASSES: usize = (MAX_POOLED / MIN_CLASS).trailing_zeros() as usize + 1;

/// An owned, 64-byte-aligned buffer: `len` initialised bytes out of `cap`.
pub struct FrameBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
    /// Bytes lent by someone else (a shared-memory ring): handed back, never freed.
    lender: Option<(std::rc::Rc<dyn Lender>, u64)>,
    // Pool membership is per thread: keep buffers on the thread that took them.
    _not_send: PhantomData<*mut u8>,
}

struct Pool {
    /// Free buffers by class: `free[i]` holds buffers of `MIN_CLASS << i` bytes.
    free: [Vec<NonNull<u8>>; CLASSES],
    /// Bytes held in `free`.
    bytes: usize,
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (i, list) in self.free.iter_mut().enumerate() {
            for ptr in list.drain(..) {
                // SAFETY: every pooled pointer of class `i` came from `alloc` with this layout.
                unsafe { alloc::dealloc(ptr.as_ptr(), layout(MIN_CLASS << i)) };
            }
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool { free: [const { Vec::new() }; CLASSES], bytes: 0 })
    };
    static BUDGET: Cell<usize> = const { Cell::new(DEFAULT_POOL_BYTES) };
}

/// Sets this thread's idle-buffer budget (a core runtime calls it once at start) and frees
/// pooled buffers beyond it.
pub fn set_pool_budget(bytes: usize) {
    BUDGET.with(|b| b.set(bytes));
    let _ = POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        // Largest first: the fewest frees bring it under.
        for i in (0..CLASSES).rev() {
            while p.bytes > bytes {
                let Some(ptr) = p.free[i].pop() else { break };
                p.bytes -= MIN_CLASS << i;
                // SAFETY: pooled buffers of class `i` were allocated with this layout.
                unsafe { alloc::dealloc(ptr.as_ptr(), layout(MIN_CLASS << i)) };
            }
        }
    });
}

/// Bytes of idle buffers this thread's pool holds now.
#[cfg(test)]
pub fn pooled_bytes() -> usize {
    POOL.try_with(|p| p.borrow().bytes).unwrap_or(0)
}

fn layout(cap: usize) -> Layout {
    // cap is a power of two between MIN_CLASS and MAX_POOLED, so the layout is valid.
    Layout::from_size_align(cap, ALIGN).expect("frame buffer layout")
}

/// The pool class for a request of `min_cap` bytes, or `None` above [`MAX_POOLED`].
fn class_of(min_cap: usize) -> Option<usize> {
    let size = min_cap.max(MIN_CLASS).checked_next_power_of_two()?;
    (size <= MAX_POOLED).then(|| (size / MIN_CLASS).trailing_zeros() as usize)
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p)
        .ok()
        .filter(|&p| p >= ALIGN)
        .unwrap_or(4096)
}

impl FrameBuf {
    /// A buffer with room for at least `min_cap` bytes: from this thread's pool when one of
    /// its class is free, else newly allocated (mapped, above [`MAX_POOLED`]).
    pub fn take(min_cap: usize) -> FrameBuf {
        let (ptr, cap) = match class_of(min_cap) {
            Some(c) => {
                let cap = MIN_CLASS << c;
                let reused = POOL
                    .try_with(|p| {
                        let mut p = p.borrow_mut();
                        let ptr = p.free[c].pop()?;
                        p.bytes -= cap;
                        Some(ptr)
                    })
                    .ok()
                    .flatten();
                let ptr = reused.unwrap_or_else(|| {
                    // SAFETY: the layout has a non-zero size.
                    let raw = unsafe { alloc::alloc(layout(cap)) };
                    NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout(cap)))
                });
                (ptr, cap)
            }
            None => {
                let cap = min_cap.next_multiple_of(page_size());
                // SAFETY: an anonymous private mapping of `cap` (> 0) bytes, no fd, no hint.
                let raw = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        cap,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                if raw == libc::MAP_FAILED {
                    alloc::handle_alloc_error(Layout::from_size_align(cap, ALIGN).expect("size"));
                }
                // Page-aligned, so 64-aligned too; mmap never returns null on success.
                (
                    NonNull::new(raw.cast::<u8>()).expect("mmap returned null"),
                    cap,
                )
            }
        };
        FrameBuf {
            ptr,
            cap,
            len: 0,
            lender: None,
            _not_send: PhantomData,
        }
    }

    /// A frame that stays where it is, in memory `lender` owns (a shared-memory ring, see
    /// `server::shm`): dropping the buffer calls `lender.give_back(token)` instead of
    /// freeing anything. The buffer is read-only in practice: it is never read into.
    ///
    /// # Safety
    /// `ptr..ptr + len` must stay mapped and readable until `give_back` is called.
    pub unsafe fn lent(
        ptr: NonNull<u8>,
        len: usize,
        lender: std::rc::Rc<dyn Lender>,
        token: u64,
    ) -> FrameBuf {
        FrameBuf {
            ptr,
            cap: len,
            len,
            lender: Some((lender, token)),
            _not_send: PhantomData,
        }
    }

    /// A buffer holding a copy of `bytes` at offset 0.
    pub fn copy_of(bytes: &[u8]) -> FrameBuf {
        let mut b = FrameBuf::take(bytes.len());
        b.extend_from(bytes);
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
        // SAFETY: the first `len` bytes are initialised: every path that raises `len` wrote
        // them (`extend_from`, or the kernel before the runtime called `set_init`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Appends `bytes`, which must fit in the capacity.
    pub fn extend_from(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        assert!(end <= self.cap, "frame buffer overflow");
        // SAFETY: `len..end` lies inside the `cap`-byte allocation (checked above); it is
        // written through a raw pointer, never viewed as a slice before it is initialised;
        // `bytes` is a live slice that cannot overlap a buffer we own exclusively.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(self.len),
                bytes.len(),
            )
        };
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

/// Owner of memory lent out as [`FrameBuf`]s ([`FrameBuf::lent`]).
pub trait Lender {
    /// The buffer lent under `token` is dropped: its bytes may be reused.
    fn give_back(&self, token: u64);
}

impl Drop for FrameBuf {
    fn drop(&mut self) {
        if let Some((lender, token)) = self.lender.take() {
            lender.give_back(token);
            return;
        }
        let (ptr, cap) = (self.ptr, self.cap);
        let Some(c) = class_of(cap).filter(|&c| MIN_CLASS << c == cap) else {
            // SAFETY: not a pooled class size, so `take` mapped it with exactly `cap` bytes.
            unsafe { libc::munmap(ptr.as_ptr().cast(), cap) };
            return;
        };
        let budget = BUDGET.try_with(Cell::get).unwrap_or(0);
        let kept = POOL
            .try_with(|p| {
                let mut p = p.borrow_mut();
                if p.bytes + cap > budget {
                    return false;
                }
                p.bytes += cap;
                p.free[c].push(ptr);
                true
            })
            .unwrap_or(false);
        if !kept {
            // SAFETY: allocated in `take` with this class's layout and not pooled.
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
// the buffer. The runtime (and the kernel) only write through it, as raw memory; no Rust
// reference to the uninitialised tail is ever made. `set_init` is called with the count of
// bytes actually filled, so `len` never covers bytes nobody wrote.
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
    fn buffers_are_aligned_sized_to_frames_and_reused() {
        set_pool_budget(DEFAULT_POOL_BYTES);
        let a = FrameBuf::take(100);
        assert_eq!(a.read_ptr() as usize % ALIGN, 0);
        assert_eq!(a.capacity(), MIN_CLASS, "a small frame gets a small buffer");
        let p = a.read_ptr();
        drop(a);
        let b = FrameBuf::take(300);
        assert_eq!(
            b.read_ptr(),
            p,
            "the pooled buffer of that class comes back"
        );
        let mid = FrameBuf::take(70_000);
        assert_eq!(mid.capacity(), 128 << 10);
        let big = FrameBuf::take(3 * MAX_POOLED + 1);
        assert!(big.capacity() > 3 * MAX_POOLED);
        assert_eq!(big.read_ptr() as usize % ALIGN, 0);
    }

    #[test]
    fn the_pool_stays_within_its_budget_and_never_keeps_big_buffers() {
        set_pool_budget(64 << 10);
        let held: Vec<FrameBuf> = (0..64).map(|_| FrameBuf::take(4096)).collect();
        drop(held);
        assert!(pooled_bytes() <= 64 << 10, "{}", pooled_bytes());
        assert_eq!(pooled_bytes(), 64 << 10, "up to the budget is kept");
        let before = pooled_bytes();
        drop(FrameBuf::take(8 << 20));
        assert_eq!(
            pooled_bytes(),
            before,
            "a mapped buffer is unmapped, not pooled"
        );
        set_pool_budget(0);
        assert_eq!(pooled_bytes(), 0, "lowering the budget frees the excess");
        drop(FrameBuf::take(100));
        assert_eq!(pooled_bytes(), 0);
        set_pool_budget(DEFAULT_POOL_BYTES);
    }

    #[test]
    fn extend_and_keep_range() {
        let mut b = FrameBuf::copy_of(b"0123456789");
        b.extend_from(b"ab");
        assert_eq!(b.as_slice(), b"0123456789ab");
        b.keep_range(7);
        assert_eq!(b.as_slice(), b"789ab");
        b.keep_range(5);
        assert!(b.is_empty());
        let mut big = FrameBuf::take(2 * MAX_POOLED);
        big.extend_from(&[7u8; 1000]);
        assert_eq!(big.len(), 1000);
        assert!(big.iter().all(|&x| x == 7));
    }
}
