//! The gRPC front end: `inference.GRPCInferenceService` over the same request path as REST.
//! Protocol errors map to INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED,
//! UNAVAILABLE and INTERNAL. [`EarlyRefusal`] in front of the service refuses an overloaded
//! `ModelInfer` from the start of its message, before the rest of it is received.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, stream};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::Frame;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use super::model::{MODEL_VERSION, PLATFORM};
use super::oip::grpc::{decode_request, encode_response, pb};
use super::oip::{ErrorKind, OipError};
use super::queue::DoorPass;
use super::state::AppState;

pub use pb::grpc_inference_service_server::GrpcInferenceServiceServer;

/// The service implementation.
#[derive(Clone)]
pub struct Service {
    pub state: Arc<AppState>,
}

/// The gRPC status of a protocol error; a retry hint travels as `grpc-retry-pushback-ms`, the
/// metadata gRPC's retry policies read.
pub fn status_of(e: &OipError) -> Status {
    let m = e.message.clone();
    let mut status = match e.kind {
        ErrorKind::BadRequest => Status::invalid_argument(m),
        ErrorKind::NotFound => Status::not_found(m),
        ErrorKind::TooLarge | ErrorKind::QueueFull => Status::resource_exhausted(m),
        ErrorKind::DeadlineExceeded => Status::deadline_exceeded(m),
        ErrorKind::Overloaded | ErrorKind::Unavailable => Status::unavailable(m),
        ErrorKind::Internal => Status::internal(m),
    };
    if let Some(s) = e.retry_after_s {
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", (s * 1000).into());
    }
    status
}

fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

#[tonic::async_trait]
impl pb::grpc_inference_service_server::GrpcInferenceService for Service {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.state.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        r: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = r.into_inner();
        let ready = self
            .state
            .model_ready(&r.name, version(&r.version))
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "eali".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = r.into_inner();
        let m = self.state.model(&r.name).map_err(|e| status_of(&e))?;
        m.info
            .check_version(version(&r.version))
            .map_err(|e| status_of(&e))?;
        let batch = m.info.batch_dim();
        let tensor = |name: &str, dims: Vec<i64>| pb::model_metadata_response::TensorMetadata {
            name: name.into(),
            datatype: "FP32".into(),
            shape: std::iter::once(batch).chain(dims).collect(),
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: m.info.name.clone(),
            versions: vec![MODEL_VERSION.into()],
            platform: PLATFORM.into(),
            inputs: vec![tensor(&m.info.io.input, m.info.input_dims())],
            outputs: vec![tensor(&m.info.io.output, m.info.output_dims())],
        }))
    }

    async fn model_infer(
        &self,
        mut r: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let started = r
            .extensions()
            .get::<Received>()
            .map_or_else(Instant::now, |r| r.0);
        let admitted = r.extensions_mut().remove::<Arc<DoorPass>>();
        let r = r.into_inner();
        let model = r.model_name.clone();
        let ver = r.model_version.clone();
        // Admitted from its first bytes already, or checked now before its tensors are decoded.
        let pass = match admitted {
            Some(p) => Ok(Some(p)),
            None => self
                .state
                .refuse_early(&model, started)
                .map(|p| p.map(Arc::new)),
        };
        let req = match pass.and_then(|pass| decode_request(r).map(|req| (req, pass))) {
            // Submission counts it from here on.
            Ok((req, pass)) => {
                drop(pass);
                req
            }
            Err(e) => {
                self.state.count_refused(&model, &e);
                return Err(status_of(&e));
            }
        };
        let resp = self
            .state
            .infer(&model, version(&ver), req, started)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(encode_response(resp)))
    }
}

/// When a request's headers arrived, set by [`EarlyRefusal`]: the deadline counts from then, not
/// from when the whole message had been received and decoded.
#[derive(Debug, Clone, Copy)]
pub struct Received(pub Instant);

const MODEL_INFER_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

/// Read at most this much of a message looking for its model name.
const PEEK_LIMIT: usize = 4096;

/// The gRPC service behind admission at the door: a `ModelInfer` is refused from its first
/// bytes (the gRPC frame header and the message's first field, the model name) when admission
/// would refuse it, with the same status the service would give, and the rest of the message is
/// never read: the server's HTTP/2 stack resets the stream (`NO_ERROR`, as RFC 9113 §8.1 has it
/// for an early response) and the client stops sending. Under overload most requests are
/// refused, and receiving each one's 600 kB (ResNet-50) first is what made refusals take
/// seconds and starved the admitted requests of CPU. A message whose start is not a plain
/// model name (compressed, or another field first) goes to the service as it is.
#[derive(Clone)]
pub struct EarlyRefusal<S> {
    pub inner: S,
    pub state: Arc<AppState>,
}

