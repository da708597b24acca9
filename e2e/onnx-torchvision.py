#!/usr/bin/env python3
"""torchvision models exported with torch.onnx.export, served by `eali serve --compute cpu`.

Needs torch, torchvision, onnx and onnxruntime (not part of CI: torch is a large download). The
weights are torchvision's initialisation under a fixed seed (nothing is downloaded). For each
model: export with a symbolic batch, start `eali serve --uri MODEL.onnx --compute cpu`, send a
batch of seeded random images over REST, and compare the logits with PyTorch's and
onnxruntime's (max |a - b| / max |reference|).

    EALI_BIN=target/release/eali python e2e/onnx-torchvision.py [OUT_DIR]
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import onnxruntime as ort
import torch
import torchvision

MODELS = [
    ("resnet50", lambda: torchvision.models.resnet50(), 224),
    ("mobilenet_v2", lambda: torchvision.models.mobilenet_v2(), 224),
    ("inception_v3", lambda: torchvision.models.inception_v3(aux_logits=False, init_weights=True), 299),
]
BATCH = 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rel_err(a, ref):
    return float(np.max(np.abs(a - ref)) / max(float(np.max(np.abs(ref))), 1e-12))


def serve_and_infer(eali, path, name, x):
    port = free_port()
    proc = subprocess.Popen(
        [eali, "serve", "--uri", path, "--name", name, "--compute", "cpu", "--slo-ms", "60000",
         "--max-batch", str(BATCH), "--policy", "maxPerformance", "--http", f"127.0.0.1:{port}",
         "--grpc", "none"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        started = time.time()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read().decode())
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                    if json.load(r).get("ready"):
                        break
            except OSError:
                time.sleep(0.2)
            if time.time() - started > 300:
                raise RuntimeError("eali serve did not become ready")
        ready_s = time.time() - started
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{name}", timeout=10) as r:
            meta = json.load(r)
        body = json.dumps({"inputs": [{"name": meta["inputs"][0]["name"], "shape": list(x.shape),
                                       "datatype": "FP32", "data": x.ravel().tolist()}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{name}/infer", data=body,
                                     headers={"Content-Type": "application/json"})
        t0 = time.time()
        with urllib.request.urlopen(req, timeout=600) as r:
            out = json.load(r)["outputs"][0]
        infer_s = time.time() - t0
        return np.array(out["data"], np.float32).reshape(out["shape"]), meta, ready_s, infer_s
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def main():
    eali = os.environ.get("EALI_BIN", "target/release/eali")
    out_dir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="eali-tv-")
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"onnxruntime {ort.__version__}")
    print(f"{'model':<14} {'layers':>6} {'vs torch':>10} {'vs ort':>10} {'top1 =':>7} "
          f"{'ready s':>8} {'infer s':>8}")
    worst = 0.0
    for name, build, size in MODELS:
        torch.manual_seed(0)
        m = build().eval()
        x = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref = m(x).numpy()
        path = os.path.join(out_dir, f"{name}.onnx")
        torch.onnx.export(m, x[:1], path, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "N"}, "logits": {0: "N"}}, opset_version=17,
                          dynamo=False)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        ort_out = sess.run(None, {"images": x.numpy()})[0]
        got, meta, ready_s, infer_s = serve_and_infer(eali, path, name.replace("_", "-"), x.numpy())
        layers = subprocess.run([eali, "models", "--onnx", path], capture_output=True, text=True)
        n_layers = next((ln.split(",")[-1].strip().split()[0] for ln in layers.stdout.splitlines()
                         if "layers" in ln and "input" in ln), "?")
        e_torch, e_ort = rel_err(got, ref), rel_err(got, ort_out)
        top1 = np.mean(np.argmax(got, 1) == np.argmax(ref, 1))
        worst = max(worst, e_torch, e_ort)
        assert meta["inputs"][0]["name"] == "images" and meta["outputs"][0]["name"] == "logits"
        print(f"{name:<14} {n_layers:>6} {e_torch:>10.2e} {e_ort:>10.2e} {top1:>7.2f} "
              f"{ready_s:>8.2f} {infer_s:>8.2f}")
    print(f"worst relative error {worst:.2e} ({'within' if worst <= 1e-4 else 'OVER'} 1e-4)")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
