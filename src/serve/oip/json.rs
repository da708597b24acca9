//! REST codec of the Open Inference Protocol: infer requests in JSON, with tensor data as nested
//! or flat arrays or in the binary tensor data extension (a JSON header of
//! `Inference-Header-Content-Length` bytes followed by the raw tensors of the inputs that carry a
//! `binary_data_size` parameter), and responses in the same two forms.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    Datatype, InferInput, InferRequest, InferResponse, OipError, Param, Params, RequestedOutput,
    TensorData, decode_raw, element_count,
};

/// Header naming the length of the JSON part of a binary-extension body.
pub const HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct JsonRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    inputs: Vec<JsonInput>,
    #[serde(default)]
    outputs: Option<Vec<JsonOutput>>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct JsonInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    data: Option<JsonData>,
}

/// The `data` of a JSON input, read in the same pass as the rest of the request (the datatype
/// may come after it, so numbers are kept as FP32 candidates and every scalar is counted; a
/// second pass over the text cost a third of the decoding time of a 192-value tensor).
#[derive(Default)]
#[cfg_attr(test, derive(Debug))]
struct JsonData {
    numbers: Vec<f32>,
    scalars: usize,
    /// The first scalar that is not a number, for FP32's error.
    non_number: Option<&'static str>,
}

impl<'de> Deserialize<'de> for JsonData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut data = JsonData::default();
        Flatten { out: &mut data }.deserialize(d)?;
        Ok(data)
    }
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct JsonOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

