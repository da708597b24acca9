//! ONNX tensors as values the importer computes with: FP32 constants (initializers, `Constant`
//! nodes) and integer vectors whose entries may be the symbolic batch size (what `Shape` yields
//! and `Reshape` consumes).

use std::collections::HashMap;

use super::OnnxError;
use super::proto::{TensorProto, tensor_proto};

/// One entry of an integer tensor: a known value, or the batch size, which is unknown until a
/// request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int {
    Known(i64),
    Batch,
}

/// A constant tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Const {
    pub dims: Vec<usize>,
    pub data: ConstData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConstData {
    F32(Vec<f32>),
    Int(Vec<Int>),
}

impl Const {
    pub fn f32(dims: Vec<usize>, v: Vec<f32>) -> Self {
        Self {
            dims,
            data: ConstData::F32(v),
        }
    }
    pub fn ints(dims: Vec<usize>, v: Vec<Int>) -> Self {
        Self {
            dims,
            data: ConstData::Int(v),
        }
    }
    pub fn len(&self) -> usize {
        match &self.data {
            ConstData::F32(v) => v.len(),
            ConstData::Int(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Values as FP32 (integers converted); `None` when an entry is the symbolic batch size.
    pub fn as_f32(&self) -> Option<Vec<f32>> {
        match &self.data {
            ConstData::F32(v) => Some(v.clone()),
            ConstData::Int(v) => v
                .iter()
                .map(|i| match i {
                    Int::Known(k) => Some(*k as f32),
                    Int::Batch => None,
                })
                .collect(),
        }
    }
    /// Values as integers (FP32 values must be whole numbers).
    pub fn as_ints(&self) -> Option<Vec<Int>> {
        match &self.data {
            ConstData::Int(v) => Some(v.clone()),
            ConstData::F32(v) => v
                .iter()
                .map(|&x| (x.fract() == 0.0 && x.is_finite()).then_some(Int::Known(x as i64)))
                .collect(),
        }
    }
    /// Known integer values (no symbolic entry).
    pub fn as_known(&self) -> Option<Vec<i64>> {
        self.as_ints()?
            .into_iter()
            .map(|i| match i {
                Int::Known(k) => Some(k),
                Int::Batch => None,
            })
            .collect()
    }
    /// The single value of a scalar or one-element tensor, as FP32.
    pub fn scalar_f32(&self) -> Option<f32> {
        let v = self.as_f32()?;
        (v.len() == 1).then(|| v[0])
    }
}

/// Reads external data files by the `location` a tensor names (relative to the model file).
pub type ExternalReader<'a> = dyn FnMut(&str) -> Result<Vec<u8>, String> + 'a;

/// Decodes initializers and `Constant` values, reading external data through a reader and
/// keeping each external file once.
pub struct TensorDecoder<'a> {
    reader: &'a mut ExternalReader<'a>,
    files: HashMap<String, Vec<u8>>,
}

impl<'a> TensorDecoder<'a> {
    pub fn new(reader: &'a mut ExternalReader<'a>) -> Self {
        Self {
            reader,
            files: HashMap::new(),
        }
    }

    /// Decodes `t`; `what` names it in errors (e.g. "initializer conv1.weight").
    pub fn decode(&mut self, t: &TensorProto, what: &str) -> Result<Const, OnnxError> {
        let bad = |reason: String| OnnxError::Tensor {
            tensor: what.to_string(),
            reason,
        };
        let dims = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}"))))
            .collect::<Result<Vec<usize>, _>>()?;
        let count = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad("its dimensions overflow".into()))?;
        if t.segment.is_some() {
            return Err(bad("segmented tensors are not supported".into()));
        }
        let external = t.data_location == Some(tensor_proto::DataLocation::External as i32);
        let raw: Option<Vec<u8>> = if external {
            Some(self.external(t, what)?)
        } else {
            t.raw_data.clone()
        };
        let dt = t.data_type.unwrap_or(0);
        use tensor_proto::DataType as D;
        let width = match D::try_from(dt) {
            Ok(D::Float | D::Int32 | D::Uint32) => 4,
            Ok(D::Double | D::Int64 | D::Uint64) => 8,
            Ok(D::Float16 | D::Bfloat16 | D::Int16 | D::Uint16) => 2,
            Ok(D::Int8 | D::Uint8 | D::Bool) => 1,
            _ => {
                return Err(bad(format!(
                    "data type {} is not supported (FP32, FP64, FP16, BF16 and integers are)",
                    data_type_name(dt)
                )));
            }
        };
        let data = match raw {
            Some(raw) => {
                if raw.len() != count * width {
                    return Err(bad(format!(
                        "holds {} bytes of data, its dimensions {dims:?} need {}",
                        raw.len(),
                        count * width
                    )));
                }
                from_raw(dt, &raw)
            }
            None => from_typed(dt, t),
        };
        if data.len_values() != count {
            return Err(bad(format!(
                "holds {} values, its dimensions {dims:?} need {count}",
                data.len_values()
            )));
        }
        Ok(Const { dims, data })
    }

