//! The `InferenceService` custom resource (`eali.dev/v1alpha1`): spec, status and the generated
//! CustomResourceDefinition.
//!
//! The spec type is plain serde data with defaults, so `eali serve` reads the same type from a YAML
//! file outside Kubernetes. Validation lives in the schema (ranges, patterns, enums) and in CEL
//! rules (`x-kubernetes-validations`) so the API server refuses bad objects with a message that
//! names the field, before any controller sees them.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::K8sError;
use super::report::NodeReport;

/// API group of every EALI resource.
pub const GROUP: &str = "eali.dev";
/// Served and stored version of `InferenceService`.
pub const VERSION: &str = "v1alpha1";
/// Name of the CRD object (`<plural>.<group>`).
pub const CRD_NAME: &str = "inferenceservices.eali.dev";

/// Desired state of an InferenceService: which CNN to serve, under which latency SLO, with which
/// energy policy, on which GPUs.
// Each printcolumn(...) repeats `type_ = ...`, which clippy reads as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "eali.dev",
    version = "v1alpha1",
    kind = "InferenceService",
    plural = "inferenceservices",
    singular = "inferenceservice",
    shortname = "eisvc",
    category = "eali",
    namespaced,
    status = "InferenceServiceStatus",
    derive = "PartialEq",
    doc = "InferenceService serves a CNN over the Open Inference Protocol v2 with the least GPU energy that still meets its latency SLO (batch size and per-unit GPU clocks chosen by EALI).",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the service answers requests"
    ),
    printcolumn(
        name = "SLO",
        type_ = "string",
        json_path = ".status.slo",
        description = "Latency objective, e.g. p99<=50ms"
    ),
    printcolumn(
        name = "p99",
        type_ = "number",
        json_path = ".status.p99Ms",
        description = "Observed 99th percentile latency in milliseconds"
    ),
    printcolumn(
        name = "J/req",
        type_ = "number",
        json_path = ".status.joulesPerRequest",
        description = "Observed GPU energy per request in joules"
    ),
    printcolumn(
        name = "Saved",
        type_ = "number",
        json_path = ".status.energySavedRatio",
        description = "Estimated fraction of GPU energy saved against maximum clocks"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Serving pods the controller asks for",
        priority = 1
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint",
        description = "REST endpoint inside the cluster",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceSpec {
    /// The model to serve: a model zoo name or a model file.
    pub model: ModelRef,
    /// The latency service-level objective the scheduler must meet.
    pub slo: Slo,
    /// Largest batch the scheduler may form (1-1024).
    #[serde(default = "default_max_batch_size")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_batch_size: u32,
    /// Number of serving pods, each holding one GPU; the controller scales between min and max.
    #[serde(default)]
    pub replicas: Replicas,
    /// Energy policy: eali (layer-level DVFS + batching), maxPerformance (max clocks, dynamic
    /// batching), perBatchDvfs (one clock per batch). The last two exist for A/B comparisons.
    #[serde(default)]
    pub policy: Policy,
    /// Which GPUs the serving pods may run on.
    #[serde(default)]
    pub gpu: GpuSelector,
    /// CPU and memory for each serving pod (the GPU comes from the eali.dev/gpu resource).
    #[serde(default)]
    pub resources: PodResources,
    /// Container image of `eali serve`; empty means the agent's default image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
}

fn default_max_batch_size() -> u32 {
    32
}

/// Reference to the model to serve. Exactly one of `zoo` and `uri` is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("has(self.zoo) || has(self.uri)").message("set model.zoo (a model zoo name) or model.uri (a model file)").reason(kube::core::Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("!(has(self.zoo) && has(self.uri))").message("set only one of model.zoo and model.uri"))]
#[serde(rename_all = "camelCase")]
pub struct ModelRef {
    /// Name of a model in EALI's built-in model zoo, e.g. resnet50 (see `eali models`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        pattern(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")
    )]
    pub zoo: Option<String>,
    /// Location of a model file when the model is not in the zoo: file://<path> (a file in the
    /// serving image or the node), pvc://<claim>/<path> (a PersistentVolumeClaim in the
    /// service's namespace, mounted read-only into the serving pods) or https://<url>
    /// (downloaded once when a pod starts; give model.sha256). s3:// and gs:// are refused: use a
    /// claim backed by a CSI driver or a pre-signed https:// URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 8, max = 2048),
        pattern(r"^(file|pvc|s3|gs|https?)://\S+$")
    )]
    pub uri: Option<String>,
    /// Format of the model file at `uri` (default: from the file's extension or content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ModelFormat>,
    /// SHA-256 of the file at an https:// `uri` (64 lowercase hex digits): the download is
    /// refused unless it matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
}

