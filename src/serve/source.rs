//! Where a served model comes from: `model.zoo`, a built-in architecture, or `model.uri`, a local
//! file (`file://…` or a plain path) holding either
//!
//! - safetensors weights (PyTorch `state_dict` names, see [`crate::exec::weights`]) whose header
//!   metadata names the architecture: `eali.model` = a zoo name (e.g. a trained ResNet-50
//!   converted with `safetensors.torch.save_file(sd, path, metadata={"eali.model": "resnet50"})`)
//!   or `eali.graph` = the EALI graph IR as JSON (a custom network); or
//! - the EALI graph IR as JSON (format `ealiJson`), without weights.
//!
//! The kind is `model.format` when set, else the file extension (`.safetensors`, `.json`), else
//! the file's first byte (a JSON document starts with `{`). Remote storage (`s3://`, `gs://`,
//! `https://`, `pvc://`) is not fetched here: such a uri is an error naming its scheme.

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;

use crate::exec::Weights;
use crate::k8s::crd::{ModelFormat, ModelRef};
use crate::model::{Graph, zoo};

/// Safetensors metadata key naming a zoo architecture.
pub const META_MODEL: &str = "eali.model";
/// Safetensors metadata key holding an EALI graph IR (JSON).
pub const META_GRAPH: &str = "eali.graph";

/// A resolved model reference.
#[derive(Debug, Clone)]
pub struct Source {
    /// The zoo name, when the architecture is a zoo model (the simulated GPU has costs for it).
    pub zoo: Option<String>,
    pub graph: Graph,
    /// Weights read from `model.uri` (checked against the graph).
    pub weights: Option<Weights>,
}

