//! `eali serve` over gRPC (`inference.GRPCInferenceService`) with the generated Rust client, and
//! the EALI policy end to end with energy attributed per unit and layer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod serve_support;

use eali::k8s::crd::Policy;
use eali::serve::oip::grpc::pb;
use eali::serve::oip::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use serve_support::*;
use tonic::Code;

fn infer(model: &str, shape: Vec<i64>, raw: Vec<u8>) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.into(),
        id: "g1".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape,
            parameters: Default::default(),
            contents: None,
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_inference_service() {
    let s = start(
        "alex",
        spec("alexnet", 100, 4, Policy::MaxPerformance),
        options(),
    )
    .await;
    let mut c = GrpcInferenceServiceClient::connect(format!("http://{}", s.grpc))
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);
    assert!(
        c.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = c
        .model_ready(pb::ModelReadyRequest {
            name: "alex".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ready.ready);
    let meta = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "alex".into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.inputs[0].shape, vec![-1, 3, 224, 224]);
    assert_eq!(meta.outputs[0].name, "output");

    let image = vec![0u8; 3 * 224 * 224 * 4];
    let r = c
        .model_infer(infer("alex", vec![1, 3, 224, 224], image.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.id, "g1");
    assert!(r.outputs.is_empty() && r.raw_output_contents.is_empty());
    assert!(matches!(
        r.parameters["simulated"].parameter_choice,
        Some(pb::infer_parameter::ParameterChoice::BoolParam(true))
    ));

    let e = c
        .model_infer(infer("alex", vec![1, 3, 224, 223], image.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .model_infer(infer("alex", vec![1, 3, 224, 224], image[4..].to_vec()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .model_infer(infer("vgg", vec![1, 3, 224, 224], image.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "alex".into(),
            version: "9".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eali_policy_serves_and_attributes_energy_to_every_layer() {
    let s = start("r18", spec("resnet18", 50, 8, Policy::Eali), options()).await;
    let mut c = GrpcInferenceServiceClient::connect(format!("http://{}", s.grpc))
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);
    let image = vec![0u8; 3 * 224 * 224 * 4];
    for _ in 0..20 {
        c.model_infer(infer("r18", vec![1, 3, 224, 224], image.clone()))
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Let a telemetry tick read the energy counter.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let layers = s.state.metrics.layer_energy_j();
    // ResNet-18 is short next to a ~25 ms clock switch, so EALI may merge it into one unit; every
    // layer still carries its unit's name.
    assert_eq!(
        layers.len(),
        eali::model::zoo::build("resnet18").unwrap().layers.len()
    );
    assert!(layers.iter().all(|(u, _, _)| !u.is_empty()));
    for (_, layer, j) in &layers {
        if layer.contains("conv") {
            assert!(*j > 0.0, "{layer} got no energy");
        }
    }
    let attributed: f64 = layers.iter().map(|l| l.2).sum();
    assert!(attributed > 0.0);
    assert!(attributed <= s.state.metrics.gpu_energy_j());
    s.stop().await;
}

/// A `ModelInfer` that admission refuses is answered UNAVAILABLE, with the reason and a retry
/// hint, from the first bytes of its message; one it admits is served as before, on the same
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_from_the_start_of_the_message() {
    let mut opts = options();
    opts.deadline_factor = 1.0;
    // No batch of ResNet-50 answers within 1 ms: admission refuses every request.
    let s = start(
        "r50",
        spec("resnet50", 1, 8, Policy::MaxPerformance),
        opts.clone(),
    )
    .await;
    let mut c = GrpcInferenceServiceClient::connect(format!("http://{}", s.grpc))
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);
    let image = vec![0u8; 3 * 224 * 224 * 4];
    for _ in 0..3 {
        let e = c
            .model_infer(infer("r50", vec![1, 3, 224, 224], image.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().contains("at capacity"), "{e:?}");
        assert!(
            e.metadata().get("grpc-retry-pushback-ms").is_some(),
            "{e:?}"
        );
    }
    let metrics = String::from_utf8(get(&s.url("/metrics")).await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("eali_requests_total{model=\"r50\",outcome=\"overloaded\"} 3"),
        "{metrics}"
    );
    s.stop().await;
    let s = start(
        "r50",
        spec("resnet50", 1000, 8, Policy::MaxPerformance),
        opts,
    )
    .await;
    let mut c = GrpcInferenceServiceClient::connect(format!("http://{}", s.grpc))
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);
    for _ in 0..3 {
        let r = c
            .model_infer(infer("r50", vec![1, 3, 224, 224], image.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.model_name, "r50");
    }
    s.stop().await;
}