/// File format of a model given by `uri`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ModelFormat {
    /// ONNX graph.
    Onnx,
    /// EALI graph IR as JSON.
    EaliJson,
}

/// Latency objective: `percentile` of request latencies must stay at or below `latencyMs`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Slo {
    /// Latency bound in milliseconds (1-60000), measured from arrival to response.
    #[schemars(range(min = 1, max = 60000))]
    pub latency_ms: u32,
    /// Percentile the bound applies to (50-99.99), e.g. 99 for p99.
    #[serde(default = "default_percentile")]
    #[schemars(range(min = 50.0, max = 99.99))]
    pub percentile: f64,
}

fn default_percentile() -> f64 {
    99.0
}

/// Replica bounds of the serving Deployment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.min <= self.max").message("replicas.min must be less than or equal to replicas.max").field_path(".min"))]
#[serde(rename_all = "camelCase")]
pub struct Replicas {
    /// Fewest serving pods (1-64).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 64))]
    pub min: u32,
    /// Most serving pods (1-64); the controller scales out when pods report saturation.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 64))]
    pub max: u32,
}

fn one() -> u32 {
    1
}

impl Default for Replicas {
    fn default() -> Self {
        Replicas { min: 1, max: 1 }
    }
}

/// Energy policy of the serving loop.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum Policy {
    /// Batch size and a GPU clock per optimization unit, chosen for least energy under the SLO.
    #[default]
    Eali,
    /// Maximum clocks with dynamic batching (Triton-like baseline).
    MaxPerformance,
    /// One clock per batch with batching (EAIS-like baseline).
    PerBatchDvfs,
}

impl Policy {
    /// The name used in YAML and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Eali => "eali",
            Policy::MaxPerformance => "maxPerformance",
            Policy::PerBatchDvfs => "perBatchDvfs",
        }
    }
}

/// GPU placement constraints.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GpuSelector {
    /// GPU product the pods must run on, matched against the node label eali.dev/gpu-product
    /// (e.g. Tesla-V100-SXM2-16GB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        pattern(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
    )]
    pub product: Option<String>,
    /// GPU profile name used by the simulated GPU when no real GPU is present (e.g. v100-sxm2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        pattern(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")
    )]
    pub profile: Option<String>,
    /// Extra node labels the pods require.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub node_selector: BTreeMap<String, String>,
}

/// CPU and memory of each serving pod, as Kubernetes quantities.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodResources {
    /// CPU request and limit, e.g. 2 or 500m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$"))]
    pub cpu: Option<String>,
    /// Memory request and limit, e.g. 4Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub memory: Option<String>,
}

/// Observed state, written by the controller (aggregates) and the node agents (reports).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceStatus {
    /// Ready, SloMet and Degraded conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The metadata.generation the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The SLO as text, e.g. p99<=50ms (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<String>,
    /// REST (OIP v2 HTTP) endpoint inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// gRPC (OIP v2) endpoint inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_endpoint: Option<String>,
    /// Serving pods the controller currently asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Serving pods that are available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Observed latency at the SLO percentile across pods, in milliseconds (worst pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Observed request rate across pods, requests per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// Observed GPU energy per request across pods, joules (request-weighted mean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joules_per_request: Option<f64>,
    /// Estimated energy saved against running the same load at maximum clocks, as a fraction 0-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_saved_ratio: Option<f64>,
    /// When the controller last changed the replica count (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// Per-pod figures, one entry per serving pod, written by the agent on that pod's node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["pod"]))]
    pub reports: Vec<ServingReport>,
    /// Per-node figures, one entry per node, each applied by that node's agent under the field
    /// manager eali-agent/<node>: which pods hold which GPUs, their plans, joules per request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"], "maxItems" = 1024))]
    pub nodes: Vec<NodeReport>,
}

