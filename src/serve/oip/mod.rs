//! The Open Inference Protocol v2 (KServe / Triton) as plain data: decoded infer requests and
//! responses, datatypes, parameters and protocol errors, independent of the transport. The REST
//! codec (JSON and the binary tensor data extension) is in [`json`], the gRPC one in [`grpc`].
//!
//! Decoders are total: any byte string yields a request or an [`OipError`], never a panic (the
//! fuzz target in `fuzz/` holds them to that).

use std::collections::BTreeMap;
use std::fmt;

pub mod grpc;
pub mod json;

/// Tensor element types of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Datatype {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bf16,
    Bytes,
}

impl Datatype {
    pub const ALL: [Datatype; 14] = [
        Datatype::Bool,
        Datatype::Uint8,
        Datatype::Uint16,
        Datatype::Uint32,
        Datatype::Uint64,
        Datatype::Int8,
        Datatype::Int16,
        Datatype::Int32,
        Datatype::Int64,
        Datatype::Fp16,
        Datatype::Fp32,
        Datatype::Fp64,
        Datatype::Bf16,
        Datatype::Bytes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Datatype::Bool => "BOOL",
            Datatype::Uint8 => "UINT8",
            Datatype::Uint16 => "UINT16",
            Datatype::Uint32 => "UINT32",
            Datatype::Uint64 => "UINT64",
            Datatype::Int8 => "INT8",
            Datatype::Int16 => "INT16",
            Datatype::Int32 => "INT32",
            Datatype::Int64 => "INT64",
            Datatype::Fp16 => "FP16",
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
            Datatype::Bf16 => "BF16",
            Datatype::Bytes => "BYTES",
        }
    }

    pub fn parse(s: &str) -> Result<Self, OipError> {
        Datatype::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| OipError::bad_request(format!("unknown datatype '{s}'")))
    }

    /// Bytes per element in raw form (`None` for BYTES, whose elements carry their length).
    pub fn size(self) -> Option<usize> {
        Some(match self {
            Datatype::Bool | Datatype::Uint8 | Datatype::Int8 => 1,
            Datatype::Uint16 | Datatype::Int16 | Datatype::Fp16 | Datatype::Bf16 => 2,
            Datatype::Uint32 | Datatype::Int32 | Datatype::Fp32 => 4,
            Datatype::Uint64 | Datatype::Int64 | Datatype::Fp64 => 8,
            Datatype::Bytes => return None,
        })
    }
}

impl fmt::Display for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request or tensor parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(String),
}

impl Param {
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Param::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Param::Int(i) => Some(*i),
            Param::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e15 => Some(*d as i64),
            _ => None,
        }
    }
}

pub type Params = BTreeMap<String, Param>;

/// An input tensor's data, as far as the server needs to read it: FP32 values are decoded, other
/// datatypes are only checked for size (the models take FP32 images and reject anything else).
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Fp32(Vec<f32>),
    /// Present and well-formed, of a datatype the server does not compute on.
    Other,
}

/// One decoded input tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct InferInput {
    pub name: String,
    pub datatype: Datatype,
    pub shape: Vec<i64>,
    pub parameters: Params,
    pub data: TensorData,
}

/// One requested output.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedOutput {
    pub name: String,
    pub parameters: Params,
}

/// A decoded infer request (transport-independent).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InferRequest {
    pub id: Option<String>,
    pub parameters: Params,
    pub inputs: Vec<InferInput>,
    pub outputs: Vec<RequestedOutput>,
}

impl InferRequest {
    /// Client deadline from the `timeout` parameter (microseconds, Triton's convention).
    pub fn timeout_us(&self) -> Result<Option<u64>, OipError> {
        match self.parameters.get("timeout") {
            None => Ok(None),
            Some(p) => match p.as_int() {
                Some(t) if t > 0 => Ok(Some(t as u64)),
                _ => Err(OipError::bad_request(
                    "parameter 'timeout' must be a positive integer (microseconds)",
                )),
            },
        }
    }
}

/// An output tensor of a response (always FP32 class scores here).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: Vec<f32>,
}

/// A response to an infer request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: Option<String>,
    pub parameters: Params,
    pub outputs: Vec<OutputTensor>,
}

/// Protocol-level failure classes, mapped to HTTP status codes and gRPC codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed request, wrong datatype or shape: 400 / INVALID_ARGUMENT.
    BadRequest,
    /// Unknown model or version: 404 / NOT_FOUND.
    NotFound,
    /// Body over the configured limit: 413 / RESOURCE_EXHAUSTED.
    TooLarge,
    /// Queue full: 429 with Retry-After / RESOURCE_EXHAUSTED.
    QueueFull,
    /// The request's deadline cannot be met: 503 / DEADLINE_EXCEEDED.
    DeadlineExceeded,
    /// Refused on arrival, predicted to be answered after its deadline (the service is at
    /// capacity): 503 with Retry-After / UNAVAILABLE with a retry pushback.
    Overloaded,
    /// The server is draining or the model is not ready: 503 / UNAVAILABLE.
    Unavailable,
    /// Something broke inside the server: 500 / INTERNAL.
    Internal,
}

/// A protocol error with its reason (the `{"error": "..."}` body).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct OipError {
    pub kind: ErrorKind,
    pub message: String,
    /// For [`ErrorKind::QueueFull`] and [`ErrorKind::Overloaded`]: seconds after which a retry
    /// is likely to be accepted.
    pub retry_after_s: Option<u64>,
}

impl OipError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after_s: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// HTTP status code of this error.
    pub fn http_status(&self) -> u16 {
        match self.kind {
            ErrorKind::BadRequest => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::TooLarge => 413,
            ErrorKind::QueueFull => 429,
            ErrorKind::DeadlineExceeded | ErrorKind::Overloaded | ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }
}