impl<S: NamedService> NamedService for EarlyRefusal<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for EarlyRefusal<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let started = Instant::now();
        req.extensions_mut().insert(Received(started));
        // The clone is not the one poll_ready readied; swap so the readied one serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if req.uri().path() != MODEL_INFER_PATH {
            return Box::pin(inner.call(req));
        }
        let state = self.state.clone();
        Box::pin(async move {
            let (parts, mut body) = req.into_parts();
            let mut head = BytesMut::new();
            let mut read: Vec<Result<Frame<Bytes>, Status>> = Vec::new();
            let model = loop {
                match message_model(&head) {
                    Peek::Model(m) => break Some(m),
                    Peek::Unknown => break None,
                    Peek::NeedMore => {}
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(d) = frame.data_ref() {
                            head.extend_from_slice(d);
                        }
                        read.push(Ok(frame));
                    }
                    Some(Err(e)) => {
                        read.push(Err(e));
                        break None;
                    }
                    None => break None,
                }
            };
            let mut parts = parts;
            if let Some(model) = model {
                match state.refuse_early(&model, started) {
                    Err(e) => {
                        state.count_refused(&model, &e);
                        return Ok(status_of(&e).into_http());
                    }
                    Ok(Some(pass)) => {
                        parts.extensions.insert(Arc::new(pass));
                    }
                    Ok(None) => {}
                }
            }
            let rest = BodyStream::new(body);
            let body = Body::new(StreamBody::new(stream::iter(read).chain(rest)));
            inner.call(http::Request::from_parts(parts, body)).await
        })
    }
}

#[derive(Debug, PartialEq)]
enum Peek {
    Model(String),
    NeedMore,
    Unknown,
}

/// The model name of a `ModelInferRequest` from the start of its gRPC frame: a 5-byte frame
/// header (flag 0: not compressed) and field 1 (`model_name`, tag `0x0a`) first, as protobuf
/// encoders write fields in order.
fn message_model(buf: &[u8]) -> Peek {
    if buf.len() > PEEK_LIMIT {
        return Peek::Unknown;
    }
    let Some((&flag, mut rest)) = buf.split_first() else {
        return Peek::NeedMore;
    };
    if flag != 0 {
        return Peek::Unknown;
    }
    if rest.len() < 5 {
        return Peek::NeedMore;
    }
    rest.advance(4);
    if rest[0] != 0x0a {
        return Peek::Unknown;
    }
    rest.advance(1);
    let mut len = 0usize;
    for i in 0..5 {
        let Some(&b) = rest.get(i) else {
            return Peek::NeedMore;
        };
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let name = &rest[i + 1..];
            if len > PEEK_LIMIT {
                return Peek::Unknown;
            }
            return match name.get(..len) {
                None => Peek::NeedMore,
                Some(n) => match std::str::from_utf8(n) {
                    Ok(n) => Peek::Model(n.to_string()),
                    Err(_) => Peek::Unknown,
                },
            };
        }
    }
    Peek::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn framed(msg: &pb::ModelInferRequest) -> Vec<u8> {
        let body = msg.encode_to_vec();
        let mut out = vec![0u8];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn the_model_name_is_read_from_the_start_of_the_message() {
        let msg = pb::ModelInferRequest {
            model_name: "resnet50".into(),
            raw_input_contents: vec![Bytes::from(vec![7u8; 1000])],
            ..Default::default()
        };
        let f = framed(&msg);
        assert_eq!(message_model(&f), Peek::Model("resnet50".into()));
        // Every prefix short of the name asks for more, none misreads.
        for n in 0..15 {
            assert_eq!(message_model(&f[..n]), Peek::NeedMore, "prefix {n}");
        }
        let long = "m".repeat(300);
        let f = framed(&pb::ModelInferRequest {
            model_name: long.clone(),
            ..Default::default()
        });
        assert_eq!(message_model(&f), Peek::Model(long));
    }

    #[test]
    fn other_starts_are_left_to_the_service() {
        let mut f = framed(&pb::ModelInferRequest {
            model_name: "a".into(),
            ..Default::default()
        });
        f[0] = 1; // compressed
        assert_eq!(message_model(&f), Peek::Unknown);
        // A message without a model name starts with another field.
        let f = framed(&pb::ModelInferRequest {
            id: "x".into(),
            ..Default::default()
        });
        assert_eq!(message_model(&f), Peek::Unknown);
        assert_eq!(message_model(&vec![0u8; PEEK_LIMIT + 1]), Peek::Unknown);
        // A name that is not UTF-8, and a length varint that never ends.
        assert_eq!(
            message_model(&[0, 0, 0, 0, 3, 0x0a, 1, 0xff]),
            Peek::Unknown
        );
        assert_eq!(
            message_model(&[0, 0, 0, 0, 9, 0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Peek::Unknown
        );
    }
}
