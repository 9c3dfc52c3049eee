"""The hostile soak's summary and verdict (scripts/soak --hostile): figures per proxy, sessions
and failures by kind, which kinds ran when a proxy's memory grew, then one FAIL line per check
that did not hold. Exit status 0 when all held, 1 otherwise.

--after FILE holds one line per proxy written by soak.d/hostile.sh once the load was over:
NAME ALIVE RSS_BEFORE_KIB FDS_BEFORE FDS_AFTER RELAY_LISTENERS_LEFT SOCKETS_LEFT NFT_ELEMENTS HEALTH
("-" where not measured: the proxy was dead).
"""
import argparse
import json
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from driver import GOOD  # noqa: E402

MIB = 1024
# Samples (half a second each) below which the per-kind RSS comparison says nothing.
LIFT_SAMPLES = 120


def mib(kib):
    return f"{int(kib) / MIB:.0f} MiB"


def running_at(timeline, t):
    """The hostile kinds running at wall time t, most frequent first."""
    kinds = {}
    for kind, t0, t1 in timeline:
        if t0 <= t <= t1:
            kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])) or "none"


def load_samples(path):
    """name -> [(t, rss_kib)] in time order."""
    out = {}
    with open(path) as f:
        for line in f:
            t, name, rss, _ = line.split()
            out.setdefault(name, []).append((float(t), int(rss)))
    return out


