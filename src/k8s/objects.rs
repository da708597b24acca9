//! The objects an InferenceService owns: a Deployment of `eali serve` pods, each requesting one
//! `eali.dev/gpu`, and a Service with the REST and gRPC ports. Pure builders, applied by the
//! controller with server-side apply.
//!
//! Contract with `eali serve` in the pod: the spec is passed as JSON in `EALI_SERVE_SPEC`; the
//! ports in `EALI_REST_PORT`, `EALI_GRPC_PORT`, `EALI_METRICS_PORT` (and as `--http`/`--grpc`);
//! the pod's identity through the downward API (`POD_NAME`, `POD_NAMESPACE`, `NODE_NAME`);
//! `EALI_SERVICE` names the InferenceService. The device plugin adds the GPU (`EALI_GPU_UUID`,
//! control socket). A `pvc://CLAIM/PATH` model's claim is mounted read-only at
//! [`PVC_MOUNT_ROOT`]`/CLAIM`; an `https://` model is downloaded at start into an emptyDir of
//! [`MODEL_CACHE_LIMIT`] at [`MODEL_CACHE_DIR`].

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaimVolumeSource, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext,
    Service, ServicePort, ServiceSpec, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use super::K8sError;
use super::crd::InferenceService;

/// Extended resource each serving pod requests (advertised by the agent's device plugin).
pub const GPU_RESOURCE: &str = "eali.dev/gpu";
/// Node label the `spec.gpu.product` selector matches.
pub const GPU_PRODUCT_LABEL: &str = "eali.dev/gpu-product";
/// Label on every owned object and pod, value = InferenceService name.
pub const SERVICE_LABEL: &str = "eali.dev/inferenceservice";
/// OIP v2 REST port.
pub const REST_PORT: i32 = 8080;
/// OIP v2 gRPC port.
pub const GRPC_PORT: i32 = 8081;
/// Prometheus metrics port of `eali serve`.
pub const METRICS_PORT: i32 = 9090;
/// Environment variable holding the InferenceService's spec as JSON in a serving pod.
pub const SERVE_SPEC_ENV: &str = "EALI_SERVE_SPEC";
/// Environment variable naming the InferenceService in a serving pod.
pub const SERVICE_ENV: &str = "EALI_SERVICE";
/// Environment variable holding the serving pod's namespace (downward API).
pub const POD_NAMESPACE_ENV: &str = "POD_NAMESPACE";
/// Where serving pods find the PersistentVolumeClaim of a `pvc://CLAIM/PATH` model: claim `C`
/// at `PVC_MOUNT_ROOT/C`, read-only.
pub const PVC_MOUNT_ROOT: &str = "/var/lib/eali/pvc";
/// Where serving pods download an `https://` model to (an emptyDir).
pub const MODEL_CACHE_DIR: &str = "/var/cache/eali/models";
/// Size limit of that emptyDir; the download stops beyond it.
pub const MODEL_CACHE_LIMIT: &str = "4Gi";
/// [`MODEL_CACHE_LIMIT`] in bytes.
pub const MODEL_CACHE_LIMIT_BYTES: u64 = 4 << 30;
/// User and group serving pods run as: the image's `nonroot` user (`e2e/image/build-image.py`,
/// `Containerfile`).
pub const SERVE_UID: i64 = 65532;

/// Settings that come from the agent, not the InferenceService.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeDefaults {
    /// Image used when `spec.image` is unset.
    pub image: String,
}

/// Labels on the owned objects and the pods; the selector uses only `eali.dev/inferenceservice`.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "eali-serve".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "eali".to_string(),
        ),
        (SERVICE_LABEL.to_string(), name.to_string()),
    ])
}

fn meta(isvc: &InferenceService) -> Result<ObjectMeta, K8sError> {
    let name = isvc.name_any();
    let namespace = isvc
        .namespace()
        .ok_or_else(|| K8sError::InvalidObject(format!("{name}: no namespace")))?;
    let owner = isvc
        .controller_owner_ref(&())
        .ok_or_else(|| K8sError::InvalidObject(format!("{name}: no uid yet")))?;
    Ok(ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(namespace),
        labels: Some(labels(&name)),
        owner_references: Some(vec![owner]),
        ..Default::default()
    })
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        ..Default::default()
    }
}