/// Element count of a shape: every dimension ≥ 0 and the product representable.
pub fn element_count(shape: &[i64]) -> Result<usize, OipError> {
    if shape.len() > 16 {
        return Err(OipError::bad_request(format!(
            "shape {shape:?} has more than 16 dimensions"
        )));
    }
    shape.iter().try_fold(1usize, |acc, &d| {
        let d = usize::try_from(d).map_err(|_| {
            OipError::bad_request(format!("shape {shape:?} has a negative dimension"))
        })?;
        acc.checked_mul(d)
            .ok_or_else(|| OipError::bad_request(format!("shape {shape:?} is too large")))
    })
}

/// Decodes raw little-endian bytes of an input (binary extension, gRPC raw contents).
pub fn decode_raw(
    name: &str,
    datatype: Datatype,
    shape: &[i64],
    bytes: &[u8],
) -> Result<TensorData, OipError> {
    let n = element_count(shape)?;
    match datatype.size() {
        Some(size) => {
            let want = n.saturating_mul(size);
            if bytes.len() != want {
                return Err(OipError::bad_request(format!(
                    "input '{name}': {} bytes of {datatype} data for shape {shape:?}, expected {want}",
                    bytes.len()
                )));
            }
        }
        None => check_bytes_elements(name, shape, bytes, n)?,
    }
    Ok(match datatype {
        Datatype::Fp32 => TensorData::Fp32(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap_or_default()))
                .collect(),
        ),
        _ => TensorData::Other,
    })
}

/// Raw BYTES tensors are a sequence of 4-byte little-endian lengths, each followed by that many
/// bytes: there must be exactly `n` of them.
fn check_bytes_elements(name: &str, shape: &[i64], bytes: &[u8], n: usize) -> Result<(), OipError> {
    let (mut at, mut count) = (0usize, 0usize);
    while at < bytes.len() {
        let len_bytes = bytes.get(at..at + 4).ok_or_else(|| {
            OipError::bad_request(format!("input '{name}': truncated BYTES element"))
        })?;
        let len =
            u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
        at = at
            .checked_add(4 + len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                OipError::bad_request(format!("input '{name}': truncated BYTES element"))
            })?;
        count += 1;
    }
    if count != n {
        return Err(OipError::bad_request(format!(
            "input '{name}': {count} BYTES elements for shape {shape:?}, expected {n}"
        )));
    }
    Ok(())
}

/// Runs every request decoder on arbitrary bytes: [`fuzz_rest_json`], [`fuzz_rest_binary`] and
/// [`fuzz_grpc`]. The fuzz targets (`fuzz/`) and their CI stand-in (`tests/serve_fuzz.rs`) call
/// these; they must return for any input, never panic.
pub fn fuzz_decoders(data: &[u8]) {
    fuzz_rest_json(data);
    fuzz_rest_binary(data);
    fuzz_grpc(data);
}

/// The REST JSON decoder on arbitrary bytes.
pub fn fuzz_rest_json(data: &[u8]) {
    let _ = json::decode_request(data, None);
}

/// The binary tensor data extension on arbitrary bytes: the first two bytes give the JSON
/// header's length (`Inference-Header-Content-Length`), the rest is the body.
pub fn fuzz_rest_binary(data: &[u8]) {
    if let [a, b, body @ ..] = data {
        let header_len = usize::from(u16::from_le_bytes([*a, *b]));
        let _ = json::decode_request(body, Some(header_len));
    }
}

/// The gRPC decoder on arbitrary bytes: protobuf `ModelInferRequest`, then the conversion.
pub fn fuzz_grpc(data: &[u8]) {
    if let Ok(req) = <grpc::pb::ModelInferRequest as prost::Message>::decode(data) {
        let _ = grpc::decode_request(req);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatypes_round_trip_and_unknown_ones_are_refused() {
        for d in Datatype::ALL {
            assert_eq!(Datatype::parse(d.as_str()), Ok(d));
        }
        assert_eq!(
            Datatype::parse("FLOAT").unwrap_err().kind,
            ErrorKind::BadRequest
        );
        assert_eq!(Datatype::Fp32.size(), Some(4));
        assert_eq!(Datatype::Bytes.size(), None);
    }

    #[test]
    fn shapes_and_raw_decoding() {
        assert_eq!(element_count(&[2, 3, 4]), Ok(24));
        assert_eq!(element_count(&[]), Ok(1));
        assert!(element_count(&[2, -1]).is_err());
        assert!(element_count(&[i64::MAX, i64::MAX]).is_err());
        let bytes: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            decode_raw("x", Datatype::Fp32, &[1, 2], &bytes),
            Ok(TensorData::Fp32(vec![1.5, -2.0]))
        );
        assert!(decode_raw("x", Datatype::Fp32, &[1, 3], &bytes).is_err());
        assert_eq!(
            decode_raw("x", Datatype::Int16, &[4], &bytes),
            Ok(TensorData::Other)
        );
        // Two BYTES elements: "ab" and "".
        let b = [2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0];
        assert_eq!(
            decode_raw("s", Datatype::Bytes, &[2], &b),
            Ok(TensorData::Other)
        );
        assert!(decode_raw("s", Datatype::Bytes, &[3], &b).is_err());
        assert!(decode_raw("s", Datatype::Bytes, &[1], &b[..5]).is_err());
    }

    #[test]
    fn timeout_parameter() {
        let mut r = InferRequest::default();
        assert_eq!(r.timeout_us(), Ok(None));
        r.parameters.insert("timeout".into(), Param::Int(2500));
        assert_eq!(r.timeout_us(), Ok(Some(2500)));
        r.parameters
            .insert("timeout".into(), Param::Str("soon".into()));
        assert!(r.timeout_us().is_err());
    }
}
