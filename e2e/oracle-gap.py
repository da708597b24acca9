#!/usr/bin/env python3
"""Where EALI's energy gap to the offline oracle lies, from `eali bench --json` records: the gap
(EALI's energy per request over the oracle's, less 1) by GPU, model, workload, load and SLO,
over the cases where max clocks and the oracle both meet the SLO (as `eali bench`'s summary), and
the cases with the widest gaps with what EALI and the oracle did differently (mean batch size,
p99, set-calls).

    eali bench --suite full --json full.json
    python3 e2e/oracle-gap.py full.json
"""
import json
import statistics as st
import sys
from collections import defaultdict

recs = json.load(open(sys.argv[1]))
cases = defaultdict(dict)
for r in recs:
    cases[(r["model"], r["gpu"], r["workload"], r["load"], r["slo_ms"])][r["policy"]] = r

rows = []
for key, pol in cases.items():
    e, o, a = pol.get("eali"), pol.get("oracle"), pol.get("max-clock")
    if not (e and o and a) or a["slo_attainment"] < 0.99 or o["slo_attainment"] < 0.99:
        continue
    rows.append((key, 100.0 * (e["energy_per_request_j"] / o["energy_per_request_j"] - 1.0), e, o))

print(f"gap to the oracle over {len(rows)} cases: mean {st.mean(r[1] for r in rows):+.1f} %, "
      f"median {st.median(r[1] for r in rows):+.1f} %, worst {max(r[1] for r in rows):+.1f} %")
for name, idx in [("gpu", 1), ("model", 0), ("workload", 2), ("load", 3), ("slo ms", 4)]:
    groups = defaultdict(list)
    for key, gap, _, _ in rows:
        groups[key[idx]].append(gap)
    line = ", ".join(f"{k if not isinstance(k, float) or k > 1 else f'{k:.0%}'} {st.mean(v):+.1f} % "
                     f"(n={len(v)})" for k, v in sorted(groups.items()))
    print(f"  by {name:8s} {line}")
print("\nwidest gaps: eali vs oracle mean batch, p99 ms, set-calls")
for key, gap, e, o in sorted(rows, key=lambda r: -r[1])[:12]:
    m, g, w, l, s = key
    print(f"  {gap:+6.1f} %  {m:12s} {g:10s} {w:8s} {l:.0%} {s:.0f} ms   batch {e['mean_batch']:5.1f} vs "
          f"{o['mean_batch']:5.1f}   p99 {e['p99_ms']:6.1f} vs {o['p99_ms']:6.1f}   "
          f"sw {e['switches']} vs {o['switches']}")
