//! The fuzz targets' entry points for every other decoder of outside input (`fuzz/`:
//! `model_files`, `control_messages`, `config_yaml`; `onnx_import` has its own in
//! `src/model/onnx`) over generated inputs, so CI checks them without a nightly toolchain:
//! random bytes, and valid inputs with random bytes changed, cut or appended. None may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod fuzz_support;

use fuzz_support::mutate;
use std::collections::HashMap;

use eali::control::proto;
use eali::control::service::fuzz_messages;
use eali::serve::source::{META_MODEL, fuzz_model_file};
use proptest::prelude::*;
use prost::Message;

fn graph_json() -> Vec<u8> {
    serde_json::to_vec(&eali::model::zoo::build("alexnet").unwrap()).unwrap()
}

/// A safetensors file naming its architecture, with a tensor that does not fit it.
fn safetensors_file() -> Vec<u8> {
    let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &data).unwrap();
    let meta = HashMap::from([(META_MODEL.to_string(), "alexnet".to_string())]);
    safetensors::serialize([("conv1.weight", view)], Some(meta)).unwrap()
}

fn window() -> Vec<u8> {
    proto::ServingWindow {
        gpu_uuid: "GPU-0".into(),
        inference_service: "serving/resnet".into(),
        model: "resnet50".into(),
        window_s: 10.0,
        end_unix_s: 1.7e9,
        requests: 700,
        latency_ms: Some(48.0),
        slo_percentile: 0.99,
        slo_latency_ms: 50.0,
        load_ratio: Some(0.7),
        saturated: false,
        predicted_energy_j: Some(1.0),
        max_clock_energy_j: Some(1.3),
    }
    .encode_to_vec()
}

fn timing() -> Vec<u8> {
    proto::UnitTiming {
        model: "resnet50".into(),
        unit: 1,
        batch: 8,
        start_unix_s: 1.7e9,
        end_unix_s: 1.7e9 + 0.01,
        clock_mhz: 1200,
        layers: vec![proto::LayerShare {
            name: "conv1".into(),
            predicted_energy_j: 0.1,
        }],
        ..proto::UnitTiming::default()
    }
    .encode_to_vec()
}

fn yaml() -> Vec<u8> {
    include_bytes!("../manifests/samples/resnet50-eali.yaml").to_vec()
}

fn fuzz_yaml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = eali::serve::config::ServeConfig::from_yaml(&text);
    let _ = eali::k8s::crd::InferenceServiceSpec::from_yaml(&text);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzz_model_file(&data);
        fuzz_messages(&data);
        fuzz_yaml(&data);
    }

    #[test]
    fn mutated_inputs(
        which in 0usize..5,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in 0usize..16,
        tail in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let base = [graph_json, safetensors_file, window, timing, yaml][which]();
        let data = mutate(base, &edits, cut, &tail);
        match which {
            0 | 1 => fuzz_model_file(&data),
            2 | 3 => fuzz_messages(&data),
            _ => fuzz_yaml(&data),
        }
    }
}

#[test]
fn valid_inputs_decode() {
    let g: eali::model::Graph = serde_json::from_slice(&graph_json()).unwrap();
    assert!(g.validate().is_ok());
    assert!(proto::ServingWindow::decode(window().as_slice()).is_ok());
    assert!(proto::UnitTiming::decode(timing().as_slice()).is_ok());
    let text = String::from_utf8(yaml()).unwrap();
    assert!(eali::serve::config::ServeConfig::from_yaml(&text).is_ok());
    assert!(safetensors::SafeTensors::deserialize(&safetensors_file()).is_ok());
}
