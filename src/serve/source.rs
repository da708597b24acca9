//! Where a served model comes from: `model.zoo`, a built-in architecture, or `model.uri`, a file
//! holding one of
//!
//! - an ONNX model (format `onnx`, or a `.onnx` file), imported by [`crate::model::onnx`] with
//!   its external data files read from beside it;
//! - safetensors weights (PyTorch `state_dict` names, see [`crate::exec::weights`]) whose header
//!   metadata names the architecture: `eali.model` = a zoo name (e.g. a trained ResNet-50
//!   converted with `safetensors.torch.save_file(sd, path, metadata={"eali.model": "resnet50"})`)
//!   or `eali.graph` = the EALI graph IR as JSON (a custom network); or
//! - the EALI graph IR as JSON (format `ealiJson`), without weights.
//!
//! The kind is `model.format` when set, else the file extension (`.onnx`, `.safetensors`,
//! `.json`), else the file's first byte (a JSON document starts with `{`).
//!
//! The uri is `file://PATH` or a plain path; `pvc://CLAIM/PATH`, the file at `PATH` on a
//! PersistentVolumeClaim, which the controller mounts read-only at [`PVC_MOUNT_ROOT`]`/CLAIM` in
//! the serving pods; or `https://` (and `http://`), which [`super::fetch`] downloads at start-up
//! into a local cache and this module then reads from there. `s3://` and `gs://` are refused
//! with what to use instead.

use std::path::{Component, Path, PathBuf};

use safetensors::SafeTensors;

use crate::exec::Weights;
use crate::k8s::crd::{ModelFormat, ModelRef};
use crate::model::onnx::{self, TensorIo};
use crate::model::{Graph, zoo};

/// Safetensors metadata key naming a zoo architecture.
pub const META_MODEL: &str = "eali.model";
/// Safetensors metadata key holding an EALI graph IR (JSON).
pub const META_GRAPH: &str = "eali.graph";
pub use crate::k8s::objects::PVC_MOUNT_ROOT;

/// A resolved model reference.
#[derive(Debug, Clone)]
pub struct Source {
    /// The zoo name, when the architecture is a zoo model.
    pub zoo: Option<String>,
    pub graph: Graph,
    /// Weights read from `model.uri` (checked against the graph).
    pub weights: Option<Weights>,
    /// The input and output tensors as the model file names them (ONNX); `None`: EALI's.
    pub io: Option<TensorIo>,
}

/// Where local copies of `model.uri` are found.
#[derive(Debug, Clone, PartialEq)]
pub struct Locations {
    /// Root under which `pvc://CLAIM/PATH` is `CLAIM/PATH`.
    pub pvc_root: PathBuf,
}

impl Default for Locations {
    fn default() -> Self {
        Self {
            pvc_root: PathBuf::from(PVC_MOUNT_ROOT),
        }
    }
}

/// Resolves `m` (see the module docs). Errors are user-facing sentences.
pub fn resolve(m: &ModelRef, at: &Locations) -> Result<Source, String> {
    if let Some(z) = &m.zoo {
        let graph = zoo::build(z).map_err(|e| e.to_string())?;
        return Ok(Source {
            zoo: Some(z.clone()),
            graph,
            weights: None,
            io: None,
        });
    }
    let uri = m
        .uri
        .as_deref()
        .ok_or("the model names neither model.zoo nor model.uri")?;
    let path = local_path(uri, at)?;
    if is_onnx(m.format, &path) {
        return load_onnx(&path).map_err(|e| format!("{}: {e}", path.display()));
    }
    let bytes = std::fs::read(&path).map_err(|e| read_error(uri, &path, &e))?;
    if is_graph_json(m.format, &path, &bytes) {
        let graph = parse_graph(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(Source {
            zoo: None,
            graph,
            weights: None,
            io: None,
        });
    }
    from_safetensors(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_error(uri: &str, path: &Path, e: &std::io::Error) -> String {
    let hint = if uri.starts_with("pvc://") {
        " (a pvc:// model is read from the claim the controller mounts in the serving pod;          outside a pod, mount or copy it there, or use file://)"
    } else {
        ""
    };
    format!("cannot read {}: {e}{hint}", path.display())
}

/// The local file a uri names: `file://PATH` or a plain path, `pvc://CLAIM/PATH` under the claim
/// mounts; remote schemes are refused (https:// is downloaded by [`super::fetch`] first).
pub fn local_path(uri: &str, at: &Locations) -> Result<PathBuf, String> {
    match uri.split_once("://") {
        Some(("file", rest)) if !rest.is_empty() => Ok(PathBuf::from(rest)),
        Some(("file", _)) => Err(format!("model.uri {uri}: names no file")),
        Some(("pvc", rest)) => {
            let (claim, path) = pvc_parts(uri, rest)?;
            Ok(at.pvc_root.join(claim).join(path))
        }
        Some(("s3" | "gs", _)) => Err(format!(
            "model.uri {uri}: object storage is not read directly; serve the file from a              PersistentVolumeClaim (pvc://CLAIM/PATH, e.g. a bucket mounted by a CSI driver) or              give a pre-signed https:// URL with model.sha256"
        )),
        Some((scheme @ ("https" | "http"), _)) => Err(format!(
            "model.uri {uri}: {scheme}:// models are downloaded when eali serve starts; this              path reads local files only"
        )),
        Some((scheme, _)) => Err(format!(
            "model.uri {uri}: the {scheme}:// scheme is not supported (file://, pvc://, https://)"
        )),
        None if uri.is_empty() => Err("model.uri is empty".into()),
        None => Ok(PathBuf::from(uri)),
    }
}

/// `CLAIM` and the relative `PATH` of `pvc://CLAIM/PATH` (`rest` is what follows `pvc://`).
pub fn pvc_parts<'a>(uri: &str, rest: &'a str) -> Result<(&'a str, &'a Path), String> {
    let bad = |why: &str| format!("model.uri {uri}: {why} (expected pvc://CLAIM/PATH)");
    let (claim, path) = rest.split_once('/').ok_or_else(|| bad("names no file"))?;
    let dns_label = !claim.is_empty()
        && claim.len() <= 253
        && claim
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !dns_label {
        return Err(bad("the claim is not a valid PersistentVolumeClaim name"));
    }
    let path = Path::new(path);
    let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
    if path.as_os_str().is_empty() || !plain {
        return Err(bad("the path must be relative, without `..`"));
    }
    Ok((claim, path))
}

fn is_onnx(format: Option<ModelFormat>, path: &Path) -> bool {
    format == Some(ModelFormat::Onnx)
        || (format.is_none() && path.extension().and_then(|e| e.to_str()) == Some("onnx"))
}

/// Imports the ONNX model at `path`; its external data files are read from its directory (only
/// below it: a location with `..` or an absolute path is refused).
pub fn load_onnx(path: &Path) -> Result<Source, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read the model: {e}"))?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .to_string();
    let mut read = |location: &str| -> Result<Vec<u8>, String> {
        let rel = Path::new(location);
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err("the location must be a relative path below the model's directory".into());
        }
        let file = dir.join(rel);
        std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))
    };
    let m = onnx::import(&bytes, &name, &mut read).map_err(|e| e.to_string())?;
    let weights = Weights { layers: m.weights };
    weights.check(&m.graph).map_err(|e| e.to_string())?;
    Ok(Source {
        zoo: None,
        graph: m.graph,
        weights: Some(weights),
        io: Some(m.io),
    })
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