/// One serving pod's recent figures, as its node agent saw them.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServingReport {
    /// Name of the serving pod.
    pub pod: String,
    /// Node the pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When these figures were taken (RFC 3339).
    pub time: String,
    /// Latency at the SLO percentile over the last window, milliseconds.
    pub p99_ms: f64,
    /// Requests per second over the last window.
    pub requests_per_second: f64,
    /// GPU energy per request over the last window, joules.
    pub joules_per_request: f64,
    /// Estimated energy saved against maximum clocks over the last window, fraction 0-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_saved_ratio: Option<f64>,
    /// Fraction of the pod's capacity at the SLO that the load uses (0-1, above 1 = overloaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_ratio: Option<f64>,
    /// True when the pod cannot take more load without breaking the SLO.
    #[serde(default)]
    pub saturated: bool,
}

/// A status condition in the usual Kubernetes shape.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Ready, SloMet or Degraded.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// One-word CamelCase reason for the last transition.
    pub reason: String,
    /// Human-readable detail.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The metadata.generation this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl InferenceServiceSpec {
    /// Reads a spec from YAML (an InferenceService manifest's `spec`, or a standalone file).
    pub fn from_yaml(text: &str) -> Result<Self, K8sError> {
        serde_saphyr::from_str(text).map_err(|e| K8sError::Yaml(e.to_string()))
    }

    /// The SLO as short text, e.g. `p99<=50ms`.
    pub fn slo_text(&self) -> String {
        let p = self.slo.percentile;
        let p = if p.fract() == 0.0 {
            format!("{p:.0}")
        } else {
            format!("{p}")
        };
        format!("p{p}<={}ms", self.slo.latency_ms)
    }
}

/// The CRD object generated from the Rust types.
pub fn crd() -> CustomResourceDefinition {
    InferenceService::crd()
}

/// The CRD as YAML, exactly as committed in `crds/inferenceservice.yaml`.
pub fn crd_yaml() -> Result<String, K8sError> {
    let header = "# Generated by `eali crd` from src/k8s/crd.rs; do not edit.\n";
    let body = serde_saphyr::to_string(&crd()).map_err(|e| K8sError::Yaml(e.to_string()))?;
    Ok(format!("{header}{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in_a_minimal_spec() {
        let spec =
            InferenceServiceSpec::from_yaml("model: {zoo: resnet50}\nslo: {latencyMs: 50}\n")
                .expect("spec");
        assert_eq!(spec.max_batch_size, 32);
        assert_eq!(spec.slo.percentile, 99.0);
        assert_eq!(spec.replicas, Replicas { min: 1, max: 1 });
        assert_eq!(spec.policy, Policy::Eali);
        assert_eq!(spec.slo_text(), "p99<=50ms");
        assert!(
            InferenceServiceSpec::from_yaml("model: {zoo: resnet50}\n").is_err(),
            "slo is required"
        );
    }

    #[test]
    fn samples_parse_into_the_spec_type() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/samples");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("samples dir") {
            let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
            let obj: InferenceService = serde_saphyr::from_str(&text).expect("sample parses");
            assert!(obj.spec.slo.latency_ms > 0);
            n += 1;
        }
        assert!(n >= 3);
    }

    #[test]
    fn crd_names_columns_and_status_subresource() {
        let crd = crd();
        assert_eq!(crd.metadata.name.as_deref(), Some(CRD_NAME));
        let names = &crd.spec.names;
        assert_eq!(
            names.short_names.as_deref(),
            Some(&["eisvc".to_string()][..])
        );
        assert_eq!(names.categories.as_deref(), Some(&["eali".to_string()][..]));
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, VERSION);
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let cols: Vec<&str> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .filter(|c| c.priority.unwrap_or(0) == 0)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(cols, ["Ready", "SLO", "p99", "J/req", "Saved", "Age"]);
    }

    #[test]
    fn every_schema_property_has_a_description() {
        fn walk(path: &str, v: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
                for (k, p) in props {
                    let here = format!("{path}.{k}");
                    if p.get("description").is_none()
                        && !["apiVersion", "kind", "metadata"].contains(&k.as_str())
                    {
                        missing.push(here.clone());
                    }
                    walk(&here, p, missing);
                }
            }
            if let Some(items) = v.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
        }
        let crd = serde_json::to_value(crd()).expect("json");
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        walk("", schema, &mut missing);
        assert!(missing.is_empty(), "no description: {missing:?}");
    }
}