/// Resolves `m` (see the module docs). Errors are user-facing sentences.
pub fn resolve(m: &ModelRef) -> Result<Source, String> {
    if let Some(z) = &m.zoo {
        let graph = zoo::build(z).map_err(|e| e.to_string())?;
        return Ok(Source {
            zoo: Some(z.clone()),
            graph,
            weights: None,
        });
    }
    let uri = m
        .uri
        .as_deref()
        .ok_or("the model names neither model.zoo nor model.uri")?;
    let path = local_path(uri)?;
    if m.format == Some(ModelFormat::Onnx) {
        return Err(format!(
            "model.uri {uri}: ONNX models are not supported yet (use a zoo name, safetensors \
             weights naming their architecture, or an ealiJson graph)"
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if is_graph_json(m.format, &path, &bytes) {
        let graph = parse_graph(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(Source {
            zoo: None,
            graph,
            weights: None,
        });
    }
    from_safetensors(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The local file a uri names: `file://PATH` or a plain path; any other scheme is refused.
pub fn local_path(uri: &str) -> Result<PathBuf, String> {
    match uri.split_once("://") {
        Some(("file", rest)) if !rest.is_empty() => Ok(PathBuf::from(rest)),
        Some(("file", _)) => Err(format!("model.uri {uri}: names no file")),
        Some((scheme, _)) => Err(format!(
            "model.uri {uri}: the {scheme}:// scheme is not supported by eali serve, which reads \
             local files only (file:// or a path); copy or mount the file first"
        )),
        None if uri.is_empty() => Err("model.uri is empty".into()),
        None => Ok(PathBuf::from(uri)),
    }
}

fn is_graph_json(format: Option<ModelFormat>, path: &Path, bytes: &[u8]) -> bool {
    if format == Some(ModelFormat::EaliJson) {
        return true;
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => true,
        Some("safetensors") => false,
        _ => bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
    }
}

fn parse_graph(bytes: &[u8]) -> Result<Graph, String> {
    let g: Graph = serde_json::from_slice(bytes).map_err(|e| format!("not an EALI graph: {e}"))?;
    g.validate().map_err(|e| e.to_string())?;
    Ok(g)
}

/// The architecture named in the safetensors metadata, and the weights checked against it.
fn from_safetensors(bytes: &[u8]) -> Result<Source, String> {
    let (_, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let (zoo, graph) = match (meta.get(META_MODEL), meta.get(META_GRAPH)) {
        (Some(z), None) => (Some(z.clone()), zoo::build(z).map_err(|e| e.to_string())?),
        (None, Some(g)) => (
            None,
            parse_graph(g.as_bytes()).map_err(|e| format!("metadata {META_GRAPH}: {e}"))?,
        ),
        (Some(_), Some(_)) => {
            return Err(format!(
                "the safetensors metadata holds both {META_MODEL} and {META_GRAPH}; keep one"
            ));
        }
        (None, None) => {
            return Err(format!(
                "the safetensors file does not say which network its weights are for: add the \
                 metadata {META_MODEL} (a zoo name, see `eali models`) or {META_GRAPH} (an EALI \
                 graph as JSON)"
            ));
        }
    };
    let weights = Weights::from_safetensors(&graph, bytes).map_err(|e| e.to_string())?;
    Ok(Source {
        zoo,
        graph,
        weights: Some(weights),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::model::{Conv, GraphBuilder, Shape};

    fn tiny() -> Graph {
        let mut b = GraphBuilder::new("tiny", Shape::new(2, 4, 4));
        let x = b.input();
        let y = b.conv("conv", x, Conv::new(3, 3).padding(1)).unwrap();
        let y = b.global_avg_pool("gap", y).unwrap();
        let y = b.flatten("flatten", y).unwrap();
        b.linear("fc", y, 5, true).unwrap();
        b.finish().unwrap()
    }

    fn uri(path: &Path) -> ModelRef {
        ModelRef {
            zoo: None,
            uri: Some(format!("file://{}", path.display())),
            format: None,
        }
    }

    #[test]
    fn only_local_files_are_read() {
        assert_eq!(
            local_path("file:///m/w.safetensors"),
            Ok(PathBuf::from("/m/w.safetensors"))
        );
        assert_eq!(
            local_path("w.safetensors"),
            Ok(PathBuf::from("w.safetensors"))
        );
        for (u, scheme) in [
            ("s3://bucket/w.safetensors", "s3://"),
            ("gs://bucket/w.safetensors", "gs://"),
            ("https://host/w.safetensors", "https://"),
            ("pvc://claim/w.safetensors", "pvc://"),
        ] {
            let e = local_path(u).unwrap_err();
            assert!(e.contains(scheme) && e.contains("not supported"), "{e}");
        }
        assert!(local_path("file://").is_err());
        assert!(local_path("").is_err());
    }

    #[test]
    fn safetensors_name_their_architecture() {
        let dir = std::env::temp_dir().join(format!("eali-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let g = tiny();
        let w = Weights::seeded(&g, 7);
        let json = serde_json::to_string(&g).unwrap();

        let with_graph = dir.join("tiny.safetensors");
        let meta = HashMap::from([(META_GRAPH.to_string(), json.clone())]);
        std::fs::write(&with_graph, w.to_safetensors_with(&g, meta).unwrap()).unwrap();
        let s = resolve(&uri(&with_graph)).unwrap();
        assert_eq!(s.zoo, None);
        assert_eq!(s.graph, g);
        assert_eq!(s.weights, Some(w.clone()));

        // No metadata: refused with the keys to add.
        let bare = dir.join("bare.safetensors");
        std::fs::write(&bare, w.to_safetensors(&g).unwrap()).unwrap();
        let e = resolve(&uri(&bare)).unwrap_err();
        assert!(e.contains(META_MODEL) && e.contains(META_GRAPH), "{e}");

        // A zoo name whose layers the file does not hold: the missing tensor is named.
        let wrong = dir.join("wrong.safetensors");
        let meta = HashMap::from([(META_MODEL.to_string(), "resnet18".to_string())]);
        std::fs::write(&wrong, w.to_safetensors_with(&g, meta).unwrap()).unwrap();
        assert!(
            resolve(&uri(&wrong))
                .unwrap_err()
                .contains("missing tensor")
        );

        // A graph JSON without an extension is recognised by its content.
        let graph = dir.join("graph");
        std::fs::write(&graph, &json).unwrap();
        let s = resolve(&uri(&graph)).unwrap();
        assert!(s.weights.is_none() && s.zoo.is_none());

        let mut onnx = uri(&graph);
        onnx.format = Some(ModelFormat::Onnx);
        assert!(resolve(&onnx).unwrap_err().contains("ONNX"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