/// The model-file decoders, graph JSON and safetensors, on arbitrary bytes: the entry point of
/// the fuzz target `model_files` (`fuzz/`) and of its stand-in `tests/decoders_fuzz.rs`. Each
/// refuses what it cannot read; none may panic.
pub fn fuzz_model_file(data: &[u8]) {
    let _ = parse_graph(data);
    let _ = from_safetensors(data);
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
        io: None,
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
            sha256: None,
        }
    }

    #[test]
    fn local_files_and_claims_are_read_remote_storage_is_refused() {
        let at = Locations::default();
        let local = |u: &str| local_path(u, &at);
        assert_eq!(
            local("file:///m/w.safetensors"),
            Ok(PathBuf::from("/m/w.safetensors"))
        );
        assert_eq!(local("w.safetensors"), Ok(PathBuf::from("w.safetensors")));
        assert_eq!(
            local("pvc://models/vision/m.onnx"),
            Ok(Path::new(PVC_MOUNT_ROOT).join("models/vision/m.onnx"))
        );
        for bad in [
            "pvc://models",
            "pvc://models/../etc/passwd",
            "pvc://Bad_Claim/m.onnx",
            "pvc://m//abs",
        ] {
            let e = local(bad).unwrap_err();
            assert!(e.contains("pvc://CLAIM/PATH"), "{bad}: {e}");
        }
        for (u, says) in [
            ("s3://bucket/w.onnx", "pvc://CLAIM/PATH"),
            ("gs://bucket/w.onnx", "https://"),
            ("https://host/w.onnx", "downloaded when eali serve starts"),
            ("ftp://host/w.onnx", "not supported"),
        ] {
            let e = local(u).unwrap_err();
            assert!(e.contains(says), "{u}: {e}");
        }
        assert!(local("file://").is_err());
        assert!(local("").is_err());
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
        let s = resolve(&uri(&with_graph), &Locations::default()).unwrap();
        assert_eq!(s.zoo, None);
        assert_eq!(s.graph, g);
        assert_eq!(s.weights, Some(w.clone()));

        // No metadata: refused with the keys to add.
        let bare = dir.join("bare.safetensors");
        std::fs::write(&bare, w.to_safetensors(&g).unwrap()).unwrap();
        let e = resolve(&uri(&bare), &Locations::default()).unwrap_err();
        assert!(e.contains(META_MODEL) && e.contains(META_GRAPH), "{e}");

        // A zoo name whose layers the file does not hold: the missing tensor is named.
        let wrong = dir.join("wrong.safetensors");
        let meta = HashMap::from([(META_MODEL.to_string(), "resnet18".to_string())]);
        std::fs::write(&wrong, w.to_safetensors_with(&g, meta).unwrap()).unwrap();
        assert!(
            resolve(&uri(&wrong), &Locations::default())
                .unwrap_err()
                .contains("missing tensor")
        );

        // A graph JSON without an extension is recognised by its content.
        let graph = dir.join("graph");
        std::fs::write(&graph, &json).unwrap();
        let s = resolve(&uri(&graph), &Locations::default()).unwrap();
        assert!(s.weights.is_none() && s.zoo.is_none());

        // Told it is ONNX, the JSON is refused by the importer.
        let mut onnx = uri(&graph);
        onnx.format = Some(ModelFormat::Onnx);
        let e = resolve(&onnx, &Locations::default()).unwrap_err();
        assert!(e.contains("ONNX"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
