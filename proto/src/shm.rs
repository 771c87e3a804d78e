//! The shared-memory transport's memory layout and ring arithmetic (docs/protocol.md §11):
//! constants and pure functions only, shared by the server and the clients. No IO.
//!
//! The memfd holds a control page and two rings of `ring_bytes` each: requests (client →
//! server) and responses (server → client). Each ring carries frames exactly as on the
//! socket, every frame starting at a 64-byte-aligned ring offset and lying whole between
//! the ring's start and end; a frame that would run past the end is preceded by a WRAP
//! record (a 32-byte header with opcode 0x00) and placed at offset 0.
//!
//! Positions are byte counts since the session began (u64, never wrapping in practice); a
//! position's place in a ring is `pos % ring_bytes`. `head` is where the producer has
//! published up to, `tail` where the consumer has released up to.

use crate::header::{align_up, Header, HEADER_LEN, MAGIC, VERSION};

/// Bytes of the control page at the start of the memfd.
pub const CONTROL_BYTES: u64 = 4096;
/// `"EISM"` little-endian, at offset 0 of the control page.
pub const SHM_MAGIC: u32 = 0x4D53_4945;
/// The layout's version, at offset 4.
pub const LAYOUT_VERSION: u32 = 1;
/// Offset 8: `ring_bytes` (u64), as granted.
pub const OFF_RING_BYTES: usize = 8;
/// u64 written by the client: bytes published into the request ring.
pub const OFF_REQ_HEAD: usize = 64;
/// u64 written by the server: request-ring bytes the client may write over again.
pub const OFF_REQ_TAIL: usize = 128;
/// u64 written by the server: bytes published into the response ring.
pub const OFF_RESP_HEAD: usize = 192;
/// u64 written by the client: response-ring bytes the server may write over again.
pub const OFF_RESP_TAIL: usize = 256;
/// u32 written by the server: 1 while it waits on the doorbell (the client must ring it
/// after publishing), 0 while it polls.
pub const OFF_SERVER_SLEEPING: usize = 320;
/// u32 written by the client: 1 while it waits on the doorbell for the server.
pub const OFF_CLIENT_SLEEPING: usize = 384;
/// u32 written by the server: 1 + the CPU its session runs on, 0 = not said. A side whose
/// peer runs on its own CPU does not poll (the peer cannot run while it spins): it sleeps
/// on the doorbell at once.
pub const OFF_SERVER_CPU: usize = 448;
/// u32 written by the client: 1 + the CPU it last ran on, 0 = not said.
pub const OFF_CLIENT_CPU: usize = 512;

/// Smallest ring the server grants, and the granularity of ring sizes (a power of two).
pub const MIN_RING_BYTES: u64 = 64 << 10;
/// The opcode of a WRAP record: "the next frame starts at ring offset 0".
pub const WRAP_OPCODE: u8 = 0x00;

/// The memfd's size for rings of `ring_bytes`.
pub const fn memfd_len(ring_bytes: u64) -> u64 {
    CONTROL_BYTES + 2 * ring_bytes
}

/// Offset of the request ring in the memfd.
pub const fn request_ring_offset() -> u64 {
    CONTROL_BYTES
}

/// Offset of the response ring in the memfd.
pub const fn response_ring_offset(ring_bytes: u64) -> u64 {
    CONTROL_BYTES + ring_bytes
}

/// The ring size granted for a request of `asked` bytes under a server bound of `max`:
/// a power of two, at least [`MIN_RING_BYTES`], at most `max` (itself rounded down to a
/// power of two). `None` when `max` is below the minimum.
pub fn grant_ring_bytes(asked: u64, max: u64) -> Option<u64> {
    if max < MIN_RING_BYTES {
        return None;
    }
    let cap = 1u64 << max.ilog2();
    let want = asked
        .max(MIN_RING_BYTES)
        .checked_next_power_of_two()
        .unwrap_or(cap);
    Some(want.min(cap))
}

/// Where a producer at `pos` puts a frame of `len` bytes in a ring of `ring_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// At ring offset `at` (= `pos % ring_bytes`); the next frame goes at `next`.
    Here { at: u64, next: u64 },
    /// A WRAP record at `pos % ring_bytes`, then the frame at offset 0 (position `start`);
    /// the next frame goes at `next`.
    Wrapped { start: u64, next: u64 },
}

impl Placement {
    /// The position after the frame (64-aligned), and so the head to publish.
    pub fn next(&self) -> u64 {
        match *self {
            Placement::Here { next, .. } | Placement::Wrapped { next, .. } => next,
        }
    }

    /// The ring offset the frame itself starts at.
    pub fn offset(&self, ring_bytes: u64) -> u64 {
        match *self {
            Placement::Here { at, .. } => at,
            Placement::Wrapped { start, .. } => start % ring_bytes,
        }
    }
}

/// Places a frame of `len` bytes (`len <= ring_bytes`, `pos` 64-aligned). `None` when the
/// frame is larger than the ring.
pub fn place(pos: u64, len: u64, ring_bytes: u64) -> Option<Placement> {
    if len > ring_bytes || len == 0 {
        return None;
    }
    let at = pos % ring_bytes;
    if at + len <= ring_bytes {
        return Some(Placement::Here {
            at,
            next: align_up(pos + len),
        });
    }
    let start = pos + (ring_bytes - at);
    Some(Placement::Wrapped {
        start,
        next: align_up(start + len),
    })
}

/// The 32 bytes of a WRAP record.
pub fn wrap_record() -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4] = VERSION;
    b[5] = WRAP_OPCODE;
    b
}

/// Whether a decoded header is a WRAP record (opcode 0, no metadata, no data).
pub fn is_wrap(h: &Header) -> bool {
    h.opcode == WRAP_OPCODE
}

/// Bytes of the ring that a WRAP record at position `pos` consumes.
pub fn wrap_skip(pos: u64, ring_bytes: u64) -> u64 {
    ring_bytes - pos % ring_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_powers_of_two_within_the_bound() {
        assert_eq!(grant_ring_bytes(0, 1 << 20), Some(MIN_RING_BYTES));
        assert_eq!(grant_ring_bytes(100_000, 1 << 20), Some(128 << 10));
        assert_eq!(grant_ring_bytes(u64::MAX, 3 << 20), Some(2 << 20));
        assert_eq!(grant_ring_bytes(1 << 20, 1000), None);
    }

    #[test]
    fn frames_stay_whole_and_aligned() {
        let ring = 1024;
        assert_eq!(
            place(0, 100, ring),
            Some(Placement::Here { at: 0, next: 128 })
        );
        // 960 + 100 runs past 1024: WRAP at 960, the frame at the next lap's start.
        let p = place(960, 100, ring).unwrap();
        assert_eq!(
            p,
            Placement::Wrapped {
                start: 1024,
                next: 1152
            }
        );
        assert_eq!(p.offset(ring), 0);
        assert_eq!(wrap_skip(960, ring), 64);
        assert_eq!(
            place(2048 + 64, 960, ring),
            Some(Placement::Here { at: 64, next: 3072 })
        );
        assert_eq!(place(0, 1025, ring), None);
    }

    #[test]
    fn a_wrap_record_is_a_valid_header() {
        let h = Header::decode(&wrap_record()).unwrap();
        assert!(is_wrap(&h));
        assert_eq!(h.frame_len(), HEADER_LEN as u64);
    }
}
