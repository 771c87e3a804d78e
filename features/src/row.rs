//! The stored row: a feature vector, its event time and its schema version, laid out so
//! that reads are zero-copy.
//!
//! ```text
//! 0   event_ts_ms   i64 LE
//! 8   schema_version u32 LE
//! 12  count          u16 LE   number of values
//! 14  format         u16 LE   ROW_F64 (1) or ROW_F32 (2)
//! 16  presence       ceil(count/64) × u64 LE, bit i set = value i present
//! ..  values         count × f64 LE (format 1) or count × f32 LE (format 2)
//! ```
//! Every section starts at a multiple of 8 from the row start, so when LMDB hands back an
//! 8-aligned value (the usual case) the values are viewed in place as `&[f64]` or `&[f32]`
//! with bytemuck. LMDB only promises 2-byte alignment, so a misaligned value is read with
//! unaligned loads instead: same answers, never a panic.
//!
//! Format 2 halves the values of a schema whose features are all `f32` or `bool` (each
//! held exactly by an f32): a smaller row means fewer B-tree pages, so fewer cache and TLB
//! misses per lookup at a million entities. Any other dtype needs f64 (integers to 2^53).

use crate::FeatureError;

/// Values stored as f64 (any dtype).
pub const ROW_F64: u16 = 1;
/// Values stored as f32 (a schema of `f32` and `bool` features only).
pub const ROW_F32: u16 = 2;
/// The format rows were written in before format 2 existed.
pub const ROW_FORMAT: u16 = ROW_F64;
const HEADER: usize = 16;

/// A row to write: values in the schema's field order, `None` = absent (takes the default).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRow {
    pub event_ts_ms: i64,
    pub schema_version: u32,
    pub values: Vec<Option<f64>>,
}

/// The encoded length of a row of `count` values in [`ROW_F64`].
pub const fn encoded_len(count: usize) -> usize {
    encoded_len_as(ROW_F64, count)
}

/// The encoded length of a row of `count` values in `format`.
pub const fn encoded_len_as(format: u16, count: usize) -> usize {
    let width = if format == ROW_F32 { 4 } else { 8 };
    HEADER + count.div_ceil(64) * 8 + count * width
}

impl FeatureRow {
    /// Appends the [`ROW_F64`] encoding to `out` (cleared first).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        self.encode_into_as(ROW_F64, out);
    }

    /// Appends the encoding in `format` to `out` (cleared first). In [`ROW_F32`] each value
    /// is rounded to an f32: the caller picks it only for schemas whose dtypes an f32 holds.
    pub fn encode_into_as(&self, format: u16, out: &mut Vec<u8>) {
        let n = self.values.len();
        out.clear();
        out.reserve(encoded_len_as(format, n));
        out.extend_from_slice(&self.event_ts_ms.to_le_bytes());
        out.extend_from_slice(&self.schema_version.to_le_bytes());
        out.extend_from_slice(&(n as u16).to_le_bytes());
        out.extend_from_slice(&format.to_le_bytes());
        for chunk in self.values.chunks(64) {
            let mut word = 0u64;
            for (i, v) in chunk.iter().enumerate() {
                if v.is_some() {
                    word |= 1 << i;
                }
            }
            out.extend_from_slice(&word.to_le_bytes());
        }
        for v in &self.values {
            let v = v.unwrap_or(0.0);
            if format == ROW_F32 {
                out.extend_from_slice(&(v as f32).to_le_bytes());
            } else {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }
}

/// A stored row viewed in place.
#[derive(Debug, Clone, Copy)]
pub struct RowView<'a> {
    pub event_ts_ms: i64,
    pub schema_version: u32,
    count: usize,
    presence: &'a [u8],
    values: Values<'a>,
}

