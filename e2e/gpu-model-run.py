#!/usr/bin/env python3
"""Read-only real-GPU measurement of CNN inference, to set beside the simulated GPU.

For each zoo model and batch size it runs torchvision's model (random weights: energy and time do
not depend on the values) in FP32 with TF32 off (the simulator models FP32 CUDA-core work) at the
GPU's own clock behaviour, and reads time per batch (CUDA events), energy per batch (NVML's total
energy counter, mJ) and the SM clock. Then, for ResNet-50 at one batch size, every leaf layer is run
alone in a loop long enough for the 10 ms-step counter to resolve its power: the per-layer power
that EALI's power model predicts.

It changes nothing on the GPU (no clocks, power limits, persistence or compute modes).

    python3 e2e/gpu-model-run.py --out model-run.json
"""

import argparse
import json
import sys
import time

import pynvml
import torch
import torchvision

MODELS = {
    "resnet50": lambda: torchvision.models.resnet50(weights=None),
    "vgg16": lambda: torchvision.models.vgg16(weights=None),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(weights=None),
    "alexnet": lambda: torchvision.models.alexnet(weights=None),
}


class Gpu:
    def __init__(self, index):
        pynvml.nvmlInit()
        self.h = pynvml.nvmlDeviceGetHandleByIndex(index)

    def energy_mj(self):
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(self.h)

    def sm_mhz(self):
        return pynvml.nvmlDeviceGetClockInfo(self.h, pynvml.NVML_CLOCK_SM)

    def power_w(self):
        return pynvml.nvmlDeviceGetPowerUsage(self.h) / 1000.0

    def info(self):
        name = pynvml.nvmlDeviceGetName(self.h)
        if isinstance(name, bytes):
            name = name.decode()
        return {
            "name": name,
            "driver": pynvml.nvmlSystemGetDriverVersion(),
            "power_limit_w": pynvml.nvmlDeviceGetPowerManagementLimit(self.h) / 1000.0,
            "max_sm_mhz": pynvml.nvmlDeviceGetMaxClockInfo(self.h, pynvml.NVML_CLOCK_SM),
            "mem_mhz": pynvml.nvmlDeviceGetClockInfo(self.h, pynvml.NVML_CLOCK_MEM),
        }


def timed_loop(gpu, fn, min_secs):
    """Runs fn repeatedly for at least min_secs; returns seconds per call, joules per call, the
    mean SM clock sampled between calls and the number of calls."""
    torch.cuda.synchronize()
    e0 = gpu.energy_mj()
    t0 = time.perf_counter()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    n = 0
    clocks = []
    while True:
        fn()
        n += 1
        if n % 4 == 0:
            clocks.append(gpu.sm_mhz())
            if time.perf_counter() - t0 >= min_secs:
                break
    end.record()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    e1 = gpu.energy_mj()
    gpu_s = start.elapsed_time(end) / 1000.0
    return {
        "calls": n,
        "s_per_call": gpu_s / n,
        "wall_s": wall,
        "j_per_call": (e1 - e0) / 1000.0 / n,
        "mean_power_w": (e1 - e0) / 1000.0 / wall,
        "sm_mhz_mean": sum(clocks) / max(len(clocks), 1),
        "sm_mhz_min": min(clocks) if clocks else None,
        "sm_mhz_max": max(clocks) if clocks else None,
    }


def idle_power(gpu, secs):
    e0 = gpu.energy_mj()
    t0 = time.perf_counter()
    time.sleep(secs)
    e1 = gpu.energy_mj()
    return (e1 - e0) / 1000.0 / (time.perf_counter() - t0)


def layer_sweep(gpu, model, batch, min_secs):
    """Each leaf module run alone on the input it sees inside the model."""
    inputs = {}
    hooks = []

    def keep_input(name):
        # A forward hook that returns a value replaces the module's output: return None.
        def hook(mod, inp, _out):
            if name not in inputs:
                inputs[name] = (mod, inp[0].detach().clone())

        return hook

    for name, m in model.named_modules():
        if len(list(m.children())) == 0:
            hooks.append(m.register_forward_hook(keep_input(name)))
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    rows = []
    for name, (mod, inp) in inputs.items():
        with torch.no_grad():
            for _ in range(3):
                mod(inp)
            r = timed_loop(gpu, lambda: mod(inp), min_secs)
        r.update(
            {
                "layer": name,
                "kind": type(mod).__name__,
                "input_shape": list(inp.shape),
            }
        )
        rows.append(r)
        print(
            f"  {name:28s} {type(mod).__name__:18s} {r['s_per_call']*1e6:9.1f} us "
            f"{r['mean_power_w']:7.1f} W  {r['sm_mhz_mean']:6.0f} MHz",
            flush=True,
        )
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--models", default="resnet50,vgg16,mobilenet_v2,alexnet")
    ap.add_argument("--secs", type=float, default=1.5)
    ap.add_argument("--layer-batch", type=int, default=32)
    ap.add_argument("--layer-secs", type=float, default=0.25)
    args = ap.parse_args()

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True

    gpu = Gpu(0)
    report = {"gpu": gpu.info(), "torch": torch.__version__, "precision": "fp32 (tf32 off)"}
    report["idle_power_w"] = idle_power(gpu, 2.0)
    report["idle_sm_mhz"] = gpu.sm_mhz()
    print(f"GPU {report['gpu']}  idle {report['idle_power_w']:.1f} W at {report['idle_sm_mhz']} MHz", flush=True)

    runs = []
    print(f"{'model':14s} {'batch':>5s} {'ms/batch':>9s} {'mJ/img':>8s} {'W':>7s} {'MHz':>6s}", flush=True)
    for mname in args.models.split(","):
        model = MODELS[mname]().cuda().eval()
        for b in [int(s) for s in args.batches.split(",")]:
            x = torch.randn(b, 3, 224, 224, device="cuda")
            with torch.no_grad():
                for _ in range(5):
                    model(x)
                r = timed_loop(gpu, lambda: model(x), args.secs)
            r.update({"model": mname, "batch": b})
            r["mj_per_image"] = r["j_per_call"] * 1000.0 / b
            runs.append(r)
            print(
                f"{mname:14s} {b:5d} {r['s_per_call']*1e3:9.3f} {r['mj_per_image']:8.2f} "
                f"{r['mean_power_w']:7.1f} {r['sm_mhz_mean']:6.0f}",
                flush=True,
            )
        if mname == "resnet50":
            print(f"per-layer sweep: resnet50 batch {args.layer_batch}", flush=True)
            report["layers"] = layer_sweep(gpu, model, args.layer_batch, args.layer_secs)
        del model
        torch.cuda.empty_cache()
    report["runs"] = runs
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
