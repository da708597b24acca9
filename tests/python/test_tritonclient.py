"""The real Triton client library (tritonclient, HTTP and gRPC) against `eali serve`."""

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

IMAGE = (1, 3, 224, 224)


def image(seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, IMAGE).astype(np.float32)


def test_http_health_and_metadata(simulated):
    c = httpclient.InferenceServerClient(simulated.rest_url)
    assert c.is_server_live()
    assert c.is_server_ready()
    assert c.is_model_ready("resnet50")
    meta = c.get_model_metadata("resnet50")
    assert meta["inputs"][0]["shape"] == [-1, 3, 224, 224]
    assert meta["outputs"][0]["name"] == "output"
    assert "binary_tensor_data" in c.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [True, False])
def test_http_infer_simulated(simulated, binary):
    c = httpclient.InferenceServerClient(simulated.rest_url)
    inp = httpclient.InferInput("input", list(IMAGE), "FP32")
    inp.set_data_from_numpy(image(), binary_data=binary)
    r = c.infer("resnet50", [inp], request_id="t1")
    resp = r.get_response()
    assert resp["id"] == "t1"
    assert resp["parameters"]["simulated"] is True
    # Simulated: no output is made up.
    assert r.as_numpy("output") is None


def test_grpc_infer_simulated(simulated):
    c = grpcclient.InferenceServerClient(simulated.grpc_url)
    assert c.is_server_live() and c.is_server_ready()
    assert c.get_model_metadata("resnet50").inputs[0].shape == [-1, 3, 224, 224]
    inp = grpcclient.InferInput("input", list(IMAGE), "FP32")
    inp.set_data_from_numpy(image())
    r = c.infer("resnet50", [inp])
    assert r.get_response().parameters["simulated"].bool_param
    assert r.as_numpy("output") is None


def test_errors(simulated):
    h = httpclient.InferenceServerClient(simulated.rest_url)
    bad = httpclient.InferInput("input", [1, 3, 224, 223], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 224, 223), np.float32))
    with pytest.raises(InferenceServerException, match="expected \\[N, 3, 224, 224\\]"):
        h.infer("resnet50", [bad])
    with pytest.raises(InferenceServerException, match="unknown model"):
        h.get_model_metadata("nope")
    g = grpcclient.InferenceServerClient(simulated.grpc_url)
    wrong = grpcclient.InferInput("input", list(IMAGE), "INT32")
    wrong.set_data_from_numpy(np.zeros(IMAGE, np.int32))
    with pytest.raises(InferenceServerException) as e:
        g.infer("resnet50", [wrong])
    assert "INVALID_ARGUMENT" in str(e.value.status())


def test_real_outputs_agree_over_http_and_grpc(computed):
    x = image(3)
    h = httpclient.InferenceServerClient(computed.rest_url, network_timeout=600)
    inp = httpclient.InferInput("input", list(IMAGE), "FP32")
    inp.set_data_from_numpy(x)
    out = httpclient.InferRequestedOutput("output", binary_data=True)
    a = h.infer("mobilenet_v2", [inp], outputs=[out]).as_numpy("output")
    assert a.shape == (1, 1000) and np.isfinite(a).all()
    g = grpcclient.InferenceServerClient(computed.grpc_url)
    gi = grpcclient.InferInput("input", list(IMAGE), "FP32")
    gi.set_data_from_numpy(x)
    b = g.infer("mobilenet_v2", [gi], client_timeout=600).as_numpy("output")
    np.testing.assert_array_equal(a, b)
    # Another image gives other scores.
    inp.set_data_from_numpy(image(4))
    c = h.infer("mobilenet_v2", [inp]).as_numpy("output")
    assert not np.array_equal(a, c)
