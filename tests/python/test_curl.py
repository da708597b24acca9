"""curl against `eali serve`: the protocol by hand, the bad-input cases, metrics, and SIGTERM."""

import json
import subprocess

import numpy as np

from conftest import Server


def curl(*args):
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", *args], capture_output=True, check=True)
    body, _, code = out.stdout.rpartition(b"\n")
    return int(code), body


def infer_json(shape, datatype="FP32", fill=0.5):
    n = int(np.prod(shape))
    return json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": [fill] * n}]})


def test_curl_protocol_and_bad_input(simulated, tmp_path):
    base = f"http://{simulated.rest_url}"
    code, body = curl(f"{base}/v2/health/live")
    assert code == 200
    code, body = curl(f"{base}/v2/models/resnet50")
    assert code == 200 and json.loads(body)["platform"] == "eali"

    good = tmp_path / "good.json"
    good.write_text(infer_json([1, 3, 224, 224]))
    code, body = curl("-X", "POST", "-H", "Content-Type: application/json", "--data-binary", f"@{good}",
                      f"{base}/v2/models/resnet50/infer")
    assert code == 200 and json.loads(body)["parameters"]["simulated"] is True

    cases = [
        ("{not json", 400, "malformed"),
        (infer_json([1, 3, 224, 224], "INT64", 1), 400, "must be FP32"),
        (infer_json([1, 3, 32, 32]), 400, "expected [N, 3, 224, 224]"),
    ]
    for i, (payload, want, why) in enumerate(cases):
        f = tmp_path / f"bad{i}.json"
        f.write_text(payload)
        code, body = curl("-X", "POST", "--data-binary", f"@{f}", f"{base}/v2/models/resnet50/infer")
        assert code == want, body
        assert why in json.loads(body)["error"]
    code, body = curl("-X", "POST", "--data-binary", f"@{good}", f"{base}/v2/models/nope/infer")
    assert code == 404 and "unknown model" in json.loads(body)["error"]

    code, body = curl(f"{base}/metrics")
    text = body.decode()
    assert code == 200
    for family in ("eali_requests_total", "eali_request_duration_seconds", "eali_layer_energy_joules_total",
                   "eali_gpu_energy_joules_total", "eali_slo_violations_total"):
        assert family in text


def test_body_limit_and_sigterm_drain(tmp_path):
    s = Server("--model", "alexnet", "--slo-ms", "100", "--max-batch", "4", "--policy", "maxPerformance",
               "--max-body-mib", "1")
    try:
        big = tmp_path / "big.json"
        big.write_bytes(b" " * (2 << 20))
        code, body = curl("-X", "POST", "--data-binary", f"@{big}", f"http://{s.rest_url}/v2/models/alexnet/infer")
        assert code == 413 and "exceeds the limit" in json.loads(body)["error"]
    finally:
        assert s.stop() == 0
