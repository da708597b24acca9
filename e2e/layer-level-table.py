#!/usr/bin/env python3
"""Where a clock per unit pays, per GPU profile: the switch latency the planner uses, the units it
keeps per model, and a clock per unit against one per batch, planned (`eali plan`, same costs,
rate and SLO) and simulated (`eali bench` JSON records: EALI against per-batch DVFS, same run).

    eali bench --suite full --gpu b200 --json b200.json
    python3 e2e/layer-level-table.py b200.json [more.json ...] > table.md

Planned figures: every Poisson case of the records (each model, load and SLO at its rate) where
both plans are feasible. Simulated figures: every case where max clocks meet the SLO, as in
`eali bench`'s summary. Units: the range over those rates (the planner merges by unit time at
the chosen batch).
"""
import argparse
import json
import statistics as st
import subprocess
from collections import defaultdict

ap = argparse.ArgumentParser()
ap.add_argument("records", nargs="+")
ap.add_argument("--eali", default="target/release/eali")
args = ap.parse_args()

recs = []
for path in args.records:
    recs.extend(json.load(open(path)))

# (gpu, model, workload, load, slo) -> {policy: record}
cases = defaultdict(dict)
for r in recs:
    cases[(r["gpu"], r["model"], r["workload"], r["load"], r["slo_ms"])][r["policy"]] = r


def gain(eali_j, batch_j):
    """Energy per request of a clock per unit relative to one per batch (%, negative = less)."""
    return 100.0 * (eali_j / batch_j - 1.0)


rows = defaultdict(lambda: {"units": {}, "planned": [], "simulated": [], "switch_ms": None})
for (gpu, model, workload, load, slo), pol in sorted(cases.items()):
    if "eali" not in pol or "per-batch-dvfs" not in pol:
        continue
    row = rows[gpu]
    # As `eali bench`'s summary: the cases where max clocks meet the SLO.
    if pol.get("max-clock", {}).get("slo_attainment", 0.0) >= 0.99:
        row["simulated"].append(gain(pol["eali"]["energy_per_request_j"],
                                     pol["per-batch-dvfs"]["energy_per_request_j"]))
    if workload != "poisson":
        continue
    out = subprocess.run(
        [args.eali, "plan", "--model", model, "--gpu", "sim:" + gpu, "--slo-ms", str(slo),
         "--rate", str(pol["eali"]["rate"]), "--json"],
        check=True, capture_output=True, text=True).stdout
    plan = json.loads(out)
    row["switch_ms"] = plan["switch"]["total_median_s"] * 1e3
    row["units"].setdefault(model, set()).add(len(plan["units"]["units"]))
    e, b = plan["eali"], plan["per_batch_dvfs"]
    if e["feasible"] and b["feasible"]:
        row["planned"].append(gain(e["energy_per_request_j"], b["energy_per_request_j"]))


def fmt(v):
    return f"{v:+.1f} %"


print("| GPU profile | switch p50 | units kept per model | planned: unit vs batch, mean / best "
      "| simulated: mean / best / worst | cases |")
print("|---|---|---|---|---|---|")
for gpu, row in rows.items():
    units = ", ".join(f"{m} {min(n)}" + (f"–{max(n)}" if max(n) > min(n) else "")
                      for m, n in sorted(row["units"].items()))
    p, s = row["planned"], row["simulated"]
    sw = row["switch_ms"]
    sw_s = f"{sw * 1e3:.0f} µs" if sw is not None and sw < 1 else f"{sw:.1f} ms"
    print(f"| {gpu} | {sw_s} | {units} | {fmt(st.mean(p))} / {fmt(min(p))} "
          f"| {fmt(st.mean(s))} / {fmt(min(s))} / {fmt(max(s))} | {len(s)} |")
