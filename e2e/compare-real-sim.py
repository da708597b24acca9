#!/usr/bin/env python3
"""Sets a real-GPU run of e2e/gpu-model-run.py beside the simulated GPU's prediction for the same
models, batch sizes and clock (`eali profile --gpu sim:<profile>`): whole-model time and energy
per image, and per-layer time and power for the layer sweep. Nothing is fitted here; the point
is to see how far the instrument is from a real GPU.

    python3 e2e/compare-real-sim.py e2e/results/h100-2026-11-26/model-run.json --profile h100
"""
import argparse
import json
import os
import statistics as st
import subprocess
import tempfile

ap = argparse.ArgumentParser()
ap.add_argument("run")
ap.add_argument("--profile", default="h100")
ap.add_argument("--eali", default="target/release/eali")
args = ap.parse_args()
real = json.load(open(args.run))
clock = str(real["runs"][0]["sm_mhz_max"]) if real["runs"] else "max"
models = sorted({r["model"] for r in real["runs"]})
batches = sorted({r["batch"] for r in real["runs"]} | {real.get("layers") and 32 or 1})
tmp = tempfile.mkdtemp()
sim = {}
for m in models:
    out = os.path.join(tmp, m + ".json")
    subprocess.run([args.eali, "profile", "--gpu", "sim:" + args.profile, "--model", m,
                    "--batches", ",".join(map(str, batches)), "--clocks", clock, "--quiet",
                    "--out", out], check=True, stdout=subprocess.DEVNULL)
    sim[m] = json.load(open(out))

print(f"{real['gpu']['name']} (driver {real['gpu']['driver']}), {real['precision']}, real SM clock "
      f"{clock} MHz; simulated profile '{args.profile}' at the same clock")
print(f"{'model':13s} {'batch':>5s} | {'ms real':>8s} {'sim':>7s} {'sim/real':>8s} | "
      f"{'mJ/img real':>11s} {'sim':>7s} {'sim/real':>8s} | {'W real':>6s} {'sim':>5s}")
for r in real["runs"]:
    recs = [x for x in sim[r["model"]]["records"] if x["batch"] == r["batch"]]
    t = sum(x["time_s"] for x in recs)
    e = sum(x["energy_j"] for x in recs)
    mj = e / r["batch"] * 1e3
    print(f"{r['model']:13s} {r['batch']:5d} | {r['s_per_call']*1e3:8.2f} {t*1e3:7.2f} "
          f"{t/r['s_per_call']:8.2f} | {r['mj_per_image']:11.1f} {mj:7.1f} "
          f"{mj/r['mj_per_image']:8.2f} | {r['mean_power_w']:6.0f} {e/t:5.0f}")

if real.get("layers"):
    b = real["layers"][0]["input_shape"][0]
    s = {x["name"]: x for x in sim["resnet50"]["records"] if x["batch"] == b}
    print(f"\nresnet50 layers run alone, batch {b}: sim/real per kind (median [min, max])")
    kinds = {}
    for l in real["layers"]:
        x = s.get(l["layer"])
        if x is None:
            continue
        kinds.setdefault(l["kind"], []).append((x["time_s"] / l["s_per_call"],
                                                x["power_w"] / l["mean_power_w"]))
    for k, v in sorted(kinds.items()):
        tr = [a for a, _ in v]
        pr = [p for _, p in v]
        print(f"  {k:18s} n={len(v):3d}  time {st.median(tr):5.2f} [{min(tr):4.2f}, {max(tr):5.2f}]"
              f"  power {st.median(pr):5.2f} [{min(pr):4.2f}, {max(pr):4.2f}]")
