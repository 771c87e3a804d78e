//! Answers waiting to be written, and the vectored write that sends them: the frame head
//! (header, metadata, padding) from a reused buffer, then each output tensor's bytes straight
//! from the engine's reusable `Outputs`, with static zeros between tensors.

use std::rc::Rc;

use edgeinfer_engine::Outputs;
use monoio::buf::IoVecBuf;

use super::core::CoreModel;

static ZEROS: [u8; 64] = [0u8; 64];

/// One answer frame. Pooled per core: `head` and the outputs keep their capacity.
pub struct Response {
    /// Header, metadata and padding (or a whole frame with no tensor data).
    pub head: Vec<u8>,
    /// Engine outputs whose bytes follow `head`, for PREDICT answers.
    pub outputs: Option<Outputs>,
    /// The model whose output pool `outputs` goes back to.
    pub home: Option<Rc<CoreModel>>,
    /// Indices into `outputs.tensors` of the tensors sent, in order.
    pub sel: smallvec::SmallVec<[u8; 8]>,
}

impl Response {
    pub fn new() -> Response {
        Response {
            head: Vec::with_capacity(256),
            outputs: None,
            home: None,
            sel: Default::default(),
        }
    }

    /// Returns the outputs to their model's pool and forgets the rest.
    pub fn recycle(&mut self) {
        if let (Some(out), Some(home)) = (self.outputs.take(), self.home.take()) {
            home.give_outputs(out);
        }
        self.outputs = None;
        self.home = None;
        self.sel.clear();
        self.head.clear();
    }

    fn push_iovecs(&self, iov: &mut Vec<libc::iovec>) {
        iov.push(iovec(&self.head));
        let Some(out) = &self.outputs else { return };
        let last = self.sel.len().saturating_sub(1);
        for (i, &k) in self.sel.iter().enumerate() {
            let data = &out.tensors[k as usize].data;
            if !data.is_empty() {
                iov.push(iovec(data));
            }
            if i != last {
                let pad = (64 - data.len() % 64) % 64;
                if pad != 0 {
                    iov.push(iovec(&ZEROS[..pad]));
                }
            }
        }
    }
}

fn iovec(b: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }
}

/// Most iovecs handed to one `writev` (the kernel's IOV_MAX is 1024).
const MAX_IOV: usize = 1024;

/// The answers of one `writev`: owned while the kernel reads them, then recycled.
pub struct WriteBatch {
    iov: Vec<libc::iovec>,
    /// First iovec not yet fully written.
    cursor: usize,
    pub responses: Vec<Response>,
}

impl WriteBatch {
    pub fn new() -> WriteBatch {
        WriteBatch {
            iov: Vec::with_capacity(16),
            cursor: 0,
            responses: Vec::with_capacity(8),
        }
    }

    /// Takes answers from `queue` while they fit in one `writev`.
    pub fn fill(&mut self, queue: &mut std::collections::VecDeque<Response>) {
        while let Some(r) = queue.front() {
            let need = 1 + 2 * r.sel.len();
            if !self.responses.is_empty() && self.iov.len() + need > MAX_IOV {
                break;
            }
            let r = queue.pop_front().expect("front exists");
            r.push_iovecs(&mut self.iov);
            self.responses.push(r);
        }
    }

    /// Accounts for `n` bytes written; true when everything is written.
    pub fn advance(&mut self, mut n: usize) -> bool {
        while n > 0 && self.cursor < self.iov.len() {
            let v = &mut self.iov[self.cursor];
            if n >= v.iov_len {
                n -= v.iov_len;
                self.cursor += 1;
            } else {
                // SAFETY: n < iov_len, so the new base stays inside the same buffer.
                v.iov_base = unsafe { (v.iov_base as *mut u8).add(n) } as *mut libc::c_void;
                v.iov_len -= n;
                n = 0;
            }
        }
        while self.cursor < self.iov.len() && self.iov[self.cursor].iov_len == 0 {
            self.cursor += 1;
        }
        self.cursor >= self.iov.len()
    }

    /// No answers in it (nothing left over from an inline write).
    pub fn is_empty(&self) -> bool {
        self.responses.is_empty()
    }

    /// Sends what is left of the batch with one non-blocking `sendmsg` from this thread
    /// (the reader writing its own answers, without a hop to the writer task): the bytes
    /// taken, or the error. Works for Unix and TCP stream sockets alike, blocking or not
    /// (`MSG_DONTWAIT`); `MSG_NOSIGNAL`: a peer that left must not kill the daemon.
    pub fn send_now(&mut self, fd: std::os::fd::RawFd) -> std::io::Result<usize> {
        let live = &mut self.iov[self.cursor..];
        // SAFETY: an all-zero msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = live.as_mut_ptr();
        msg.msg_iovlen = live.len() as _;
        // SAFETY: `fd` is the caller's open socket; the iovecs point into this batch's
        // answers and static zeros (see the `IoVecBuf` impl), valid for the call.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Empties the batch, handing each answer to `recycle`.
    pub fn drain(&mut self, mut recycle: impl FnMut(Response)) {
        self.iov.clear();
        self.cursor = 0;
        for r in self.responses.drain(..) {
            recycle(r);
        }
    }
}

// SAFETY: the iovecs point into `responses` (heap buffers owned by this batch, which do not
// move when the batch does) and into static zeros; they stay valid while the runtime owns
// the batch, and `read_iovec_len` counts only live entries from the cursor on.
unsafe impl IoVecBuf for WriteBatch {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov[self.cursor..].as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iov.len() - self.cursor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_handles_partial_writes() {
        let mut b = WriteBatch::new();
        let mut q = std::collections::VecDeque::new();
        let mut r = Response::new();
        r.head.extend_from_slice(&[1, 2, 3, 4]);
        q.push_back(r);
        let mut r = Response::new();
        r.head.extend_from_slice(&[5, 6]);
        q.push_back(r);
        b.fill(&mut q);
        assert_eq!(b.read_iovec_len(), 2);
        assert!(!b.advance(3));
        assert_eq!(b.read_iovec_len(), 2);
        // SAFETY: the pointer is to a live iovec of the batch.
        let first = unsafe { *b.read_iovec_ptr() };
        assert_eq!(first.iov_len, 1);
        assert!(!b.advance(1));
        assert_eq!(b.read_iovec_len(), 1);
        assert!(b.advance(2));
        let mut n = 0;
        b.drain(|_| n += 1);
        assert_eq!(n, 2);
        assert!(b.responses.is_empty());
    }
}
