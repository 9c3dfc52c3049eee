"""One report from the driver's reports of several rounds (scripts/soak): counts added up."""
import json
import sys

out = None
for path in sys.argv[1:]:
    with open(path) as f:
        d = json.load(f)
    if out is None:
        out = d
        continue
    for k in ("sessions", "ok", "unexpected"):
        out[k] += d[k]
    out["elapsed_s"] = round(out["elapsed_s"] + d["elapsed_s"], 1)
    for k in ("by_scenario", "by_server"):
        for name, v in d[k].items():
            b = out[k].setdefault(name, {"ok": 0, "unexpected": 0})
            b["ok"] += v["ok"]
            b["unexpected"] += v["unexpected"]
    for name, n in d["causes"].items():
        out["causes"][name] = out["causes"].get(name, 0) + n
    out["failures"] += d["failures"]
out["by_scenario"] = dict(sorted(out["by_scenario"].items()))
out["causes"] = dict(sorted(out["causes"].items(), key=lambda kv: -kv[1]))
print(json.dumps(out))
