//! The layering rules of `docs/architecture.md`, checked on the sources: the serving path never
//! imports the simulator, the model IR imports nothing above it, and the pure cores import no
//! runtime, network, Kubernetes, hardware, clock or file API. Test code counts too: checks against
//! the simulator's ground truth live in `sim/`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("cannot read {}", dir.display());
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A file's code, tests included.
fn source(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `(file:line, pattern)` for every line of the layer's code that names a forbidden path.
fn violations(layer: &str, forbidden: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(layer);
    let mut files = Vec::new();
    if root.is_dir() {
        rust_files(&root, &mut files);
    } else {
        let file = root.with_extension("rs");
        assert!(file.is_file(), "no layer {layer} at {}", file.display());
        files.push(file);
    }
    let mut out = Vec::new();
    for f in files {
        let Some(code) = source(&f) else {
            continue;
        };
        for (i, line) in code.lines().enumerate() {
            let l = line.trim_start();
            if l.starts_with("//") {
                continue;
            }
            for pat in forbidden {
                if l.contains(pat) {
                    out.push(format!("{}:{}: {pat}: {l}", f.display(), i + 1));
                }
            }
        }
    }
    out
}

const SIM: [&str; 3] = ["crate::sim", "eali::sim", "super::super::sim"];

#[test]
fn the_serving_path_never_imports_the_simulator() {
    let mut all = Vec::new();
    for layer in ["serve", "exec", "control", "telemetry", "policy"] {
        all.extend(violations(layer, &SIM));
    }
    assert!(
        all.is_empty(),
        "imports of the simulator:\n{}",
        all.join("\n")
    );
}

#[test]
fn the_model_ir_imports_nothing_above_it() {
    let above = [
        "crate::gpu",
        "crate::exec",
        "crate::serve",
        "crate::sim",
        "crate::eali",
        "crate::perf",
        "crate::policy",
        "crate::k8s",
        "crate::telemetry",
    ];
    let v = violations("model", &above);
    assert!(v.is_empty(), "model/ imports:\n{}", v.join("\n"));
}

#[test]
fn the_pure_cores_use_no_runtime_network_kubernetes_clock_or_file_api() {
    let impure = [
        "tokio",
        "kube",
        "tonic",
        "hyper",
        "nvml",
        "std::fs",
        "Instant::now",
        "SystemTime",
        "crate::serve",
        "crate::sim",
        "crate::k8s",
        "crate::agent",
    ];
    let mut all = Vec::new();
    for layer in ["policy", "eali", "stats"] {
        all.extend(violations(layer, &impure));
    }
    assert!(
        all.is_empty(),
        "impure code in a pure core:\n{}",
        all.join("\n")
    );
}

#[test]
fn the_serving_worker_drives_a_device_seam_not_a_simulated_gpu() {
    // The worker talks to `serve::device::ServingDevice`; which GPU is behind it (simulated,
    // local NVML, the node agent's) is chosen in `serve/runtime.rs`.
    let named = [
        "SimDevice",
        "SimGpu",
        "SimServing",
        "NvmlServing",
        "AgentServing",
        "RemoteClock",
        "crate::gpu::nvml",
    ];
    let v = violations("serve/worker.rs", &named);
    // The worker's own tests build the simulated GPU it runs on, as the runtime does.
    let mut worker = violations("serve/worker", &named);
    worker.retain(|l| !l.contains("serve/worker/tests.rs:"));
    assert!(
        v.is_empty() && worker.is_empty(),
        "the worker names a device:\n{}\n{}",
        v.join("\n"),
        worker.join("\n")
    );
}