/// The serving Deployment with `replicas` pods.
pub fn deployment(
    isvc: &InferenceService,
    replicas: i32,
    defaults: &ServeDefaults,
) -> Result<Deployment, K8sError> {
    let meta = meta(isvc)?;
    let name = isvc.name_any();
    let spec = &isvc.spec;
    let spec_json =
        serde_json::to_string(spec).map_err(|e| K8sError::InvalidObject(e.to_string()))?;

    // An extended resource must be in limits; requests default to limits. CPU and memory are
    // set equal in both so the pod gets a predictable share next to a power-managed GPU.
    let mut limits = BTreeMap::from([(GPU_RESOURCE.to_string(), Quantity("1".into()))]);
    if let Some(cpu) = &spec.resources.cpu {
        limits.insert("cpu".into(), Quantity(cpu.clone()));
    }
    if let Some(mem) = &spec.resources.memory {
        limits.insert("memory".into(), Quantity(mem.clone()));
    }
    let mut env = vec![
        env(SERVICE_ENV, name.clone()),
        env(SERVE_SPEC_ENV, spec_json),
        env("EALI_REST_PORT", REST_PORT.to_string()),
        env("EALI_GRPC_PORT", GRPC_PORT.to_string()),
        env("EALI_METRICS_PORT", METRICS_PORT.to_string()),
        field_env("POD_NAME", "metadata.name"),
        field_env(POD_NAMESPACE_ENV, "metadata.namespace"),
        field_env("NODE_NAME", "spec.nodeName"),
    ];
    if let Some(profile) = &spec.gpu.profile {
        env.push(self::env("EALI_GPU_PROFILE", profile.clone()));
    }
    let mut node_selector = spec.gpu.node_selector.clone();
    if let Some(product) = &spec.gpu.product {
        node_selector.insert(GPU_PRODUCT_LABEL.into(), product.clone());
    }
    let (volumes, mounts) = model_volumes(isvc)?;
    let container = Container {
        name: "serve".into(),
        image: Some(spec.image.clone().unwrap_or_else(|| defaults.image.clone())),
        args: Some(vec![
            "serve".into(),
            "--http".into(),
            format!("0.0.0.0:{REST_PORT}"),
            "--grpc".into(),
            format!("0.0.0.0:{GRPC_PORT}"),
        ]),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        env: Some(env),
        ports: Some(vec![
            port("http", REST_PORT),
            port("grpc", GRPC_PORT),
            port("metrics", METRICS_PORT),
        ]),
        resources: Some(ResourceRequirements {
            limits: Some(limits.clone()),
            requests: Some(limits),
            ..Default::default()
        }),
        readiness_probe: Some(http_probe("/v2/health/ready", 5)),
        liveness_probe: Some(http_probe("/v2/health/live", 10)),
        security_context: Some(restricted_container()),
        ..Default::default()
    };
    let tolerations = [GPU_RESOURCE, "nvidia.com/gpu"]
        .into_iter()
        .map(|key| Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        })
        .collect();
    let selector = BTreeMap::from([(SERVICE_LABEL.to_string(), name.clone())]);
    Ok(Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&name)),
                    annotations: Some(BTreeMap::from([(
                        "eali.dev/policy".to_string(),
                        spec.policy.as_str().to_string(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    node_selector: (!node_selector.is_empty()).then_some(node_selector),
                    tolerations: Some(tolerations),
                    security_context: Some(restricted_pod()),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// The pod half of the Pod Security Standard `restricted`: a non-root user and the runtime's
/// default seccomp filter. Serving needs no privilege: clocks are set by the agent through the
/// control socket, which is mode 0666 (`control/service.rs`).
fn restricted_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(SERVE_UID),
        run_as_group: Some(SERVE_UID),
        fs_group: Some(SERVE_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The container half of `restricted`, plus a read-only root filesystem (models are read from
/// the image, a read-only claim or the cache emptyDir).
fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        ..Default::default()
    }
}

/// The volumes a model's `uri` needs in the serving pod: its claim, read-only, for `pvc://`; a
/// size-limited emptyDir to download into for `https://`.
fn model_volumes(isvc: &InferenceService) -> Result<(Vec<Volume>, Vec<VolumeMount>), K8sError> {
    let Some(uri) = isvc.spec.model.uri.as_deref() else {
        return Ok((Vec::new(), Vec::new()));
    };
    match uri.split_once("://") {
        Some(("pvc", rest)) => {
            let claim = rest
                .split_once('/')
                .map(|(c, _)| c)
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    K8sError::InvalidObject(format!(
                        "spec.model.uri {uri}: expected pvc://CLAIM/PATH"
                    ))
                })?;
            Ok((
                vec![Volume {
                    name: "model".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim.into(),
                        read_only: Some(true),
                    }),
                    ..Default::default()
                }],
                vec![VolumeMount {
                    name: "model".into(),
                    mount_path: format!("{PVC_MOUNT_ROOT}/{claim}"),
                    read_only: Some(true),
                    ..Default::default()
                }],
            ))
        }
        Some(("https" | "http", _)) => Ok((
            vec![Volume {
                name: "model-cache".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity(MODEL_CACHE_LIMIT.into())),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            vec![VolumeMount {
                name: "model-cache".into(),
                mount_path: MODEL_CACHE_DIR.into(),
                ..Default::default()
            }],
        )),
        _ => Ok((Vec::new(), Vec::new())),
    }
}

/// The ClusterIP Service in front of the serving pods.
pub fn service(isvc: &InferenceService) -> Result<Service, K8sError> {
    let meta = meta(isvc)?;
    let selector = BTreeMap::from([(SERVICE_LABEL.to_string(), isvc.name_any())]);
    let sport = |name: &str, port: i32, proto: Option<&str>| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        app_protocol: proto.map(String::from),
        ..Default::default()
    };
    Ok(Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![
                sport("http", REST_PORT, Some("http")),
                sport("grpc", GRPC_PORT, Some("kubernetes.io/h2c")),
            ]),
            type_: Some("ClusterIP".into()),
            ..Default::default()
        }),
        status: None,
    })
}

