"""ONNX models (onnx_models.py) served by `eali serve --compute cpu`, checked against onnxruntime.

GOOD models: one server with every model from one multi-document config; metadata must carry the
ONNX input / output names and shapes; outputs over HTTP (batch 1 and, for a symbolic batch, 3)
and gRPC must match onnxruntime's to a max relative error of 1e-4 (a table of the errors is
printed at the end of the module and written to target/onnx-errors.txt). BAD models:
`eali models --onnx` and `eali serve --uri` must both exit non-zero naming what is wrong.

The first two test groups check the model files themselves and need no eali binary.
Needs onnx and onnxruntime besides tritonclient (e2e/run-tests.sh installs them).
"""

import collections
import functools
import os
import subprocess
import threading
import zlib

import numpy as np
import pytest

import onnx  # noqa: E402  (installed by e2e/run-tests.sh; a missing package fails the run)
import onnxruntime  # noqa: E402,F401

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

import onnx_models as om  # noqa: E402
from conftest import ROOT, Server, eali_bin, free_port  # noqa: E402

TOLERANCE = 1e-4
# Models also inferred over gRPC (one with external data, one IR-3 model, one with fixed batch).
GRPC_MODELS = ["inception", "residual-projection", "gemm-head", "alexnet-mini"]
# Operators whose node becomes one IR layer named after it, however the importer folds the rest
# (Relu / BatchNormalization / Add may fuse; Constant, Shape, Reshape, Identity... vanish).
LAYER_OPS = {"Conv", "Gemm", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "LRN",
             "Softmax"}

# (model, transport, batch) -> max relative error, for the table at the end.
ERRORS = {}


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_paths(tmp_path_factory):
    return om.write_good(tmp_path_factory.mktemp("onnx-good"))


@pytest.fixture(scope="module")
def bad_paths(tmp_path_factory):
    return om.write_bad(tmp_path_factory.mktemp("onnx-bad"))


