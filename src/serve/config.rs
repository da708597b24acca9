//! The standalone configuration: a YAML file of `InferenceService` objects, exactly as they are
//! applied to a cluster (same `eali.dev/v1alpha1` schema, [`crate::k8s::crd`]), so one file works
//! on a laptop (`eali serve --config FILE`) and with `kubectl apply -f FILE`.

use std::path::Path;

use kube::ResourceExt;

use super::ServeError;
use crate::k8s::crd::{GROUP, InferenceService, InferenceServiceSpec, VERSION};

/// `apiVersion` and `kind` of a document.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeHead {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

/// The models one server runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    pub services: Vec<InferenceService>,
}

impl ServeConfig {
    /// Reads every YAML document of a file; each must be an InferenceService.
    pub fn from_yaml(text: &str) -> Result<Self, ServeError> {
        let want = format!("{GROUP}/{VERSION}");
        let heads: Vec<TypeHead> = serde_saphyr::from_multiple(text)
            .map_err(|e| ServeError::Config(format!("not YAML objects: {e}")))?;
        if let Some(h) = heads
            .iter()
            .find(|h| h.api_version != want || h.kind != "InferenceService")
        {
            return Err(ServeError::Config(format!(
                "documents must be {want} InferenceService objects, found {} {}",
                h.api_version, h.kind
            )));
        }
        let docs: Vec<InferenceService> = serde_saphyr::from_multiple(text)
            .map_err(|e| ServeError::Config(format!("not InferenceService YAML: {e}")))?;
        let mut names = std::collections::HashSet::new();
        for d in &docs {
            let name = d.name_any();
            if name.is_empty() {
                return Err(ServeError::Config(
                    "an InferenceService has no metadata.name".into(),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(ServeError::Config(format!(
                    "two InferenceServices are named {name}"
                )));
            }
            check_spec(&name, &d.spec)?;
        }
        if docs.is_empty() {
            return Err(ServeError::Config(
                "the file holds no InferenceService".into(),
            ));
        }
        Ok(Self { services: docs })
    }

    pub fn load(path: &Path) -> Result<Self, ServeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServeError::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_yaml(&text)
    }

    /// One service from command-line flags (no file).
    pub fn single(name: &str, spec: InferenceServiceSpec) -> Result<Self, ServeError> {
        check_spec(name, &spec)?;
        Ok(Self {
            services: vec![InferenceService::new(name, spec)],
        })
    }
}

/// The checks the API server's schema and CEL rules make, for files that never met one.
fn check_spec(name: &str, s: &InferenceServiceSpec) -> Result<(), ServeError> {
    let bad = |m: String| Err(ServeError::Config(format!("{name}: {m}")));
    if s.model.zoo.is_some() == s.model.uri.is_some() {
        return bad("set exactly one of model.zoo and model.uri".into());
    }
    if !(1..=60_000).contains(&s.slo.latency_ms) {
        return bad(format!(
            "slo.latencyMs {} is outside 1-60000",
            s.slo.latency_ms
        ));
    }
    if !(50.0..=99.99).contains(&s.slo.percentile) {
        return bad(format!(
            "slo.percentile {} is outside 50-99.99",
            s.slo.percentile
        ));
    }
    if !(1..=1024).contains(&s.max_batch_size) {
        return bad(format!(
            "maxBatchSize {} is outside 1-1024",
            s.max_batch_size
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::crd::Policy;

    const TWO: &str = r#"
apiVersion: eali.dev/v1alpha1
kind: InferenceService
metadata:
  name: resnet
  namespace: vision
spec:
  model: {zoo: resnet50}
  slo: {latencyMs: 50}
  maxBatchSize: 16
  gpu: {profile: v100-sxm2}
---
apiVersion: eali.dev/v1alpha1
kind: InferenceService
metadata:
  name: mobile
spec:
  model: {zoo: mobilenet_v2}
  slo: {latencyMs: 20, percentile: 95}
  policy: maxPerformance
"#;

    #[test]
    fn reads_the_crd_schema_from_multi_document_yaml() {
        let c = ServeConfig::from_yaml(TWO).unwrap();
        assert_eq!(c.services.len(), 2);
        let r = &c.services[0];
        assert_eq!(r.name_any(), "resnet");
        assert_eq!(r.namespace().as_deref(), Some("vision"));
        assert_eq!(r.spec.max_batch_size, 16);
        assert_eq!(r.spec.policy, Policy::Eali);
        assert_eq!(r.spec.gpu.profile.as_deref(), Some("v100-sxm2"));
        let m = &c.services[1].spec;
        assert_eq!(m.policy, Policy::MaxPerformance);
        assert_eq!(m.slo.percentile, 95.0);
        assert_eq!(m.max_batch_size, 32);
    }

    #[test]
    fn the_cluster_samples_are_standalone_configs_too() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/samples");
        let mut read = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let c =
                    ServeConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(!c.services.is_empty());
                read += 1;
            }
        }
        assert!(read > 0);
    }

    #[test]
    fn refuses_what_the_api_server_would() {
        let dup = format!("{TWO}---\n{}", TWO.split("---").next().unwrap());
        assert!(
            ServeConfig::from_yaml(&dup)
                .unwrap_err()
                .to_string()
                .contains("two InferenceServices")
        );
        let both = TWO.replace("{zoo: resnet50}", "{zoo: resnet50, uri: 'file:///m.json'}");
        assert!(
            ServeConfig::from_yaml(&both)
                .unwrap_err()
                .to_string()
                .contains("exactly one")
        );
        let slow = TWO.replace("latencyMs: 50", "latencyMs: 0");
        assert!(ServeConfig::from_yaml(&slow).is_err());
        let kind = TWO.replace(
            "kind: InferenceService\nmetadata:\n  name: mobile",
            "kind: Pod\nmetadata:\n  name: mobile",
        );
        assert!(ServeConfig::from_yaml(&kind).is_err());
        assert!(ServeConfig::from_yaml("").is_err());
    }
}
