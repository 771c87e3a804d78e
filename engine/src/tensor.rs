//! Plain typed tensors: the only data that crosses the engine boundary.
//!
//! Inputs are borrowed views over raw little-endian bytes (so the server can hand
//! the engine the very buffer the bytes arrived in); outputs are written into
//! caller-owned, reusable buffers so steady-state serving does not allocate.

use serde::{Deserialize, Serialize};

/// Element type of a tensor. The numeric codes are stable: the wire protocol uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
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

    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::U8 | DType::Bool => 1,
        }
    }

    pub fn from_code(code: u8) -> Option<DType> {
        DType::ALL.into_iter().find(|d| *d as u8 == code)
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

    /// KServe v2 / Triton datatype name.
    pub const fn kserve_name(self) -> &'static str {
        match self {
            DType::F32 => "FP32",
            DType::F64 => "FP64",
            DType::I64 => "INT64",
            DType::I32 => "INT32",
            DType::U8 => "UINT8",
            DType::Bool => "BOOL",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One dimension of a declared shape: fixed, or dynamic (batch, sequence, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(usize),
    /// Dynamic (batch, sequence, …): any size.
    Dynamic,
}

/// A declared model input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl TensorSpec {
    /// Whether a concrete shape fits this declaration.
    pub fn accepts_shape(&self, shape: &[usize]) -> bool {
        shape.len() == self.shape.len()
            && self.shape.iter().zip(shape).all(|(d, s)| match d {
                Dim::Fixed(n) => n == s,
                Dim::Dynamic => true,
            })
    }
}

/// What a model takes and gives, as the model declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// A borrowed input tensor: raw little-endian element bytes plus shape.
///
/// `data.len()` must equal `shape.product() * dtype.size()`; [`TensorView::new`]
/// checks that. Alignment is not required: engines view aligned data in place
/// (bytemuck) and copy only when the bytes are misaligned.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub dtype: DType,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

impl<'a> TensorView<'a> {
    pub fn new(
        dtype: DType,
        shape: &'a [usize],
        data: &'a [u8],
    ) -> Result<Self, crate::EngineError> {
        let elems = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        match elems.and_then(|e| e.checked_mul(dtype.size())) {
            Some(n) if n == data.len() => Ok(TensorView { dtype, shape, data }),
            _ => Err(crate::EngineError::new(
                crate::ErrorKind::BadInput,
                format!("tensor of shape {shape:?} and dtype {dtype} needs a different byte length than {}", data.len()),
            )),
        }
    }

    pub fn from_f32(shape: &'a [usize], data: &'a [f32]) -> Self {
        TensorView {
            dtype: DType::F32,
            shape,
            data: bytemuck::cast_slice(data),
        }
    }

    pub fn elems(&self) -> usize {
        self.shape.iter().product()
    }
}

/// One output tensor, in a buffer that keeps its capacity across runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputTensor {
    pub name: String,
    pub dtype: Option<DType>,
    pub shape: Vec<usize>,
    /// Little-endian element bytes.
    pub data: Vec<u8>,
}

impl OutputTensor {
    /// Set dtype and shape and resize `data` to fit, reusing capacity.
    pub fn reset(&mut self, dtype: DType, shape: &[usize]) -> &mut [u8] {
        self.dtype = Some(dtype);
        self.shape.clear();
        self.shape.extend_from_slice(shape);
        let n = shape.iter().product::<usize>() * dtype.size();
        self.data.clear();
        self.data.resize(n, 0);
        &mut self.data
    }

    /// Copy of the data as f32 (converting from any numeric dtype); for tests and tools.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        let d = &self.data;
        match self.dtype {
            Some(DType::F32) => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Some(DType::F64) => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Some(DType::I64) => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Some(DType::I32) => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Some(DType::U8) | Some(DType::Bool) => d.iter().map(|&b| b as f64).collect(),
            None => Vec::new(),
        }
    }
}

/// Reusable output set for one session: one [`OutputTensor`] per model output,
/// in the model's declared order.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    pub tensors: Vec<OutputTensor>,
}

impl Outputs {
    pub fn for_model(info: &ModelInfo) -> Self {
        Outputs {
            tensors: info
                .outputs
                .iter()
                .map(|s| OutputTensor {
                    name: s.name.clone(),
                    dtype: Some(s.dtype),
                    ..Default::default()
                })
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&OutputTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}