/// REST and gRPC endpoints of the Service, as written into the status.
pub fn endpoints(isvc: &InferenceService) -> Option<(String, String)> {
    let ns = isvc.namespace()?;
    let host = format!("{}.{ns}.svc", isvc.name_any());
    Some((
        format!("http://{host}:{REST_PORT}"),
        format!("{host}:{GRPC_PORT}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::crd::InferenceServiceSpec;

    fn isvc() -> InferenceService {
        let spec = InferenceServiceSpec::from_yaml(
            "model: {zoo: resnet50}\nslo: {latencyMs: 50}\ngpu: {product: Tesla-V100, profile: v100-sxm2, \
             nodeSelector: {zone: a}}\nresources: {cpu: '2', memory: 4Gi}\n",
        )
        .expect("spec");
        let mut i = InferenceService::new("r50", spec);
        i.metadata.namespace = Some("ml".into());
        i.metadata.uid = Some("uid-1".into());
        i
    }

    #[test]
    fn deployment_requests_one_gpu_and_is_owned() {
        let d = deployment(
            &isvc(),
            2,
            &ServeDefaults {
                image: "eali:test".into(),
            },
        )
        .expect("deployment");
        let owner = &d.metadata.owner_references.as_ref().expect("owners")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("InferenceService", "r50", "uid-1")
        );
        assert_eq!(owner.controller, Some(true));
        let spec = d.spec.expect("spec");
        assert_eq!(spec.replicas, Some(2));
        let pod = spec.template.spec.expect("pod");
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("eali:test"));
        let limits = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .expect("limits");
        assert_eq!(limits.get(GPU_RESOURCE), Some(&Quantity("1".into())));
        assert_eq!(limits.get("memory"), Some(&Quantity("4Gi".into())));
        let ns = pod.node_selector.expect("node selector");
        assert_eq!(
            ns.get(GPU_PRODUCT_LABEL).map(String::as_str),
            Some("Tesla-V100")
        );
        assert_eq!(ns.get("zone").map(String::as_str), Some("a"));
        let env = c.env.as_ref().expect("env");
        let spec_env = env
            .iter()
            .find(|e| e.name == "EALI_SERVE_SPEC")
            .and_then(|e| e.value.clone())
            .expect("spec env");
        let back: InferenceServiceSpec = serde_json::from_str(&spec_env).expect("json");
        assert_eq!(back, isvc().spec);
        assert!(
            env.iter()
                .any(|e| e.name == "EALI_GPU_PROFILE" && e.value.as_deref() == Some("v100-sxm2"))
        );
        // Pod Security Standard `restricted`.
        let psc = pod.security_context.as_ref().expect("pod security context");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault")
        );
        let sc = c
            .security_context
            .as_ref()
            .expect("container security context");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()])
        );
        // The selector is a subset of the pod labels.
        let sel = spec.selector.match_labels.expect("selector");
        let pod_labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .expect("labels");
        assert!(sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    }

    #[test]
    fn image_from_spec_wins_and_service_has_both_ports() {
        let mut i = isvc();
        i.spec.image = Some("custom:1".into());
        let d = deployment(
            &i,
            1,
            &ServeDefaults {
                image: "eali:test".into(),
            },
        )
        .expect("deployment");
        let image = d
            .spec
            .and_then(|s| s.template.spec)
            .map(|p| p.containers[0].image.clone());
        assert_eq!(image, Some(Some("custom:1".into())));
        let s = service(&i).expect("service").spec.expect("spec");
        let ports: Vec<(String, i32)> = s
            .ports
            .expect("ports")
            .into_iter()
            .map(|p| (p.name.unwrap_or_default(), p.port))
            .collect();
        assert_eq!(
            ports,
            [
                ("http".to_string(), REST_PORT),
                ("grpc".to_string(), GRPC_PORT)
            ]
        );
        assert_eq!(
            endpoints(&i),
            Some((
                "http://r50.ml.svc:8080".to_string(),
                "r50.ml.svc:8081".to_string()
            ))
        );
    }

    #[test]
    fn a_pvc_model_mounts_its_claim_read_only_and_an_https_model_gets_a_cache() {
        let defaults = ServeDefaults { image: "x".into() };
        let mut i = isvc();
        i.spec.model.zoo = None;
        i.spec.model.uri = Some("pvc://models/vision/m.onnx".into());
        let pod = deployment(&i, 1, &defaults)
            .expect("deployment")
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod");
        let v = &pod.volumes.as_ref().expect("volumes")[0];
        let pvc = v.persistent_volume_claim.as_ref().expect("claim");
        assert_eq!(
            (pvc.claim_name.as_str(), pvc.read_only),
            ("models", Some(true))
        );
        let m = &pod.containers[0].volume_mounts.as_ref().expect("mounts")[0];
        assert_eq!(m.mount_path, format!("{PVC_MOUNT_ROOT}/models"));
        assert_eq!(m.read_only, Some(true));

        i.spec.model.uri = Some("https://models.example/m.onnx".into());
        let pod = deployment(&i, 1, &defaults)
            .expect("deployment")
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod");
        let v = &pod.volumes.as_ref().expect("volumes")[0];
        let dir = v.empty_dir.as_ref().expect("emptyDir");
        assert_eq!(dir.size_limit, Some(Quantity(MODEL_CACHE_LIMIT.into())));
        let m = &pod.containers[0].volume_mounts.as_ref().expect("mounts")[0];
        assert_eq!(m.mount_path, MODEL_CACHE_DIR);

        i.spec.model.uri = Some("pvc://nofile".into());
        assert!(deployment(&i, 1, &defaults).is_err());
        // A zoo model needs no volume.
        let pod = deployment(&isvc(), 1, &defaults)
            .expect("deployment")
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod");
        assert!(pod.volumes.is_none() && pod.containers[0].volume_mounts.is_none());
    }

    #[test]
    fn objects_need_namespace_and_uid() {
        let mut i = isvc();
        i.metadata.uid = None;
        assert!(service(&i).is_err());
        let mut i = isvc();
        i.metadata.namespace = None;
        assert!(deployment(&i, 1, &ServeDefaults { image: "x".into() }).is_err());
    }
}