def service_yaml(name, path):
    return (
        "apiVersion: eali.dev/v1alpha1\n"
        "kind: InferenceService\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        f"  model: {{uri: \"file://{os.path.abspath(path)}\", format: onnx}}\n"
        "  slo: {latencyMs: 60000}\n"
        "  maxBatchSize: 4\n"
        "  policy: maxPerformance\n"
    )


@pytest.fixture(scope="module")
def served(good_paths, tmp_path_factory, request):
    """One `eali serve --compute cpu` with every GOOD model."""
    config = tmp_path_factory.mktemp("onnx-config") / "onnx-services.yaml"
    config.write_text("---\n".join(service_yaml(n, p) for n, p in good_paths.items()))
    s = Server("--config", str(config), "--compute", "cpu")
    # Keep reading the server's log so a full pipe never blocks it; its tail helps on failure.
    log = collections.deque(maxlen=200)
    reader = threading.Thread(target=lambda: log.extend(line.decode(errors="replace").rstrip()
                                                        for line in s.proc.stdout), daemon=True)
    reader.start()
    yield s
    code = s.stop()
    reader.join(timeout=5)
    if request.session.testsfailed:
        report(request, f"eali serve log tail (exit {code})", list(log)[-60:])


@pytest.fixture(scope="module", autouse=True)
def error_table(request):
    """Prints eali-vs-onnxruntime errors once the module is done, into the CI log (not captured)
    and target/onnx-errors.txt."""
    yield
    if not ERRORS:
        return
    worst = collections.defaultdict(list)
    for (model, transport, batch), err in sorted(ERRORS.items()):
        worst[model].append((err, f"{transport} b{batch} {err:.2e}"))
    lines = [f"onnx {m}: max relative error {max(e for e, _ in v):.3e}  "
             f"({', '.join(s for _, s in v)})" for m, v in worst.items()]
    report(request, f"eali vs onnxruntime (tolerance {TOLERANCE:g})", lines)
    target = os.path.join(ROOT, "target")
    if os.path.isdir(target):
        with open(os.path.join(target, "onnx-errors.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")


def report(request, title, lines):
    """Writes to the terminal past pytest's output capture (as capsys.disabled() does), so the
    lines show in CI logs even with -q and passing tests."""
    plugins = request.config.pluginmanager
    tr = plugins.get_plugin("terminalreporter")
    capman = plugins.get_plugin("capturemanager")
    if tr is None or capman is None:
        print(title, *lines, sep="\n")
        return
    with capman.global_and_fixture_disabled():
        tr.write("\n")
        tr.write_sep("-", title)
        for line in lines:
            tr.write_line(line)


# --- helpers ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def model_io(path):
    """(input name, input dims with -1 for N, output name, output dims at batch 1)."""
    m = onnx.load(path, load_external_data=False)
    in_name, dims, out_name = om.io_of(m)
    out_dims = [d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
    return in_name, dims, out_name, out_dims


@functools.lru_cache(maxsize=None)
def ort_session(path):
    return om.session(path)


def reference(path, x):
    in_name, _, out_name, _ = model_io(path)
    return ort_session(path).run([out_name], {in_name: x})[0]


def batches(name):
    return [1] if om.GOOD[name].fixed_batch else [1, 3]


def input_for(name, path, batch):
    _, dims, _, _ = model_io(path)
    return om.sample([batch, *dims[1:]], seed=zlib.crc32(name.encode()) + batch)


def compare(name, transport, batch, got, ref):
    """Records eali's error against onnxruntime; returns what is wrong, or None."""
    where = f"{name} ({transport}, batch {batch})"
    if got is None:
        return f"{where}: no output in the response (are outputs computed?)"
    if got.dtype != np.float32 or got.size != ref.size:
        return f"{where}: {got.dtype} {got.shape} from eali, float32 {ref.shape} from onnxruntime"
    err = float(np.abs(got.reshape(ref.shape) - ref).max() / max(np.abs(ref).max(), 1e-12))
    ERRORS[(name, transport, batch)] = err
    print(f"onnx {name}: max relative error {err:.3e} ({transport}, batch {batch})")
    if not err <= TOLERANCE:  # also catches NaN
        return f"{where}: max relative error {err:.3e} > {TOLERANCE:g}"
    if list(got.shape) != list(ref.shape):
        return f"{where}: output shape {list(got.shape)}, ONNX's is {list(ref.shape)}"
    return None


def run_eali(*args, timeout=60):
    """(exit code, stdout + stderr) of an eali command that must finish within `timeout`."""
    try:
        p = subprocess.run([eali_bin(), *args], capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:  # run() has killed it
        out = "".join(o.decode(errors="replace") if isinstance(o, bytes) else (o or "")
                      for o in (e.stdout, e.stderr))
    pytest.fail(f"eali {' '.join(args)} still running after {timeout} s:\n{out}")


def assert_refused(code, out, spec, what):
    assert code != 0, f"{what} exited 0:\n{out}"
    missing = [s for s in spec.expect if s not in out]
    assert not missing, f"{what}: the error lacks {missing}:\n{out}"


# --- the model files themselves (no eali needed) ----------------------------------------------


@pytest.mark.parametrize("name", list(om.GOOD))
def test_good_model_is_valid_onnx(good_paths, name):
    om.check_good(good_paths[name], om.GOOD[name].fixed_batch)


@pytest.mark.parametrize("name", list(om.BAD))
def test_bad_model_is_bad_where_intended(bad_paths, name):
    om.check_bad(bad_paths[name], om.BAD[name])


# --- serving GOOD models ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(om.GOOD))
def test_metadata_has_the_onnx_names(served, good_paths, name):
    in_name, dims, out_name, _ = model_io(good_paths[name])
    c = httpclient.InferenceServerClient(served.rest_url)
    assert c.is_model_ready(name)
    meta = c.get_model_metadata(name)
    assert meta["name"] == name
    assert [i["name"] for i in meta["inputs"]] == [in_name], meta
    assert meta["inputs"][0]["datatype"] == "FP32"
    assert meta["inputs"][0]["shape"] == dims  # [-1, C, H, W], or [1, C, H, W] when fixed
    assert [o["name"] for o in meta["outputs"]] == [out_name], meta
    assert meta["outputs"][0]["datatype"] == "FP32"


@pytest.mark.parametrize("name", list(om.GOOD))
def test_metadata_output_shape_is_the_onnx_one(served, good_paths, name):
    _, dims, _, out_dims = model_io(good_paths[name])
    meta = httpclient.InferenceServerClient(served.rest_url).get_model_metadata(name)
    assert meta["outputs"][0]["shape"] == [dims[0], *out_dims[1:]]


@pytest.mark.parametrize("name", list(om.GOOD))
def test_http_infer_matches_onnxruntime(served, good_paths, name):
    path = good_paths[name]
    in_name, _, out_name, _ = model_io(path)
    c = httpclient.InferenceServerClient(served.rest_url, network_timeout=600)
    problems = []
    for batch in batches(name):
        x = input_for(name, path, batch)
        inp = httpclient.InferInput(in_name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        out = httpclient.InferRequestedOutput(out_name, binary_data=True)
        r = c.infer(name, [inp], outputs=[out])
        problems.append(compare(name, "http", batch, r.as_numpy(out_name), reference(path, x)))
    problems = [p for p in problems if p]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", GRPC_MODELS)
def test_grpc_infer_matches_onnxruntime(served, good_paths, name):
    path = good_paths[name]
    in_name, _, out_name, _ = model_io(path)
    c = grpcclient.InferenceServerClient(served.grpc_url)
    meta = c.get_model_metadata(name)
    assert meta.inputs[0].name == in_name and meta.outputs[0].name == out_name
    batch = batches(name)[-1]
    x = input_for(name, path, batch)
    inp = grpcclient.InferInput(in_name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = c.infer(name, [inp], outputs=[grpcclient.InferRequestedOutput(out_name)],
                client_timeout=600)
    problem = compare(name, "grpc", batch, r.as_numpy(out_name), reference(path, x))
    assert problem is None, problem


def refused(c, model, name, x):
    inp = httpclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as e:
        c.infer(model, [inp])
    assert e.value.status() == "400", e.value


def test_wrong_input_name_or_shape_is_refused(served, good_paths):
    name = "classifier-head"
    in_name, dims, _, _ = model_io(good_paths[name])
    c = httpclient.InferenceServerClient(served.rest_url)
    good = input_for(name, good_paths[name], 1)
    refused(c, name, "not-" + in_name, good)
    for shape in ([1, *dims[1:3], dims[3] + 1], [1, dims[1] + 1, *dims[2:]], dims[1:]):
        refused(c, name, in_name, np.zeros(shape, np.float32))


def test_fixed_batch_refuses_a_larger_batch(served, good_paths):
    name = "alexnet-mini"
    in_name, dims, _, _ = model_io(good_paths[name])
    assert dims[0] == 1
    c = httpclient.InferenceServerClient(served.rest_url)
    refused(c, name, in_name, np.zeros([2, *dims[1:]], np.float32))


@pytest.mark.parametrize("name", list(om.GOOD))
def test_models_lists_the_layers(good_paths, name, capsys):
    path = good_paths[name]
    code, out = run_eali("models", "--onnx", path)
    assert code == 0, out
    m = onnx.load(path, load_external_data=False)
    # Only nodes computing on the image become layers: a Concat of shape vectors is folded.
    computed = {i.name for i in m.graph.input}
    for n in m.graph.node:
        if n.op_type != "Shape" and any(x in computed for x in n.input):
            computed.update(n.output)
    missing = [n.name for n in m.graph.node
               if n.op_type in LAYER_OPS and n.output[0] in computed and n.name not in out]
    assert not missing, f"layers missing from `eali models --onnx`: {missing}\n{out}"
    if name == "inception":
        with capsys.disabled():
            print(f"\neali models --onnx {os.path.basename(path)}:\n{out}")


# --- BAD models -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(om.BAD))
def test_models_refuses_bad_model(bad_paths, name):
    code, out = run_eali("models", "--onnx", bad_paths[name])
    assert_refused(code, out, om.BAD[name], f"eali models --onnx {name}.onnx")


@pytest.mark.parametrize("name", list(om.BAD))
def test_serve_refuses_bad_model(bad_paths, name):
    code, out = run_eali("serve", "--uri", bad_paths[name], "--compute", "cpu",
                         "--http", f"127.0.0.1:{free_port()}",
                         "--grpc", f"127.0.0.1:{free_port()}")
    assert_refused(code, out, om.BAD[name], f"eali serve --uri {name}.onnx")