/// The values section: in place when aligned, otherwise read with unaligned loads.
#[derive(Debug, Clone, Copy)]
enum Values<'a> {
    F64(&'a [f64]),
    F32(&'a [f32]),
    UnalignedF64(&'a [u8]),
    UnalignedF32(&'a [u8]),
}

impl<'a> RowView<'a> {
    /// Views an encoded row; a malformed one is an error, never a panic.
    pub fn parse(bytes: &'a [u8]) -> Result<RowView<'a>, FeatureError> {
        let bad = |m: String| FeatureError::Malformed(format!("stored row: {m}"));
        if bytes.len() < HEADER {
            return Err(bad(format!(
                "{} bytes, shorter than the header",
                bytes.len()
            )));
        }
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let format = u16_at(14);
        if format != ROW_F64 && format != ROW_F32 {
            return Err(bad(format!(
                "format {format}, this build reads {ROW_F64} and {ROW_F32}"
            )));
        }
        let count = usize::from(u16_at(12));
        if bytes.len() != encoded_len_as(format, count) {
            return Err(bad(format!(
                "{} bytes for {count} values, expected {}",
                bytes.len(),
                encoded_len_as(format, count)
            )));
        }
        let event_ts_ms = i64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes"));
        let schema_version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        let values_at = HEADER + count.div_ceil(64) * 8;
        let presence = &bytes[HEADER..values_at];
        let raw = &bytes[values_at..];
        let values = if format == ROW_F32 {
            match bytemuck::try_cast_slice::<u8, f32>(raw) {
                Ok(v) => Values::F32(v),
                Err(_) => Values::UnalignedF32(raw),
            }
        } else {
            match bytemuck::try_cast_slice::<u8, f64>(raw) {
                Ok(v) => Values::F64(v),
                Err(_) => Values::UnalignedF64(raw),
            }
        };
        Ok(RowView {
            event_ts_ms,
            schema_version,
            count,
            presence,
            values,
        })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the values were viewed in place (the zero-copy path).
    pub fn is_zero_copy(&self) -> bool {
        matches!(self.values, Values::F64(_) | Values::F32(_))
    }

    /// The row's storage format ([`ROW_F64`] or [`ROW_F32`]).
    pub fn format(&self) -> u16 {
        match self.values {
            Values::F32(_) | Values::UnalignedF32(_) => ROW_F32,
            Values::F64(_) | Values::UnalignedF64(_) => ROW_F64,
        }
    }

    /// Value `i`, `None` when absent or out of range.
    #[inline]
    pub fn get(&self, i: usize) -> Option<f64> {
        if i >= self.count || self.presence[i / 8] & (1 << (i % 8)) == 0 {
            return None;
        }
        Some(match self.values {
            Values::F64(v) => v[i],
            Values::F32(v) => f64::from(v[i]),
            Values::UnalignedF64(b) => {
                f64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
            }
            Values::UnalignedF32(b) => f64::from(f32::from_le_bytes(
                b[i * 4..i * 4 + 4].try_into().expect("4 bytes"),
            )),
        })
    }

    /// Appends values `0..n` to `out` as f32 when all of them are present, in one pass
    /// over the stored bytes (no per-value lookups); returns false, appending nothing,
    /// when one is absent or `n` exceeds the row. The assembler's path for a row that
    /// holds every feature of a model whose order is the stored one.
    pub fn extend_dense_f32(&self, n: usize, out: &mut Vec<f32>) -> bool {
        if n > self.count {
            return false;
        }
        let (full, rest) = (n / 8, n % 8);
        let tail = (1u8 << rest) - 1;
        if self.presence[..full].iter().any(|&b| b != 0xFF)
            || (rest > 0 && self.presence[full] & tail != tail)
        {
            return false;
        }
        match self.values {
            Values::F32(v) => out.extend_from_slice(&v[..n]),
            Values::F64(v) => out.extend(v[..n].iter().map(|&x| x as f32)),
            Values::UnalignedF32(b) => out.extend(
                b[..n * 4]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            Values::UnalignedF64(b) => out.extend(
                b[..n * 8]
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32),
            ),
        }
        true
    }

    /// Copies the row back into an owned [`FeatureRow`].
    pub fn to_row(&self) -> FeatureRow {
        FeatureRow {
            event_ts_ms: self.event_ts_ms,
            schema_version: self.schema_version,
            values: (0..self.count).map(|i| self.get(i)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FeatureRow {
        FeatureRow {
            event_ts_ms: 1_700_000_000_123,
            schema_version: 7,
            values: (0..70)
                .map(|i| (i % 3 != 0).then_some(i as f64 * 0.5))
                .collect(),
        }
    }

    /// The whole-row copy gives what value-by-value reads give, in both formats, aligned
    /// or not (offsets 0, 2, 1), and refuses a row with a value absent in its range.
    #[test]
    fn a_dense_copy_reads_what_get_reads() {
        let full = FeatureRow {
            event_ts_ms: 5,
            schema_version: 1,
            values: (0..70).map(|i| Some(i as f64 * 0.25 - 3.0)).collect(),
        };
        for format in [ROW_F32, ROW_F64] {
            let mut enc = Vec::new();
            full.encode_into_as(format, &mut enc);
            let mut words = vec![0u64; enc.len() / 8 + 2];
            let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
            for off in [0, 2, 1] {
                buf[off..off + enc.len()].copy_from_slice(&enc);
                let r = RowView::parse(&buf[off..off + enc.len()]).unwrap();
                for n in [0, 1, 8, 20, 64, 65, 70] {
                    let mut out = vec![9.0f32];
                    assert!(
                        r.extend_dense_f32(n, &mut out),
                        "format {format} off {off} n {n}"
                    );
                    let want: Vec<f32> = std::iter::once(9.0)
                        .chain((0..n).map(|i| r.get(i).unwrap() as f32))
                        .collect();
                    assert_eq!(out, want, "format {format} off {off} n {n}");
                }
                let mut out = Vec::new();
                assert!(!r.extend_dense_f32(71, &mut out) && out.is_empty());
            }
        }
        let mut holes = full.clone();
        holes.values[66] = None;
        let enc = holes.encode();
        let r = RowView::parse(&enc).unwrap();
        let mut out = Vec::new();
        assert!(r.extend_dense_f32(66, &mut out) && out.len() == 66);
        out.clear();
        assert!(!r.extend_dense_f32(67, &mut out) && out.is_empty());
        holes.values[3] = None;
        let enc = holes.encode();
        assert!(!RowView::parse(&enc).unwrap().extend_dense_f32(8, &mut out));
        assert!(RowView::parse(&enc).unwrap().extend_dense_f32(3, &mut out));
    }

    /// The same bytes at an 8-aligned offset and at a 2-aligned one (what LMDB may give)
    /// read the same: in place on the first, with unaligned loads on the second.
    #[test]
    fn aligned_and_unaligned_reads_agree() {
        let row = sample();
        let enc = row.encode();
        assert_eq!(enc.len(), encoded_len(70));
        // A u64 buffer is 8-aligned; copy the row in at byte offsets 0 and 2.
        let mut words = vec![0u64; enc.len() / 8 + 2];
        let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        buf[..enc.len()].copy_from_slice(&enc);
        let aligned = RowView::parse(&buf[..enc.len()]).unwrap();
        assert!(aligned.is_zero_copy());
        assert_eq!(aligned.to_row(), row);

        buf[2..2 + enc.len()].copy_from_slice(&enc);
        let unaligned = RowView::parse(&buf[2..2 + enc.len()]).unwrap();
        assert!(!unaligned.is_zero_copy());
        assert_eq!(unaligned.to_row(), row);
        assert_eq!(unaligned.get(0), None);
        assert_eq!(unaligned.get(1), Some(0.5));
        assert_eq!(unaligned.get(70), None);
    }

    /// Format 2 (f32 values) reads the same in place and misaligned, and a value is the
    /// f32 it was rounded to.
    #[test]
    fn f32_rows_read_aligned_and_unaligned() {
        let mut row = sample();
        row.values[1] = Some(0.1);
        let mut enc = Vec::new();
        row.encode_into_as(ROW_F32, &mut enc);
        assert_eq!(enc.len(), encoded_len_as(ROW_F32, 70));
        assert!(enc.len() < encoded_len(70));
        let mut words = vec![0u64; enc.len() / 8 + 2];
        let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        buf[..enc.len()].copy_from_slice(&enc);
        let aligned = RowView::parse(&buf[..enc.len()]).unwrap();
        assert!(aligned.is_zero_copy());
        assert_eq!(aligned.format(), ROW_F32);
        assert_eq!(aligned.get(1), Some(f64::from(0.1f32)));
        assert_eq!(aligned.get(2), Some(1.0));
        assert_eq!(aligned.get(3), None);
        let want = aligned.to_row();
        buf[2..2 + enc.len()].copy_from_slice(&enc);
        let unaligned = RowView::parse(&buf[2..2 + enc.len()]).unwrap();
        assert!(!unaligned.is_zero_copy());
        assert_eq!(unaligned.to_row(), want);
        // An f64-sized body under the f32 format tag is refused, not misread.
        let mut wrong = row.encode();
        wrong[14..16].copy_from_slice(&ROW_F32.to_le_bytes());
        assert!(RowView::parse(&wrong).is_err());
    }

    #[test]
    fn malformed_rows_are_errors() {
        let enc = sample().encode();
        assert!(RowView::parse(&enc[..10]).is_err());
        assert!(RowView::parse(&enc[..enc.len() - 1]).is_err());
        let mut bad = enc.clone();
        bad[14] = 9;
        assert!(RowView::parse(&bad).is_err());
    }
}
