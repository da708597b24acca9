//! The gRPC front end: `inference.GRPCInferenceService` over the same request path as REST.
//! Protocol errors map to INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED,
//! UNAVAILABLE and INTERNAL.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::model::{MODEL_VERSION, PLATFORM};
use super::oip::grpc::{decode_request, encode_response, pb};
use super::oip::{ErrorKind, OipError};
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
        r: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let started = Instant::now();
        let r = r.into_inner();
        let model = r.model_name.clone();
        let ver = r.model_version.clone();
        let req = match self
            .state
            .refuse_early(&model, started)
            .and_then(|()| decode_request(r))
        {
            Ok(req) => req,
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