    fn external(&mut self, t: &TensorProto, what: &str) -> Result<Vec<u8>, OnnxError> {
        let entry = |key: &str| {
            t.external_data
                .iter()
                .find(|e| e.key.as_deref() == Some(key))
                .and_then(|e| e.value.clone())
        };
        let location = entry("location").ok_or_else(|| OnnxError::Tensor {
            tensor: what.to_string(),
            reason: "external data names no location".into(),
        })?;
        let num = |key: &str| -> Result<Option<usize>, OnnxError> {
            entry(key)
                .map(|v| {
                    v.parse::<usize>().map_err(|_| OnnxError::Tensor {
                        tensor: what.to_string(),
                        reason: format!("external data {key} `{v}` is not a byte count"),
                    })
                })
                .transpose()
        };
        let (offset, length) = (num("offset")?.unwrap_or(0), num("length")?);
        if !self.files.contains_key(&location) {
            let bytes = (self.reader)(&location).map_err(|reason| OnnxError::ExternalData {
                file: location.clone(),
                tensor: what.to_string(),
                reason,
            })?;
            self.files.insert(location.clone(), bytes);
        }
        let file = &self.files[&location];
        let end = match length {
            Some(l) => offset.checked_add(l),
            None => Some(file.len()),
        };
        match end {
            Some(end) if end <= file.len() && offset <= end => Ok(file[offset..end].to_vec()),
            _ => Err(OnnxError::ExternalData {
                file: location,
                tensor: what.to_string(),
                reason: format!(
                    "the file has {} bytes, the tensor lies at {offset}..{}",
                    file.len(),
                    end.map_or("overflow".to_string(), |e| e.to_string())
                ),
            }),
        }
    }
}

impl ConstData {
    fn len_values(&self) -> usize {
        match self {
            ConstData::F32(v) => v.len(),
            ConstData::Int(v) => v.len(),
        }
    }
}

fn is_float(dt: i32) -> bool {
    use tensor_proto::DataType as D;
    matches!(
        D::try_from(dt),
        Ok(D::Float | D::Double | D::Float16 | D::Bfloat16)
    )
}

fn from_raw(dt: i32, raw: &[u8]) -> ConstData {
    use tensor_proto::DataType as D;
    let f = |v: Vec<f32>| ConstData::F32(v);
    let i = |v: Vec<i64>| ConstData::Int(v.into_iter().map(Int::Known).collect());
    let arr = |c: &[u8], n: usize| -> [u8; 8] {
        let mut a = [0u8; 8];
        a[..n].copy_from_slice(c);
        a
    };
    match D::try_from(dt) {
        Ok(D::Float) => f(raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()),
        Ok(D::Double) => f(raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(arr(c, 8)) as f32)
            .collect()),
        Ok(D::Float16) => f(raw
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()),
        Ok(D::Bfloat16) => f(raw
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()),
        Ok(D::Int64) => i(raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(arr(c, 8)))
            .collect()),
        Ok(D::Uint64) => i(raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(arr(c, 8)) as i64)
            .collect()),
        Ok(D::Int32) => i(raw
            .chunks_exact(4)
            .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect()),
        Ok(D::Uint32) => i(raw
            .chunks_exact(4)
            .map(|c| i64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect()),
        Ok(D::Int16) => i(raw
            .chunks_exact(2)
            .map(|c| i64::from(i16::from_le_bytes([c[0], c[1]])))
            .collect()),
        Ok(D::Uint16) => i(raw
            .chunks_exact(2)
            .map(|c| i64::from(u16::from_le_bytes([c[0], c[1]])))
            .collect()),
        Ok(D::Int8) => i(raw.iter().map(|&b| i64::from(b as i8)).collect()),
        _ => i(raw.iter().map(|&b| i64::from(b)).collect()),
    }
}

/// The typed fields: FP16/BF16 and the small integer types are stored in `int32_data`.
fn from_typed(dt: i32, t: &TensorProto) -> ConstData {
    use tensor_proto::DataType as D;
    let ints = |v: Vec<i64>| ConstData::Int(v.into_iter().map(Int::Known).collect());
    match D::try_from(dt) {
        Ok(D::Float) => ConstData::F32(t.float_data.clone()),
        Ok(D::Double) => ConstData::F32(t.double_data.iter().map(|&x| x as f32).collect()),
        Ok(D::Float16) => ConstData::F32(
            t.int32_data
                .iter()
                .map(|&b| half::f16::from_bits(b as u16).to_f32())
                .collect(),
        ),
        Ok(D::Bfloat16) => ConstData::F32(
            t.int32_data
                .iter()
                .map(|&b| half::bf16::from_bits(b as u16).to_f32())
                .collect(),
        ),
        Ok(D::Int64) => ints(t.int64_data.clone()),
        Ok(D::Uint64 | D::Uint32) => ints(t.uint64_data.iter().map(|&x| x as i64).collect()),
        _ if !is_float(dt) => ints(t.int32_data.iter().map(|&x| i64::from(x)).collect()),
        _ => ConstData::F32(Vec::new()),
    }
}

/// ONNX's name of a `TensorProto.DataType` value.
pub fn data_type_name(dt: i32) -> String {
    tensor_proto::DataType::try_from(dt)
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| format!("#{dt}"))
}
