//! Tensor element types and tensors as the codec sees them: borrowed views and owned copies.

use crate::{ProtoError, TensorProblem};

/// Element type codes on the wire (the same codes as the engine's `DType`; this crate does
/// not depend on the engine). All multi-byte values are little-endian; BOOL is one byte, 0/1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DType {
    F32 = 1,
    F64 = 2,
    I64 = 3,
    I32 = 4,
    U8 = 5,
    Bool = 6,
}

impl DType {
    pub const ALL: [DType; 6] = [
        DType::F32,
        DType::F64,
        DType::I64,
        DType::I32,
        DType::U8,
        DType::Bool,
    ];

    pub const fn from_code(code: u32) -> Option<DType> {
        Some(match code {
            1 => DType::F32,
            2 => DType::F64,
            3 => DType::I64,
            4 => DType::I32,
            5 => DType::U8,
            6 => DType::Bool,
            _ => return None,
        })
    }

    pub const fn code(self) -> u32 {
        self as u32
    }

    /// Bytes per element.
    pub const fn size(self) -> u64 {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::U8 | DType::Bool => 1,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::U8 => "u8",
            DType::Bool => "bool",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<DType, String> {
        DType::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown dtype {s:?} (expected f32, f64, i64, i32, u8, bool)"))
    }
}

/// Element count of `shape`, or `None` on overflow.
pub fn element_count(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

/// Byte length of a tensor of `dtype` and `shape`, or `None` on overflow.
pub fn byte_len(dtype: DType, shape: &[u64]) -> Option<u64> {
    element_count(shape)?.checked_mul(dtype.size())
}

/// A tensor whose bytes live elsewhere: in a received frame, or in the caller's memory when
/// encoding. `data` is little-endian, `byte_len(dtype, shape)` long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [u64],
    pub data: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// A view after checking that `data` has the length dtype and shape call for.
    pub fn new(
        name: &'a str,
        dtype: DType,
        shape: &'a [u64],
        data: &'a [u8],
    ) -> Result<TensorView<'a>, ProtoError> {
        let view = TensorView {
            name,
            dtype,
            shape,
            data,
        };
        view.check_len()?;
        Ok(view)
    }

    pub(crate) fn check_len(&self) -> Result<u64, ProtoError> {
        let problem = match byte_len(self.dtype, self.shape) {
            None => TensorProblem::SizeOverflow,
            Some(n) if n == self.data.len() as u64 => return Ok(n),
            Some(n) => TensorProblem::LengthMismatch {
                expected: n,
                declared: self.data.len() as u64,
            },
        };
        Err(ProtoError::Tensor {
            index: 0,
            name: self.name.to_owned(),
            problem,
        })
    }

    pub fn element_count(&self) -> u64 {
        element_count(self.shape).unwrap_or(0)
    }

    pub fn to_tensor(&self) -> Tensor {
        Tensor {
            name: self.name.to_owned(),
            dtype: self.dtype,
            shape: self.shape.to_vec(),
            data: self.data.to_vec(),
        }
    }
}

/// An owned tensor: what a client sends from and receives into.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    /// Little-endian element bytes.
    pub data: Vec<u8>,
}

macro_rules! typed {
    ($from:ident, $to:ident, $t:ty, $dt:expr, $n:expr) => {
        #[doc = concat!("A `", stringify!($t), "` tensor; fails if `values` does not fill `shape`.")]
        pub fn $from(
            name: impl Into<String>,
            shape: Vec<u64>,
            values: &[$t],
        ) -> Result<Tensor, ProtoError> {
            let mut data = Vec::with_capacity(values.len() * $n);
            for v in values {
                data.extend_from_slice(&v.to_le_bytes());
            }
            Tensor::new(name, $dt, shape, data)
        }

        #[doc = concat!("The values, if this is a `", stringify!($t), "` tensor.")]
        pub fn $to(&self) -> Option<Vec<$t>> {
            if self.dtype != $dt {
                return None;
            }
            Some(
                self.data
                    .chunks_exact($n)
                    .map(|c| {
                        let mut b = [0u8; $n];
                        b.copy_from_slice(c);
                        <$t>::from_le_bytes(b)
                    })
                    .collect(),
            )
        }
    };
}