fn params(map: Option<Map<String, Value>>, what: &str) -> Result<Params, OipError> {
    let mut out = Params::new();
    for (k, v) in map.unwrap_or_default() {
        let p = match v {
            Value::Bool(b) => Param::Bool(b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Param::Int(i),
                None => Param::Double(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Param::Str(s),
            _ => {
                return Err(OipError::bad_request(format!(
                    "{what} parameter '{k}' must be a boolean, number or string"
                )));
            }
        };
        out.insert(k, p);
    }
    Ok(out)
}

/// Decodes a REST infer request body. `header_len` is the `Inference-Header-Content-Length`
/// header, present when the body uses the binary tensor data extension.
pub fn decode_request(body: &[u8], header_len: Option<usize>) -> Result<InferRequest, OipError> {
    decode(body, header_len, true)
}

/// [`decode_request`] with serde_json alone: the baseline the codec bench runs the fast path
/// against.
#[doc(hidden)]
pub fn decode_request_serde_only(
    body: &[u8],
    header_len: Option<usize>,
) -> Result<InferRequest, OipError> {
    decode(body, header_len, false)
}

fn decode(body: &[u8], header_len: Option<usize>, fast: bool) -> Result<InferRequest, OipError> {
    let (json, mut binary) = match header_len {
        Some(n) if n > body.len() => {
            return Err(OipError::bad_request(format!(
                "Inference-Header-Content-Length is {n} but the body has {} bytes",
                body.len()
            )));
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let req: JsonRequest = match fast.then(|| fast::parse(json)).flatten() {
        Some(r) => r,
        None => serde_json::from_slice(json)
            .map_err(|e| OipError::bad_request(format!("malformed infer request JSON: {e}")))?,
    };
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for i in req.inputs {
        let datatype = Datatype::parse(&i.datatype)
            .map_err(|e| OipError::bad_request(format!("input '{}': {e}", i.name)))?;
        let parameters = params(i.parameters, "input")?;
        let binary_size = match parameters.get("binary_data_size") {
            None => None,
            Some(p) => Some(
                p.as_int()
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or_else(|| {
                        OipError::bad_request(format!(
                            "input '{}': binary_data_size must be a non-negative integer",
                            i.name
                        ))
                    })?,
            ),
        };
        let data = match (binary_size, i.data) {
            (Some(_), Some(_)) => {
                return Err(OipError::bad_request(format!(
                    "input '{}' has both JSON data and binary_data_size",
                    i.name
                )));
            }
            (Some(size), None) => {
                if size > binary.len() {
                    return Err(OipError::bad_request(format!(
                        "input '{}': binary_data_size {size} exceeds the {} binary bytes left",
                        i.name,
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                decode_raw(&i.name, datatype, &i.shape, mine)?
            }
            (None, Some(data)) => decode_json_data(&i.name, datatype, &i.shape, data)?,
            (None, None) => {
                return Err(OipError::bad_request(format!(
                    "input '{}' has no data",
                    i.name
                )));
            }
        };
        inputs.push(InferInput {
            name: i.name,
            datatype,
            shape: i.shape,
            parameters,
            data,
        });
    }
    if !binary.is_empty() {
        return Err(OipError::bad_request(format!(
            "{} bytes of binary data are not claimed by any input's binary_data_size",
            binary.len()
        )));
    }
    let outputs = req
        .outputs
        .unwrap_or_default()
        .into_iter()
        .map(|o| {
            Ok(RequestedOutput {
                parameters: params(o.parameters, "output")?,
                name: o.name,
            })
        })
        .collect::<Result<Vec<_>, OipError>>()?;
    Ok(InferRequest {
        id: req.id,
        parameters: params(req.parameters, "request")?,
        inputs,
        outputs,
    })
}

/// JSON tensor data: FP32 is kept (nested or flat), other datatypes are counted.
fn decode_json_data(
    name: &str,
    datatype: Datatype,
    shape: &[i64],
    data: JsonData,
) -> Result<TensorData, OipError> {
    let n = element_count(shape)?;
    if data.scalars != n {
        return Err(OipError::bad_request(format!(
            "input '{name}': {} values for shape {shape:?}, expected {n}",
            data.scalars
        )));
    }
    if datatype != Datatype::Fp32 {
        return Ok(TensorData::Other);
    }
    if let Some(found) = data.non_number {
        return Err(OipError::bad_request(format!(
            "input '{name}': data: FP32 needs numbers, found {found}"
        )));
    }
    Ok(TensorData::Fp32(data.numbers))
}

/// Collects the scalars of a nested JSON array (or a single scalar) into a [`JsonData`].
struct Flatten<'a> {
    out: &'a mut JsonData,
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Flatten<'_> {
    fn number(self, v: f32) {
        self.out.numbers.push(v);
        self.out.scalars += 1;
    }
    fn other(self, what: &'static str) {
        self.out.scalars += 1;
        self.out.non_number.get_or_insert(what);
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar or a (nested) array of scalars")
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.number(v as f32);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.number(v as f32);
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.number(v as f32);
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.other("a boolean");
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.other("a string");
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some(n) = seq.size_hint() {
            self.out.numbers.reserve(n);
        }
        while seq.next_element_seed(Flatten { out: self.out })?.is_some() {}
        Ok(())
    }
}

fn param_json(p: &Param) -> Value {
    match p {
        Param::Bool(b) => Value::Bool(*b),
        Param::Int(i) => Value::from(*i),
        Param::Double(d) => Value::from(*d),
        Param::Str(s) => Value::String(s.clone()),
    }
}

#[derive(Serialize)]
struct JsonResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    parameters: Map<String, Value>,
    outputs: Vec<JsonOutputTensor<'a>>,
}

#[derive(Serialize)]
struct JsonOutputTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Map::is_empty")]
    parameters: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a [f32]>,
}

/// Whether output `name` goes in binary form: its own `binary_data` parameter, else the
/// request's `binary_data_output`.
pub fn wants_binary(req: &InferRequest, name: &str) -> bool {
    let own = req
        .outputs
        .iter()
        .find(|o| o.name == name)
        .and_then(|o| o.parameters.get("binary_data"))
        .and_then(Param::as_bool);
    own.or_else(|| {
        req.parameters
            .get("binary_data_output")
            .and_then(Param::as_bool)
    })
    .unwrap_or(false)
}

/// Encodes a response. Outputs for which `binary(name)` holds are appended as raw little-endian
/// bytes after the JSON, which then carries `binary_data_size`; the returned length is the
/// JSON part's (the `Inference-Header-Content-Length` header), `None` when nothing is binary.
pub fn encode_response(
    resp: &InferResponse,
    binary: &dyn Fn(&str) -> bool,
) -> (Vec<u8>, Option<usize>) {
    let mut raw = Vec::new();
    let outputs = resp
        .outputs
        .iter()
        .map(|o| {
            let mut parameters = Map::new();
            let data = if binary(&o.name) {
                parameters.insert("binary_data_size".into(), Value::from(o.data.len() * 4));
                raw.extend(o.data.iter().flat_map(|v| v.to_le_bytes()));
                None
            } else {
                Some(o.data.as_slice())
            };
            JsonOutputTensor {
                name: &o.name,
                datatype: Datatype::Fp32.as_str(),
                shape: &o.shape,
                parameters,
                data,
            }
        })
        .collect();
    let body = JsonResponse {
        model_name: &resp.model_name,
        model_version: &resp.model_version,
        id: resp.id.as_deref(),
        parameters: resp
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), param_json(v)))
            .collect(),
        outputs,
    };
    // Serialising plain strings, numbers and maps cannot fail.
    let mut out = serde_json::to_vec(&body).unwrap_or_default();
    if raw.is_empty() {
        (out, None)
    } else {
        let n = out.len();
        out.extend(raw);
        (out, Some(n))
    }
}

/// `{"error": "..."}`.
pub fn error_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default()
}

#[path = "json_fast.rs"]
mod fast;

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