def lift(points, timeline):
    """Per hostile kind, the proxy's mean RSS while it ran minus while it did not (KiB), most
    first: the kinds that make it grow, even when others run all the time. Kinds that ran (or
    did not) in fewer than a tenth of the samples are left out: too few to compare."""
    events = sorted([(t0, 1, k) for k, t0, _ in timeline] + [(t1, -1, k) for k, _, t1 in timeline])
    kinds = sorted({k for k, _, _ in timeline})
    running = dict.fromkeys(kinds, 0)
    on = {k: [0, 0] for k in kinds}
    off = {k: [0, 0] for k in kinds}
    i = 0
    for t, rss in points:
        while i < len(events) and events[i][0] <= t:
            running[events[i][2]] += events[i][1]
            i += 1
        for k in kinds:
            acc = on[k] if running[k] > 0 else off[k]
            acc[0] += rss
            acc[1] += 1
    enough = max(1, len(points) // 10)
    diff = {k: on[k][0] / on[k][1] - off[k][0] / off[k][1] for k in kinds if min(on[k][1], off[k][1]) >= enough}
    return sorted(diff.items(), key=lambda kv: -kv[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for a in ("--driver", "--watch", "--samples", "--after", "--backend", "--seed", "--minutes", "--concurrency", "--elapsed"):
        ap.add_argument(a, required=True)
    ap.add_argument("--load", nargs=2, type=float, required=True, metavar=("START", "END"))
    ap.add_argument("--rss-limit-mib", type=int, required=True)
    ap.add_argument("--kill-mib", type=int, required=True)
    args = ap.parse_args()
    d = json.load(open(args.driver))
    w = json.load(open(args.watch))
    limit = args.rss_limit_mib * MIB
    samples = load_samples(args.samples)
    fails = []

    print(f"soak --hostile: backend {args.backend}, seed {args.seed}, {args.minutes} min, {args.concurrency} sessions at a time; "
          f"{args.load[1] - args.load[0]:.0f} s of load, {args.elapsed} s in all")
    row = "  {:6}{:4}{:30}{:26}{:24}{:48}{}"
    print(row.format("proxy", "up", f"RSS start / max (< {args.rss_limit_mib} MiB)", "fds before / after / max", "sessions seen / ended",
                     "left: relay listeners / sockets / nft elements", "health"))
    with open(args.after) as f:
        for line in f:
            name, alive, rss_before, fds_before, fds_after, listeners, sockets, elements, health = line.split()
            p = w[name]
            print(row.format(name, alive, f"{mib(p['rss_start_kib'])} / {mib(p['rss_max_kib'])}", f"{fds_before} / {fds_after} / {p['fds_max']}",
                             f"{p['sessions_seen']} / {p['sessions_ended']}", f"{listeners} / {sockets} / {elements}", f"{health}/3"))
            if p["killed"]:
                k = p["killed"]
                fails.append(f"{name}: killed at {mib(k['rss_kib'])} RSS (past {args.kill_mib} MiB) while running: {running_at(d['timeline'], k['at'])}")
            if p["rss_max_kib"] > limit:
                points = [(t, rss) for t, rss in samples.get(name, []) if args.load[0] <= t <= args.load[1]]
                crossed = next((t for t, rss in points if rss > limit), p["rss_max_at"])
                growth = ", ".join(f"{k} {v / MIB:+.0f} MiB" for k, v in lift(points, d["timeline"])[:4] if v > 0) if len(points) >= LIFT_SAMPLES else ""
                fails.append(f"{name}: RSS reached {mib(p['rss_max_kib'])} (limit {args.rss_limit_mib} MiB), first past it "
                             f"{crossed - args.load[0]:.0f} s into the load while running: {running_at(d['timeline'], crossed)}; "
                             f"mean RSS while a kind ran minus while it did not: {growth or 'no kind stands out (or too few samples)'}")
            if alive != "yes":
                if not p["killed"]:
                    fails.append(f"{name}: exited during the run (its stderr is {name}-stderr.log with --keep)")
                continue
            if int(fds_after) > int(fds_before):
                fails.append(f"{name}: {int(fds_after) - int(fds_before)} file descriptors more than before the load ({fds_before} -> {fds_after})")
            if p["sessions_seen"] != p["sessions_ended"]:
                fails.append(f"{name}: {p['sessions_seen'] - p['sessions_ended']} sessions never ended")
            if int(listeners) or int(sockets):
                fails.append(f"{name}: {listeners} relay listeners and {sockets} connections left after the load")
            if elements not in ("0", "n/a"):
                fails.append(f"{name}: {elements} elements left in its nftables table")
            if health != "3":
                fails.append(f"{name}: serves {health} of 3 normal sessions after the load")
            if p["by_level"].get("50", 0) + p["by_level"].get("60", 0):
                fails.append(f"{name}: {p['by_level'].get('50', 0) + p['by_level'].get('60', 0)} error-level log lines, e.g. {p['errors'][:1]}")

    kinds = d["by_scenario"]
    for title, good in (("good sessions", True), ("hostile sessions", False)):
        rows = {k: v for k, v in kinds.items() if (k.split(":")[0] in GOOD) == good}
        ok = sum(v["ok"] for v in rows.values())
        failed = sum(v["unexpected"] for v in rows.values())
        print(f"  {title}: {ok + failed}, {failed} failed{'' if good else ' (the proxy misbehaved)'}  (kind: ok / failed, outcomes, max figure)")
        for k, v in rows.items():
            extra = ""
            if "outcomes" in v:
                extra += "  " + ", ".join(f"{o} x{n}" for o, n in v["outcomes"].items())
            if "max" in v:
                extra += f"  max {v['max']}"
            print(f"    {k:40} {v['ok']:6} {v['unexpected']:6}{extra}")
        if failed:
            fails.append(f"{failed} {title} failed: " + ", ".join(f"{k} x{v['unexpected']}" for k, v in rows.items() if v["unexpected"]))
    if d["interrupted"]:
        print(f"  {d['interrupted']} sessions ended after a proxy was killed, not counted: "
              + ", ".join(f"{k} x{n}" for k, n in d["interrupted_by_scenario"].items()))
    print("  figures: flood = MiB accepted from a client that never reads (16 MiB is the cap); big-multiline = MB of the 211 reply received;")
    print("           stop-reading = MiB read before the stall; many-pasv = data connections left open after the session")
    violations = [f for f in d["failures"] if f.get("violations")]
    if violations:
        print(f"  227/229 replies the proxy let through (in {len(violations)} of the sessions listed):")
        for f in violations[:5]:
            print(f"    {f['scenario']}: {f['violations'][0]}")
    for name in w:
        msgs = w[name]["messages"]
        if msgs:
            print(f"  {name} log, lines by message (notice and above; {w[name]['log_lines']} lines read, emptied {w[name]['log_truncated']} times):")
            for k, n in list(msgs.items())[:8]:
                print(f"    {n:9}  {k[:110]}")
    if d["causes"]:
        print("  failures by cause:")
        for k, n in d["causes"].items():
            print(f"    {n:6}  {k}")
    for f in d["failures"][:6]:
        print("  example:", json.dumps({k: v for k, v in f.items() if k != "t"})[:600])
    for f in fails:
        print(f"soak: FAIL: {f}")
    print("soak: PASS" if not fails else f"soak: {len(fails)} checks failed")
    raise SystemExit(1 if fails else 0)


if __name__ == "__main__":
    main()