impl Tensor {
    /// Checks that `data` has the length `dtype` and `shape` call for.
    pub fn new(
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<u64>,
        data: Vec<u8>,
    ) -> Result<Tensor, ProtoError> {
        let t = Tensor {
            name: name.into(),
            dtype,
            shape,
            data,
        };
        t.view().check_len()?;
        Ok(t)
    }

    pub fn view(&self) -> TensorView<'_> {
        TensorView {
            name: &self.name,
            dtype: self.dtype,
            shape: &self.shape,
            data: &self.data,
        }
    }

    typed!(from_f32, to_f32, f32, DType::F32, 4);
    typed!(from_f64, to_f64, f64, DType::F64, 8);
    typed!(from_i64, to_i64, i64, DType::I64, 8);
    typed!(from_i32, to_i32, i32, DType::I32, 4);
    typed!(from_u8, to_u8, u8, DType::U8, 1);

    pub fn from_bool(
        name: impl Into<String>,
        shape: Vec<u64>,
        values: &[bool],
    ) -> Result<Tensor, ProtoError> {
        Tensor::new(
            name,
            DType::Bool,
            shape,
            values.iter().map(|&b| u8::from(b)).collect(),
        )
    }

    pub fn to_bool(&self) -> Option<Vec<bool>> {
        (self.dtype == DType::Bool).then(|| self.data.iter().map(|&b| b != 0).collect())
    }

    /// Every element widened to f64 whatever the dtype (i64 beyond 2^53 loses precision):
    /// for printing and JSON.
    pub fn values_f64(&self) -> Vec<f64> {
        match self.dtype {
            DType::F32 => self
                .to_f32()
                .unwrap_or_default()
                .into_iter()
                .map(f64::from)
                .collect(),
            DType::F64 => self.to_f64().unwrap_or_default(),
            DType::I64 => self
                .to_i64()
                .unwrap_or_default()
                .into_iter()
                .map(|v| v as f64)
                .collect(),
            DType::I32 => self
                .to_i32()
                .unwrap_or_default()
                .into_iter()
                .map(f64::from)
                .collect(),
            DType::U8 | DType::Bool => self.data.iter().map(|&v| f64::from(v)).collect(),
        }
    }

    /// Values given as f64 (e.g. parsed from a command line) converted to `dtype`.
    /// Integers must be integral and in range, bools 0 or 1.
    pub fn from_f64_as(
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<u64>,
        values: &[f64],
    ) -> Result<Tensor, ProtoError> {
        fn ints<T: TryFrom<i128>>(values: &[f64], dtype: DType) -> Result<Vec<T>, ProtoError> {
            values
                .iter()
                .enumerate()
                .map(|(index, &v)| {
                    let fits = v.is_finite() && v.fract() == 0.0;
                    fits.then(|| T::try_from(v as i128).ok())
                        .flatten()
                        .ok_or(ProtoError::Value {
                            index,
                            value: v.to_string(),
                            dtype,
                        })
                })
                .collect()
        }
        match dtype {
            DType::F32 => {
                let v: Vec<f32> = values.iter().map(|&v| v as f32).collect();
                Tensor::from_f32(name, shape, &v)
            }
            DType::F64 => Tensor::from_f64(name, shape, values),
            DType::I64 => Tensor::from_i64(name, shape, &ints(values, dtype)?),
            DType::I32 => Tensor::from_i32(name, shape, &ints(values, dtype)?),
            DType::U8 => Tensor::from_u8(name, shape, &ints(values, dtype)?),
            DType::Bool => {
                let bytes: Vec<u8> = ints(values, dtype)?;
                if let Some(index) = bytes.iter().position(|&b| b > 1) {
                    return Err(ProtoError::Value {
                        index,
                        value: values[index].to_string(),
                        dtype,
                    });
                }
                Tensor::new(name, DType::Bool, shape, bytes)
            }
        }
    }
}
