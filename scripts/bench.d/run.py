"""Orchestrator of scripts/bench: setups, rounds, proxy processes, samples, summary, JSON.

Owns everything between a lab that is up (scripts/bench brings it up and down) and the result
files; the client side of each workload is load.py, run in the lab's client namespace.
Run by scripts/bench with /usr/bin/python3 (stdlib only); see scripts/bench --help.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOAD = HERE / "load.py"
LAB = HERE.parent / "lab"
PY = "/usr/bin/python3"
PROXY_PORT = 8021
HELPER_PORTS = "21,2121,2122"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1 << 20
SETUPS = ("direct", "helper", "node-pipe", "proxy-nftables", "proxy-relay", "proxy-observed",
          "proxy-converted", "reverse-plain", "reverse-ftps")
PROXIES = ("proxy-nftables", "proxy-relay")
# --observe adds it: proxy-nftables with the metrics listener (scraped every second) and the
# xferlog on, measured in the same rounds so the cost of observing is a paired ratio.
OBSERVED = "proxy-observed"
# --converted adds it (issue 15): proxy-nftables with --server-mode passive, so its PORT transfers
# are converted (PASV toward the server) and carried by the relay plane, not the kernel path.
CONVERTED = "proxy-converted"
CONVERT = ["--server-mode", "passive"]
BACKEND = {"proxy-nftables": "nftables", "proxy-relay": "relay", OBSERVED: "nftables", CONVERTED: "nftables"}
# --ftps adds them (issue 14): a reverse-mode proxy in the gateway in front of the lab's vsftpd,
# on the default plane, that clients reach at the gateway's LAN address (no redirect); plain FTP,
# and FTPS ended by the proxy (--tls terminate, PROT P data through the TLS relay beside the plane).
REVERSE = ("reverse-plain", "reverse-ftps")
FTPS = "reverse-ftps"
# --tls terminate with the run's self-signed certificate, set in main().
TLS_TERMINATE: list[str] = []
# The floor: a bare Node.js TCP forwarder (node-pipe.mjs), what any Node-based proxy pays for
# its userspace hop on the control connection before doing any FTP work.
FLOOR = "node-pipe"
NODE_PIPE = HERE / "node-pipe.mjs"
HOPS = (FLOOR, *PROXIES, OBSERVED, CONVERTED)  # a Node.js process of ours in the gateway, behind the redirect
GATEWAY = (*HOPS, *REVERSE)  # a Node.js process of ours in the gateway
PASV_ONLY = ("direct", FLOOR)  # nothing rewrites PORT: active sessions cannot pass
NODE = shutil.which("node") or "node"  # the floor and the proxy run on the same node
# What proxy-observed is also given (metrics listener, xferlog), set in main().
OBSERVE: list[str] = []
METRICS_PORT = 9464


class Stop(Exception):
    """SIGTERM/SIGHUP/SIGINT: unwind through every finally block."""


def on_signal(signum, _frame):
    raise Stop(signal.Signals(signum).name)


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --- processes we start: every one is recorded, and ended by PID -----------------------------

STARTED: dict[int, subprocess.Popen] = {}


def popen(argv: list[str], **kw) -> subprocess.Popen:
    p = subprocess.Popen(argv, **kw)
    STARTED[p.pid] = p
    return p


def end(p: subprocess.Popen, grace: float = 15.0) -> int | None:
    """SIGTERM, wait up to grace, then SIGKILL; returns the exit status (negative: signal)."""
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    STARTED.pop(p.pid, None)
    return p.returncode


def end_all() -> None:
    for p in list(STARTED.values()):
        end(p, 5.0)


# --- the lab ---------------------------------------------------------------------------------


class Lab:
    def __init__(self, env_file: Path):
        self.env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
        self.prefix = self.env["PREFIX"]
        self.ns = {"client": self.env["NS_CLIENT"], "gw": self.env["NS_GW"], "server": self.env["NS_SERVER"]}
        self.server = self.env["SERVER4"]
        self.port = int(self.env["PORT_VSFTPD"])
        self.ns_inodes = {os.stat(f"/run/netns/{n}").st_ino for n in self.ns.values()}
        self.server_baseline = self.server_procs()  # the three FTP daemons, before any session

    def run(self, ns: str, argv: list[str], check: bool = True) -> str:
        r = subprocess.run(["ip", "netns", "exec", self.ns[ns], *argv], capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {ns}: {r.stderr.strip()}")
        return r.stdout

    def lab(self, *args: str) -> None:
        subprocess.run([str(LAB), *args], check=True, capture_output=True)

    def helper(self, on: bool) -> None:
        self.lab("helper", self.prefix, "on" if on else "off", HELPER_PORTS)

    def redirect(self, on: bool) -> None:
        self.lab("redirect", self.prefix, "on" if on else "off", str(PROXY_PORT))

    def flush_conntrack(self) -> None:
        self.run("gw", ["conntrack", "-F"], check=False)

    def tcp_ext(self, ns: str) -> dict[str, int]:
        """The namespace's TcpExt counters (ListenOverflows, ListenDrops, ...)."""
        lines = self.run(ns, ["cat", "/proc/net/netstat"]).splitlines()
        for names, values in zip(lines[::2], lines[1::2]):
            if names.startswith("TcpExt:"):
                return dict(zip(names.split()[1:], map(int, values.split()[1:])))
        return {}

    def listening(self, port: int) -> bool:
        return bool(self.run("gw", ["ss", "-Hltn", f"sport = :{port}"]).strip())

    def server_procs(self) -> int:
        r = subprocess.run(["ip", "netns", "pids", self.ns["server"]], capture_output=True, text=True)
        return len(r.stdout.split())


# --- machine-wide noise indicators -----------------------------------------------------------


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds since boot over all CPUs, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return (sum(f) - idle) / CLK_TCK, sum(f) / CLK_TCK


def stat_fields(path: str | Path) -> list[str]:
    """The fields of a /proc/.../stat file after the command name (which may hold spaces): [0] is
    the state, [11] utime, [12] stime, [13] cutime, [14] cstime, in clock ticks."""
    st = Path(path).read_text()
    return st[st.rindex(")") + 2:].split()


def foreign_cpu(lab: Lab) -> dict[int, float]:
    """CPU seconds of every process outside the lab's namespaces (other sessions' tests)."""
    me = os.getpid()
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            if os.stat(d / "ns" / "net").st_ino in lab.ns_inodes:
                continue
            f = stat_fields(d / "stat")
        except OSError:
            continue
        out[int(d.name)] = (int(f[11]) + int(f[12])) / CLK_TCK
    return out


class Noise:
    """What else the machine did during one measurement."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.busy0, self.total0 = machine_busy()
        self.foreign0 = foreign_cpu(lab)

    def done(self) -> dict:
        busy, total = machine_busy()
        f1 = foreign_cpu(self.lab)
        foreign = sum(f1[p] - self.foreign0[p] for p in f1.keys() & self.foreign0.keys())
        return {"machine_busy_frac": (busy - self.busy0) / max(1e-9, total - self.total0),
                "foreign_cpu_s": round(foreign, 3), "loadavg": Path("/proc/loadavg").read_text().split()[:3]}


# --- the proxy (or the floor): a Node.js process in the gateway, behind the redirect ---------


def hop_args(lab: Lab, setup: str, cli: str) -> list[str]:
    if setup == FLOOR:
        return [str(NODE_PIPE), str(PROXY_PORT), lab.server, str(lab.port)]
    if setup in REVERSE:
        return reverse_args(lab, setup, cli)
    return [cli, "-b", "::", "-p", str(PROXY_PORT), "--backend", BACKEND[setup], "-m", "20000", "-D", "3",
            *(OBSERVE if setup == OBSERVED else []), *(CONVERT if setup == CONVERTED else [])]


def reverse_args(lab: Lab, setup: str, cli: str) -> list[str]:
    """The --ftps setups: reverse mode on the gateway's LAN address, in front of vsftpd."""
    return [cli, "-R", lab.server, "-P", str(lab.port), "-b", lab.env["GW_LAN4"], "-p", str(PROXY_PORT),
            "--backend", "nftables", "-m", "20000", "-D", "3", *(TLS_TERMINATE if setup == FTPS else [])]


def target(lab: Lab, setup: str) -> dict:
    """Where a setup's clients connect and how: the server (through the gateway's NAT, helper or
    redirect), or for the reverse setups the proxy itself, with FTPS for reverse-ftps."""
    if setup in REVERSE:
        return {"host": lab.env["GW_LAN4"], "port": PROXY_PORT, "tls": setup == FTPS}
    return {}


class Proxy:
    def __init__(self, lab: Lab, setup: str, cli: str, logfile: Path, node_args: list[str] | None = None):
        self.lab = lab
        self.logfile = logfile
        argv = ["ip", "netns", "exec", lab.ns["gw"], NODE, *(node_args or []), *hop_args(lab, setup, cli)]
        self.argv = argv[4:]
        with open(logfile, "ab") as out:
            # Own session: a Ctrl-C on the terminal does not reach it; we stop it ourselves.
            self.p = popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                           start_new_session=True)
        self.pid = self.p.pid  # `ip netns exec` execs node: this is the proxy's own PID
        t0 = time.monotonic()
        while not lab.listening(PROXY_PORT):
            if self.p.poll() is not None:
                raise RuntimeError(f"{setup} exited {self.p.returncode}: {logfile.read_text()[-2000:]}")
            if time.monotonic() - t0 > 20:
                end(self.p, 5.0)
                raise RuntimeError(f"{setup} not listening after 20 s: {logfile.read_text()[-2000:]}")
            time.sleep(0.05)
        self.startup_s = time.monotonic() - t0

    def cpu(self) -> tuple[float, float, float, float]:
        """(user, system, waited-for children) CPU seconds of the process over all its threads, and
        the main thread's alone (user + system): the JavaScript and the event loop; the difference
        is V8's helper threads (GC, the optimizing compiler) and libuv's pool."""
        f = [int(x) for x in stat_fields(f"/proc/{self.pid}/stat")[11:15]]
        main = [int(x) for x in stat_fields(f"/proc/{self.pid}/task/{self.pid}/stat")[11:13]]
        return f[0] / CLK_TCK, f[1] / CLK_TCK, (f[2] + f[3]) / CLK_TCK, sum(main) / CLK_TCK

    def status(self) -> dict:
        kv = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                kv[k] = int(v.split()[0])
        kv["fds"] = len(os.listdir(f"/proc/{self.pid}/fd"))
        return kv

    def stop(self) -> dict:
        t0 = time.monotonic()
        code = end(self.p, 20.0)
        text = self.logfile.read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return {"exit": code, "stop_s": round(time.monotonic() - t0, 3), "log_lines": len(lines),
                "log_sample": lines[:5]}


# --- workloads -------------------------------------------------------------------------------


def drive(lab: Lab, job: dict, timeout: float = 600) -> dict:
    job = {"host": lab.server, "port": lab.port, **job}
    p = popen(["ip", "netns", "exec", lab.ns["client"], PY, "-B", str(LOAD), json.dumps(job)],
              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        end(p, 2)
        return {"failed": f"driver timed out after {timeout} s", "job": job}
    STARTED.pop(p.pid, None)
    if p.returncode != 0:
        return {"failed": f"driver exit {p.returncode}: {err.strip()[-1000:]}", "job": job}
    return json.loads(out)


def modes(setup: str) -> list[str]:
    """The data connection modes a setup is measured in: the reverse setups are compared on PASV,
    the converted one on PORT (its PASV is proxy-nftables')."""
    if setup in PASV_ONLY or setup in REVERSE:
        return ["pasv"]
    return ["port"] if setup == CONVERTED else ["pasv", "port"]


def phases(setup: str, cfg) -> list[tuple[str, dict]]:
    small = {"file": "1KiB.bin", "size": 1024}
    big = {"file": "100MiB.bin", "size": 100 * MIB}
    out = [(f"seq_{m}", {"op": "seq", "mode": m, "n": cfg.seq, **small}) for m in modes(setup)]
    out += [(f"retr_{m}", {"op": "retr", "mode": m, "count": cfg.retr, **big}) for m in modes(setup)]
    if setup in REVERSE or setup == CONVERTED:
        return out  # what issues 14 and 15 compare: session rate, throughput, CPU per 100 MiB
    out += [("list", {"op": "list", "path": "dir1000", "count": cfg.list})]
    # Last: a concurrent run leaves sessions behind (abandoned at the window's end, SYNs that
    # vsftpd's 32-deep accept queue dropped); quiesce() waits for them before the next phase.
    out += [(f"conc{c}", {"op": "conc", "concurrency": c, "seconds": cfg.conc_seconds, "ramp": cfg.conc_ramp,
                          "grace": 0.5, **small})
            for c in cfg.concurrency]
    return out


def quiesce(lab: Lab, proxy: "Proxy | None", proxy_fds: int | None, limit: float = 20.0) -> float:
    """Wait until the server namespace is back to its daemons and the proxy (or the floor) to its
    idle fds, for at most `limit` seconds: a process that keeps sockets open must not stall the run."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        busy = lab.server_procs() > lab.server_baseline
        if proxy and proxy_fds is not None:
            busy = busy or proxy.status()["fds"] > proxy_fds
        if not busy:
            break
        time.sleep(0.1)
    return round(time.monotonic() - t0, 2)


def cpu_used(before: tuple, after: tuple) -> dict:
    """The proxy's CPU between two Proxy.cpu() readings, as every measurement records it."""
    u, sy, ch, main = (b - a for a, b in zip(before, after))
    return {"proxy_cpu_s": round(u + sy + ch, 3), "proxy_cpu_main_s": round(main, 3),
            "proxy_cpu_split_s": {"user": round(u, 3), "sys": round(sy, 3), "children": round(ch, 3)}}


def configure(lab: Lab, setup: str) -> None:
    """Exactly one of: nothing, the kernel helper, the redirect to the proxy (or the floor)."""
    lab.helper(setup == "helper")
    lab.redirect(setup in HOPS)
    lab.flush_conntrack()


# Sessions a setup runs, per mode, before anything of it is measured. A Node.js process (the floor,
# the proxies) needs many: V8 keeps optimizing the proxy's code for ~1500-2000 sessions after start
# (--trace-opt: ~180 optimizations in the first 300 sessions, still ~24 per 300 after 3000). Per-
# thread /proc CPU of sequential PASV sessions on a fresh process, blocks of 250, main thread + the
# others, ms/session (2026-11-30): node-pipe 0.96+0.08, then 0.68+0.08 onwards; proxy-nftables
# 1.92+0.60 1.52+0.20 1.48+0.40 1.44+0.32 1.36+0.20 1.28+0.20 1.24+0.16 1.20+0.08; proxy-relay
# 2.04+0.68 1.92+0.60 1.80+0.48 1.76+0.52 1.80+0.48 1.68+0.40 1.84+0.44 1.44+0.32. After 40 sessions
# the per-session CPU rows measured mostly that warm-up, not what a long-running daemon costs. By 1500
# the first block's excess (1.4-2x the last block) is gone; what still drifts (last two blocks: -9%
# nftables, -23% relay, whose blocks wander) is about this machine's round-to-round spread of those
# rows. Each 1000 more sessions per mode would add ~40 s to every round of a full run.
# --quick warms up 300 sessions: past the steepest part only, so its CPU rows read high.
WARMUP = 1500
WARMUP_QUICK = 300
# Plain NAT and the kernel helper compile nothing at run time: their warm-up only starts vsftpd's and
# the kernel's caches, which 40 sessions did before (and a long one would only lengthen the run).
WARMUP_NATIVE = 40


def warm_up(lab: Lab, setup: str, n: int, proxy: "Proxy | None") -> dict:
    """Sequential sessions in each of the setup's modes before it is measured; per mode, how many
    completed, in how long, and (for a Node.js process) its CPU over them: what warming up costs."""
    if setup not in GATEWAY:
        n = min(n, WARMUP_NATIVE)
    out = {}
    for m in modes(setup) if n > 0 else []:
        c0 = proxy.cpu() if proxy else None
        t0 = time.monotonic()
        r = drive(lab, {"op": "seq", "mode": m, "n": n, "file": "1KiB.bin", "size": 1024, **target(lab, setup)})
        # A long warm-up on this busy machine may meet a stray time-out; a setup that does not work fails more.
        if r.get("failed") or r.get("errors", 0) > n // 100:
            raise RuntimeError(f"{setup} warm-up ({m}) failed: {r.get('failed') or r.get('error_samples')}")
        out[m] = {"n": n, "ok": r["ok"], "errors": r.get("errors", 0), "wall_s": round(time.monotonic() - t0, 1),
                  **(cpu_used(c0, proxy.cpu()) if proxy else {})}
    return out


# Scrapes the observed proxy's /metrics once a second, as an eager Prometheus would; prints
# how many scrapes answered 200 and their sizes when it is ended.
SCRAPER = """
import signal, sys, time, urllib.request
ok = bad = size = 0
def done(*_):
    print(f"{ok} {bad} {size}", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
while True:
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics", timeout=2) as r:
            size = len(r.read())
            ok += r.status == 200
    except OSError:
        bad += 1
    time.sleep(1)
"""


def run_setup(lab: Lab, setup: str, rnd: int, cfg, cli: str, outdir: Path) -> dict:
    configure(lab, setup)
    proxy = scraper = None
    res: dict = {"phases": {}}
    try:
        if setup in GATEWAY:
            proxy = Proxy(lab, setup, cli, outdir / f"proxy-{setup}-r{rnd}.log")
            res["proxy_startup_s"] = round(proxy.startup_s, 3)
        if setup == OBSERVED:
            scraper = popen(["ip", "netns", "exec", lab.ns["gw"], PY, "-c", SCRAPER % METRICS_PORT],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        proxy_fds = proxy.status()["fds"] if proxy else None
        res["warmup"] = warm_up(lab, setup, cfg.warmup, proxy)
        for name, job in phases(setup, cfg):
            waited = quiesce(lab, proxy, proxy_fds)
            ext0 = {ns: lab.tcp_ext(ns) for ns in ("gw", "server")}
            noise = Noise(lab)
            cpu0 = proxy.cpu() if proxy else None
            r = drive(lab, {**job, **target(lab, setup)})
            if proxy:
                r.update(cpu_used(cpu0, proxy.cpu()))
            r["noise"] = noise.done()
            ext1 = {ns: lab.tcp_ext(ns) for ns in ("gw", "server")}
            r["listen_overflows"] = {ns: ext1[ns].get("ListenOverflows", 0) - ext0[ns].get("ListenOverflows", 0)
                                     for ns in ext0}
            r["quiesce_wait_s"] = waited
            res["phases"][name] = r
            if r.get("failed"):
                log(f"round {rnd} {setup} {name}: {r['failed']}")
        if proxy:
            res["proxy_status_end"] = proxy.status()
    finally:
        if scraper:
            end(scraper, 5.0)
            ok, bad, size = (int(x) for x in (scraper.stdout.read().split() or ["0", "0", "0"]))
            res["scrapes"] = {"ok": ok, "failed": bad, "bytes": size}
        if proxy:
            res["proxy_stop"] = proxy.stop()
    return res


def run_idle(lab: Lab, setup: str, cfg, cli: str, outdir: Path) -> dict:
    """Proxy RSS with idle logged-in sessions held open (against vsftpd), per level."""
    configure(lab, setup)
    proxy = Proxy(lab, setup, cli, outdir / f"proxy-{setup}-idle.log")
    res: dict = {"levels": []}
    drv = None
    try:
        time.sleep(1)
        res["baseline"] = proxy.status()
        # Two fds per session (client and server legs) plus the proxy's own few dozen.
        limit = int(re.search(r"Max open files\s+(\d+)", Path(f"/proc/{proxy.pid}/limits").read_text())[1])
        levels = [lv for lv in cfg.idle_levels if lv <= 10_000]
        fit = (limit - 100) // 2 // 100 * 100
        res["fd_limit"] = limit
        if any(lv > fit for lv in levels):
            res["capped"] = {"wanted": max(levels), "fd_limit": limit, "held": fit}
            levels = sorted({min(lv, fit) for lv in levels})
        drv = popen(["ip", "netns", "exec", lab.ns["client"], PY, "-B", str(LOAD),
                     json.dumps({"op": "idle", "host": lab.server, "port": lab.port, "levels": levels,
                                 "parallel": 16})],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in levels:
            line = drv.stdout.readline()
            if not line:
                break
            row = json.loads(line)
            time.sleep(cfg.idle_settle)
            row["proxy"] = proxy.status()
            row["server_procs"] = lab.server_procs()
            res["levels"].append(row)
            log(f"idle {setup}: {row['open']} sessions held, proxy RSS {row['proxy']['VmRSS'] / 1024:.1f} MiB")
            drv.stdin.write("\n")
            drv.stdin.flush()
        out, err = drv.communicate(timeout=300)
        STARTED.pop(drv.pid, None)
        res["driver"] = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"failed": err[-1000:]}
        # How long the proxy takes to let go of every closed session (fds back near the baseline).
        t0 = time.monotonic()
        while proxy.status()["fds"] > res["baseline"]["fds"] + 10 and time.monotonic() - t0 < 60:
            time.sleep(0.25)
        res["after_close"] = {**proxy.status(), "released_within_s": round(time.monotonic() - t0, 2)}
    finally:
        if drv:
            end(drv, 5)
        res["proxy_stop"] = proxy.stop()
        # Let vsftpd's ~2 processes per session go before anything else is measured.
        t0 = time.monotonic()
        while lab.server_procs() > 50 and time.monotonic() - t0 < 120:
            time.sleep(0.5)
        res["server_drain_s"] = round(time.monotonic() - t0, 1)
    return res


# --- profile ---------------------------------------------------------------------------------


def short_url(url: str) -> str:
    url = re.sub(r"^file://", "", url)
    for marker in ("/dist/", "/node_modules/"):
        if marker in url:
            return marker.strip("/") + "/" + url.split(marker, 1)[1]
    return url


def top_self(profile: Path, k: int, window: tuple[float, float] | None) -> dict:
    """Self time per function over the samples taken within `window` (CLOCK_MONOTONIC seconds,
    the clock V8 stamps profiles with), so start-up (module loading) is left out; each entry
    also names the proxy's own functions (dist/) it was called from."""
    p = json.loads(profile.read_text())
    nodes = {n["id"]: n for n in p["nodes"]}
    parent = {c: n["id"] for n in p["nodes"] for c in n.get("children", [])}
    per_node = Counter()
    t = p["startTime"]
    lo, hi = (window[0] * 1e6, window[1] * 1e6) if window else (float("-inf"), float("inf"))
    for sid, dt in zip(p["samples"], p["timeDeltas"]):
        t += dt
        if lo <= t <= hi:
            per_node[sid] += dt
    windowed = bool(window) and sum(per_node.values()) > 0
    if window and not windowed:  # clocks disagree after all: keep every sample, and say so
        return {**top_self(profile, k, None), "window": "not applied (no sample inside it)"}

    def label(nid: int) -> str:
        cf = nodes[nid]["callFrame"]
        where = short_url(cf["url"])
        name = cf["functionName"] or "(anonymous)"
        return f"{name} {where}:{cf['lineNumber'] + 1}" if where else name

    def dist_caller(nid: int) -> str:
        j = parent.get(nid)
        while j is not None:
            if "/dist/" in nodes[j]["callFrame"]["url"]:
                return label(j)
            j = parent.get(j)
        return "-"

    per_fn, callers = Counter(), {}
    for nid, us in per_node.items():
        key = label(nid)
        per_fn[key] += us
        callers.setdefault(key, Counter())[dist_caller(nid)] += us
    total = sum(per_fn.values())
    idle = per_fn.get("(idle)", 0)
    busy = total - idle
    return {"window": "workload only" if windowed else "whole run",
            "total_ms": round(total / 1000, 1), "idle_ms": round(idle / 1000, 1), "busy_ms": round(busy / 1000, 1),
            "top": [{"function": key, "self_ms": round(us / 1000, 1), "pct_of_busy": round(100 * us / max(1, busy), 1),
                     "called_from": [c for c, _ in callers[key].most_common(2)]}
                    for key, us in per_fn.most_common() if key != "(idle)"][:k]}


def run_profile(lab: Lab, setup: str, cfg, cli: str, outdir: Path) -> dict:
    configure(lab, setup)
    pdir = outdir / f"cpuprofile-{setup}"
    pdir.mkdir(parents=True, exist_ok=True)
    proxy = Proxy(lab, setup, cli, outdir / f"proxy-{setup}-profile.log",
                  node_args=["--cpu-prof", f"--cpu-prof-dir={pdir}"])
    res: dict = {}
    try:
        res["warmup"] = warm_up(lab, setup, cfg.warmup, proxy)
        cpu0 = proxy.cpu()
        t0 = time.monotonic()
        for m in ("pasv", "port"):
            r = drive(lab, {"op": "seq", "mode": m, "n": cfg.profile_sessions, "file": "1KiB.bin", "size": 1024})
            res[f"seq_{m}"] = {k: r.get(k) for k in ("ok", "sessions_per_s", "errors", "failed")}
        res.update(cpu_used(cpu0, proxy.cpu()))
        window = (t0, time.monotonic())
    finally:
        res["proxy_stop"] = proxy.stop()
    files = sorted(pdir.glob("*.cpuprofile"))
    if not files:
        res["failed"] = "no .cpuprofile written (did the proxy exit normally?)"
        return res
    res["file"] = str(files[-1])
    res.update(top_self(files[-1], cfg.profile_top, window))
    return res


# --- summary ---------------------------------------------------------------------------------


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, -(-len(s) * p // 100) - 1))]


def med(xs):
    return statistics.median(xs) if xs else None


# metric -> (label, unit, higher_is_better, extractor(one setup's result in one round))
def _rate(phase):
    return lambda sr: sr["phases"].get(phase, {}).get("sessions_per_s")


def _session_ms(phase):
    """The median session of a round: less swayed by other load on the machine than a rate."""
    return lambda sr: med(sr["phases"].get(phase, {}).get("session_ms"))


def _retr(phase):
    return lambda sr: med([t["mib_per_s"] for t in sr["phases"].get(phase, {}).get("transfers") or []])


def _list(sr):
    return med(sr["phases"].get("list", {}).get("list_ms"))


def _cpu_100mib(phase):
    def f(sr):
        r = sr["phases"].get(phase)
        if not r or "proxy_cpu_s" not in r or not r.get("transfers"):
            return None
        moved = sum(t["bytes"] for t in r["transfers"])
        return 1000 * r["proxy_cpu_s"] / (moved / (100 * MIB))
    return f


def _cpu_1000(part: str, run: str, cpu: str = "proxy_cpu_s"):
    """CPU ms per 1000 sequential sessions of sr[part][run]: a phase, or a warm-up (older results
    have no warm-up figures and no main thread's)."""
    def f(sr):
        r = sr.get(part, {}).get(run)
        if not r or cpu not in r or not r.get("ok"):
            return None
        return 1000 * r[cpu] / r["ok"] * 1000
    return f


def metrics(concurrency: list[int], warmup: int) -> list[tuple[str, str, str, bool, object]]:
    m = [("seq_pasv", "sequential sessions/s, PASV", "1/s", True, _rate("seq_pasv")),
         ("seq_port", "sequential sessions/s, PORT", "1/s", True, _rate("seq_port"))]
    m += [("sess_pasv", "sequential session time, PASV, median", "ms", False, _session_ms("seq_pasv")),
          ("sess_port", "sequential session time, PORT, median", "ms", False, _session_ms("seq_port"))]
    m += [(f"conc{c}", f"sessions/s at {c} concurrent, PASV", "1/s", True, _rate(f"conc{c}")) for c in concurrency]
    m += [("retr_pasv", "100 MiB RETR, PASV", "MiB/s", True, _retr("retr_pasv")),
          ("retr_port", "100 MiB RETR, PORT", "MiB/s", True, _retr("retr_port")),
          ("list", "LIST dir1000 (1000 files)", "ms", False, _list),
          ("cpu_100mib_pasv", "proxy CPU per 100 MiB, PASV", "ms", False, _cpu_100mib("retr_pasv")),
          ("cpu_100mib_port", "proxy CPU per 100 MiB, PORT", "ms", False, _cpu_100mib("retr_port")),
          # What the same process paid while V8 was still compiling: the cost of JIT warm-up.
          ("cpu_1000_warmup_pasv", f"proxy CPU per 1000 sessions, first {warmup} after start (PASV)", "ms", False,
           _cpu_1000("warmup", "pasv")),
          ("cpu_1000_pasv", "proxy CPU per 1000 sessions, PASV", "ms", False, _cpu_1000("phases", "seq_pasv")),
          # The rest of the row above is V8's helper threads (GC, compiler) and libuv's pool.
          ("cpu_1000_pasv_main", "proxy CPU per 1000 sessions, PASV, main thread", "ms", False,
           _cpu_1000("phases", "seq_pasv", "proxy_cpu_main_s")),
          ("cpu_1000_port", "proxy CPU per 1000 sessions, PORT", "ms", False, _cpu_1000("phases", "seq_port")),
          ("cpu_1000_port_main", "proxy CPU per 1000 sessions, PORT, main thread", "ms", False,
           _cpu_1000("phases", "seq_port", "proxy_cpu_main_s"))]
    return m


def paired_ratio(rounds: list[dict], fn, s: str, ref: str, fn_ref=None) -> dict | None:
    """Median and range of s / ref within each round (the pair ran minutes apart at most); fn_ref,
    if given, measures ref (for two metrics of one setup)."""
    fn_ref = fn_ref or fn
    pr = [x / y for x, y in ((fn(r["setups"][s]), fn_ref(r["setups"][ref])) for r in rounds) if x is not None and y]
    return {"median": med(pr), "min": min(pr), "max": max(pr), "per_round": pr} if pr else None


def comparisons(concurrency: list[int]) -> list[tuple[str, str, str, list[str]]]:
    """(what, setup, reference, metrics): the paired comparisons printed under the table."""
    conc = [f"conc{c}" for c in concurrency]
    converted = ["retr_port", "cpu_100mib_port", "seq_port", "cpu_1000_port"]
    return [("metrics+xferlog on vs off", OBSERVED, "proxy-nftables",
             ["seq_pasv", "seq_port", *conc, "cpu_1000_pasv", "cpu_1000_port"]),
            ("FTPS vs plain FTP, reverse mode, PASV", FTPS, "reverse-plain",
             ["seq_pasv", "sess_pasv", "retr_pasv", "cpu_100mib_pasv", "cpu_1000_pasv"]),
            ("converted PORT transfers vs the relay's", CONVERTED, "proxy-relay", converted),
            ("converted PORT transfers vs the kernel path's", CONVERTED, "proxy-nftables", converted)]


def versus(rows: dict, rounds: list[dict], fn_of: dict, s: str, ref: str, keys: list[str]) -> dict:
    """s against ref on each of keys both measured: medians, their ratio, the paired per-round range."""
    return {k: {"median": v["median"], "ref_median": n["median"], "ratio": v["median"] / n["median"],
                "paired": paired_ratio(rounds, fn_of[k], s, ref)}
            for k in keys
            if (row := rows.get(k)) and (v := row["setups"].get(s)) and (n := row["setups"].get(ref)) and n["median"]}


# The table's noise mark. A row is noise-limited when, for some proxy column, the per-round values it
# is read by (its paired ratios to the kernel helper; in rows without the helper, the CPU rows, to
# node-pipe; where that reference is 0 or absent, the values themselves), less the highest and the
# lowest when there are 5 rounds or more, spread more than 10% of their median either side:
# (max - min) / 2 > 10% of the median. What is left is the median's distribution-free confidence
# interval (2nd to 6th of 7 rounds: ~87%), so the median ratio cannot be trusted to +-10% there.
# Judged on 2 rounds or more.
NOISE_LIMIT = 0.10


def spread(rounds: list[dict], fn, row: dict) -> dict | None:
    """The widest per-round spread among a row's proxy columns, as NOISE_LIMIT reads it."""
    ref = "helper" if "helper" in row["setups"] else FLOOR if FLOOR in row["setups"] else None
    worst = None
    for s, vals in row["setups"].items():
        v = (paired_ratio(rounds, fn, s, ref) if ref else None) or vals
        xs = sorted(v["per_round"])
        xs = xs[1:-1] if len(xs) >= 5 else xs
        if s in GATEWAY and s != FLOOR and v["median"]:
            x = (xs[-1] - xs[0]) / 2 / v["median"]
            if not worst or x > worst["spread"]:
                worst = {"spread": x, "setup": s, "against": ref if v is not vals else None}
    return worst


def floor_keys(concurrency: list[int]) -> list[str]:
    """The metrics the proxies are compared to the floor on: sequential and the lowest concurrency."""
    return ["seq_pasv", f"conc{min(concurrency)}"] if concurrency else ["seq_pasv"]


def summarize(rounds: list[dict], idle: dict, concurrency: list[int], warmup: int) -> dict:
    # The setups this run measured (--no-floor leaves one out; older results may lack it).
    setups = [s for s in SETUPS if all(s in r["setups"] for r in rounds)]
    out: dict = {"setups": setups, "metrics": {}, "pasv_227": {}, "idle_rss": {}}
    fn_of = {}
    for key, label, unit, higher, fn in metrics(concurrency, warmup):
        fn_of[key] = fn
        row = {"label": label, "unit": unit, "higher_is_better": higher, "setups": {}}
        for s in setups:
            vals = [fn(r["setups"][s]) for r in rounds]
            vals = [v for v in vals if v is not None]
            if vals:
                row["setups"][s] = {"median": med(vals), "min": min(vals), "max": max(vals), "per_round": vals}
        h = row["setups"].get("helper")
        for s, v in row["setups"].items():
            if h and h["median"]:
                v["ratio_to_helper"] = v["median"] / h["median"]
                # Other load only ever slows a round down: best round against best round is the
                # estimate least touched by it.
                best = (lambda x: x["max"]) if higher else (lambda x: x["min"])
                if best(h):
                    v["best_round_ratio"] = best(v) / best(h)
                if pr := paired_ratio(rounds, fn, s, "helper"):
                    v["paired_ratio"] = pr
        f = row["setups"].get(FLOOR)
        for s in PROXIES:
            v = row["setups"].get(s)
            if v and f and f["median"]:
                v["ratio_to_floor"] = v["median"] / f["median"]
                if pr := paired_ratio(rounds, fn, s, FLOOR):
                    v["paired_ratio_to_floor"] = pr
        row["spread"] = spread(rounds, fn, row)
        row["noise_limited"] = len(rounds) >= 2 and bool(row["spread"]) and row["spread"]["spread"] > NOISE_LIMIT
        out["metrics"][key] = row
    # What JIT warm-up costs each Node.js process: its first sessions after start against the
    # measured ones, round by round, and the CPU that adds up to over the warm-up.
    w, st = out["metrics"]["cpu_1000_warmup_pasv"]["setups"], out["metrics"]["cpu_1000_pasv"]["setups"]
    out["warmup_cost"] = {s: {"ratio": w[s]["median"] / st[s]["median"],
                              "extra_ms": (w[s]["median"] - st[s]["median"]) * warmup / 1000,
                              "paired": paired_ratio(rounds, fn_of["cpu_1000_warmup_pasv"], s, s, fn_of["cpu_1000_pasv"])}
                          for s in w if s in st and st[s]["median"]}
    # What observing, TLS and converting cost: each setup against its reference, round by round.
    out["paired"] = [{"what": what, "setup": s, "ref": ref, "metrics": cmp}
                     for what, s, ref, keys in comparisons(concurrency)
                     if (cmp := versus(out["metrics"], rounds, fn_of, s, ref, keys))]
    # The nftables plane against the relay and the floor, round by round (issue 17's targets).
    out["nft_pairs"] = {f"{k} vs {ref}": pr for k in ("cpu_1000_pasv", "cpu_1000_port", *[c for c in fn_of if c.startswith("conc")])
                        for ref in ("proxy-relay", FLOOR)
                        if "proxy-nftables" in setups and ref in setups
                        and (pr := paired_ratio(rounds, fn_of[k], "proxy-nftables", ref))}
    out["vs_floor"] = {s: {k: {"ratio": v["ratio_to_floor"], "paired": v.get("paired_ratio_to_floor")}
                           for k in floor_keys(concurrency)
                           if (v := out["metrics"][k]["setups"].get(s)) and "ratio_to_floor" in v}
                       for s in PROXIES if FLOOR in setups}
    # PASV -> 227 round trip, pooled over every sequential PASV session of every round.
    for s in setups:
        xs = [x for r in rounds for x in r["setups"][s]["phases"].get("seq_pasv", {}).get("pasv_ms", [])]
        per_round = [(pct(r["setups"][s]["phases"]["seq_pasv"]["pasv_ms"], 50),
                      pct(r["setups"][s]["phases"]["seq_pasv"]["pasv_ms"], 99))
                     for r in rounds if r["setups"][s]["phases"].get("seq_pasv", {}).get("pasv_ms")]
        if xs:
            out["pasv_227"][s] = {"n": len(xs), "p50": pct(xs, 50), "p99": pct(xs, 99), "max": max(xs),
                                  "per_round_p50": [a for a, _ in per_round], "per_round_p99": [b for _, b in per_round]}
    # Where a sequential session spends its time: pooled median per step.
    out["steps"] = {}
    for ph in ("seq_pasv", "seq_port"):
        for s in setups:
            runs = [r["setups"][s]["phases"][ph]["steps_ms"] for r in rounds
                    if ph in r["setups"][s]["phases"] and "steps_ms" in r["setups"][s]["phases"][ph]]
            if runs:
                out["steps"].setdefault(ph, {})[s] = {k: med([x for run in runs for x in run[k]]) for k in runs[0]}
    # How much else ran on the machine (other sessions' tests), and vsftpd's accept queue.
    out["noise"] = {}
    for s in setups:
        phs = [(name, p) for r in rounds for name, p in r["setups"][s]["phases"].items()]
        out["noise"][s] = {
            "foreign_cpu_s": round(sum(p["noise"]["foreign_cpu_s"] for _, p in phs), 1),
            "machine_busy_frac_median": med([p["noise"]["machine_busy_frac"] for _, p in phs]),
            "listen_overflows": {name: sum(p["listen_overflows"]["server"] + p["listen_overflows"]["gw"]
                                           for n2, p in phs if n2 == name) for name in dict(phs)}}
    h = out["pasv_227"].get("helper")
    for s in GATEWAY:
        v = out["pasv_227"].get(s)
        if v and h:
            v["added_p50"] = v["p50"] - h["p50"]
            v["added_p99"] = v["p99"] - h["p99"]
    for s, r in idle.items():
        out["idle_rss"][s] = {"baseline_mib": r.get("baseline", {}).get("VmRSS", 0) / 1024,
                              "levels": {row["open"]: row["proxy"]["VmRSS"] / 1024 for row in r.get("levels", [])},
                              "capped": r.get("capped")}
        lv = sorted(out["idle_rss"][s]["levels"].items())
        if len(lv) >= 2 and lv[-1][0] < 10_000 and lv[-1][0] > lv[0][0]:
            (n0, r0), (n1, r1) = lv[0], lv[-1]
            out["idle_rss"][s]["extrapolated_10000_mib"] = r1 + (10_000 - n1) * (r1 - r0) / (n1 - n0)
        if len(lv) >= 2 and lv[-1][0] > lv[0][0]:
            (n0, r0), (n1, r1) = lv[0], lv[-1]
            out["idle_rss"][s]["kib_per_session"] = (r1 - r0) * 1024 / (n1 - n0)
    return out


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "ms" and abs(v) < 10:
        return f"{v:.2f}"
    if abs(v) < 100:
        return f"{v:.1f}"
    return f"{v:.0f}"


def table(summary: dict, meta: dict) -> str:
    lines = [f"ftp-proxy bench {meta['date']}  {meta['machine']['nproc']} CPUs, kernel {meta['machine']['kernel']}, "
             f"{len(meta['rounds'])} rounds, proxy {meta['proxy']['source']}",
             "cells: median [min-max] over rounds; xH = ratio of medians to the kernel helper", ""]
    setups = summary["setups"]
    if FLOOR in setups:
        lines.insert(2, f"{FLOOR}: a bare Node.js TCP forwarder (no FTP logic, PASV only) behind the proxy's redirect,"
                        " the floor for any Node-based proxy; its CPU is in the proxy CPU rows")
    if CONVERTED in setups:
        lines.insert(2, f"{CONVERTED}: proxy-nftables with {' '.join(CONVERT)} (PORT only): its PORT transfers are"
                        " converted (PASV toward vsftpd) and carried by the relay plane")
    if FTPS in setups:
        lines.insert(2, f"{', '.join(REVERSE)}: ftp-proxy -R vsftpd on the gateway's LAN address (nftables plane, no"
                        " redirect; PASV only), plain FTP and FTPS (--tls terminate: AUTH TLS, PROT P, data"
                        " resuming the control session, through the TLS relay)")
    if meta.get("machine"):
        lines[1] += f"; load average at start {' '.join(meta['machine'].get('loadavg_start', []))}"
    judged = len(meta["rounds"]) >= 2
    lines.insert(2, f"noise-limited: a row where some proxy column's per-round ratios to the helper (CPU rows: to {FLOOR};"
                    " no reference: its values), less the highest and lowest of 5 rounds or more, spread (max-min)/2 >"
                    f" {NOISE_LIMIT:.0%} of their median: its median ratio is not good to +-{NOISE_LIMIT:.0%}"
                    + ("" if judged else " (one round: not judged)"))
    if meta["config"].get("warmup"):
        lines.insert(2, f"measured after a warm-up of {meta['config']['warmup']} sequential sessions per mode in each"
                        f" Node.js process ({min(meta['config']['warmup'], WARMUP_NATIVE)} for direct and helper)")
    rows = {k: row for k, row in summary["metrics"].items() if row["setups"]}  # older results lack some
    w0, w = max(36, *(len(f"{row['label']} ({row['unit']})") + 2 for row in rows.values())), 27
    lines.append("metric".ljust(w0) + "".join(s.rjust(w) for s in setups))
    for key, row in rows.items():
        cells = []
        for s in setups:
            v = row["setups"].get(s)
            if not v:
                cells.append("-".rjust(w))
                continue
            c = f"{fmt(v['median'], row['unit'])} [{fmt(v['min'], row['unit'])}-{fmt(v['max'], row['unit'])}]"
            if s != "helper" and "ratio_to_helper" in v:
                c += f" {v['ratio_to_helper']:.2f}xH"
            cells.append(c.rjust(w))
        mark = f"  noise-limited (per-round spread +-{row['spread']['spread']:.0%})" if row.get("noise_limited") else ""
        lines.append(f"{row['label']} ({row['unit']})".ljust(w0) + "".join(cells) + mark)
    for q in ("p50", "p99"):
        cells = []
        for s in setups:
            v = summary["pasv_227"].get(s)
            c = "-" if not v else f"{v[q]:.2f}" + (f" ({v['added_' + q]:+.2f})" if f"added_{q}" in v else "")
            cells.append(c.rjust(w))
        lines.append(f"PASV->227 {q} (ms, +added vs helper)".ljust(w0) + "".join(cells))
    cost = summary.get("warmup_cost", {})
    if cost:
        lines += ["", f"JIT warm-up: CPU per session over the first {meta['config']['warmup']} PASV sessions after start,"
                      " against the measured ones (paired per-round range), and what it adds up to:"]
        lines += [f"  {s:<16} {c['ratio']:.2f}x" + (f" ({c['paired']['min']:.2f}-{c['paired']['max']:.2f})" if c["paired"] else "")
                  + f"  {c['extra_ms']:+.0f} ms of CPU over them" for s, c in cost.items()]
    for ph, per in summary.get("steps", {}).items():
        lines += ["", f"median ms per step of a sequential session, {ph}".ljust(w0) + "".join(s.rjust(w) for s in setups)]
        for k in next(iter(per.values())):
            lines.append(f"  {k}".ljust(w0) + "".join(
                (f"{per[s][k]:.2f}" if s in per else "-").rjust(w) for s in setups))
    lines += ["", "noise and queues (all rounds)".ljust(w0) + "".join(s.rjust(w) for s in setups)]
    noise = summary.get("noise", {})
    lines.append("  CPU s used by other processes".ljust(w0) + "".join(
        f"{noise[s]['foreign_cpu_s']:.1f}".rjust(w) for s in setups))
    lines.append("  machine busy (median of phases)".ljust(w0) + "".join(
        f"{100 * noise[s]['machine_busy_frac_median']:.0f}%".rjust(w) for s in setups))
    for ph in sorted({k for v in noise.values() for k, n in v["listen_overflows"].items() if n}):
        lines.append(f"  listen queue overflows, {ph}".ljust(w0) + "".join(
            str(noise[s]["listen_overflows"].get(ph, "-")).rjust(w) for s in setups))
    lines.append("")
    idle = summary["idle_rss"]
    if idle:
        levels = sorted({n for v in idle.values() for n in v["levels"]})
        for n in ["baseline", *levels]:
            cells = []
            for s in setups:
                v = idle.get(s)
                if not v:
                    cells.append("-".rjust(w))
                elif n == "baseline":
                    cells.append(f"{v['baseline_mib']:.1f}".rjust(w))
                else:
                    cells.append((f"{v['levels'][n]:.1f}" if n in v["levels"] else "-").rjust(w))
            label = "proxy RSS, no sessions (MiB)" if n == "baseline" else f"proxy RSS, {n} idle sessions (MiB)"
            lines.append(label.ljust(w0) + "".join(cells))
        if any("extrapolated_10000_mib" in v for v in idle.values()):
            lines.append("proxy RSS, 10000 (linear extrapol.)".ljust(w0) + "".join(
                (f"{idle[s]['extrapolated_10000_mib']:.1f}" if s in idle and "extrapolated_10000_mib" in idle[s]
                 else "-").rjust(w) for s in setups))
    return "\n".join(lines)


def targets(summary: dict) -> list[dict]:
    m = summary["metrics"]
    out = []

    def ratio(key, s, goal, cmp, what):
        v = m.get(key, {}).get("setups", {}).get(s)
        if not v or "ratio_to_helper" not in v:
            out.append({"target": what, "setup": s, "measured": None, "met": None})
            return
        r = v["ratio_to_helper"]
        out.append({"target": what, "setup": s, "measured": round(r, 3), "best_round_ratio": v.get("best_round_ratio"),
                    "paired_ratio_range": v.get("paired_ratio"), "met": r >= goal if cmp == ">=" else r <= goal})

    for s in PROXIES:
        for key in ("seq_pasv", "seq_port", *[k for k in m if k.startswith("conc")]):
            ratio(key, s, 0.9, ">=", f"{key} >= 0.9x helper")
        ratio("list", s, 1.2, "<=", "LIST <= 1.2x helper")
    for key in ("retr_pasv", "retr_port"):
        ratio(key, "proxy-nftables", 0.95, ">=", f"{key} nftables >= 0.95x helper")
        ratio(key, "proxy-relay", 0.8, ">=", f"{key} relay >= 0.8x helper")
    for s in PROXIES:
        v = summary["pasv_227"].get(s)
        out.append({"target": "PASV->227 added p99 <= 5 ms", "setup": s,
                    "measured": round(v["added_p99"], 3) if v and "added_p99" in v else None,
                    "met": (v["added_p99"] <= 5) if v and "added_p99" in v else None})
    for s, v in summary["idle_rss"].items():
        n = max(v["levels"]) if v["levels"] else None
        est = v.get("extrapolated_10000_mib", v["levels"].get(10_000) if v["levels"] else None)
        out.append({"target": "10000 idle sessions <= 300 MiB RSS", "setup": s,
                    "measured": round(est, 1) if est is not None else None,
                    "held": n, "extrapolated": "extrapolated_10000_mib" in v,
                    "met": est <= 300 if est is not None else None})
    # Paired per-round ratios of the nftables plane; a range that straddles the goal is noise-limited:
    # this run cannot tell whether the target is met.
    for pair, goal, cmp in [("cpu_1000_pasv vs proxy-relay", 1.0, "<="), ("cpu_1000_port vs proxy-relay", 1.0, "<="),
                            (f"cpu_1000_pasv vs {FLOOR}", 1.2, "<="),
                            *[(f"{k} vs {ref}", g, ">=") for k in m if k.startswith("conc")
                              for ref, g in (("proxy-relay", 1.0), (FLOOR, 0.95))]]:
        pr = summary["nft_pairs"].get(pair)
        met = None if not pr else pr["median"] <= goal if cmp == "<=" else pr["median"] >= goal
        out.append({"target": f"nftables {pair} {cmp} {goal}x (paired)", "setup": "proxy-nftables",
                    "measured": round(pr["median"], 3) if pr else None, "paired_ratio_range": pr, "met": met,
                    "noise_limited": bool(pr) and pr["min"] < goal < pr["max"]})
    n, r = summary["pasv_227"].get("proxy-nftables"), summary["pasv_227"].get("proxy-relay")
    out.append({"target": "PASV->227 p50 nftables <= relay + 0.05 ms", "setup": "proxy-nftables",
                "measured": round(n["p50"] - r["p50"], 3) if n and r else None,
                "met": n["p50"] <= r["p50"] + 0.05 if n and r else None})
    v = m.get("cpu_100mib_pasv", {}).get("setups", {}).get("proxy-nftables")
    out.append({"target": "proxy CPU per 100 MiB, nftables, PASV (ms): ~0", "setup": "proxy-nftables",
                "measured": round(v["median"], 1) if v else None, "met": None})
    return out


# --- main ------------------------------------------------------------------------------------


def render(result: dict) -> str:
    """Summary, table, targets and profile text of a result (also sets its summary and targets)."""
    result["summary"] = summarize(result["rounds"], result["idle"], result["config"]["concurrency"],
                                  result["config"]["warmup"])
    result["targets"] = targets(result["summary"])
    out = [table(result["summary"], result), ""]
    for t in result["targets"]:
        met = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        pr = t.get("paired_ratio_range")
        paired = f"  (paired per-round {pr['min']:.2f}-{pr['max']:.2f}" if pr else ""
        paired += f", best round vs best round {t['best_round_ratio']:.2f})" if t.get("best_round_ratio") else (
            ")" if pr else "")
        paired += "  noise-limited" if t.get("noise_limited") else ""
        out.append(f"target {t['target']:<58} {t['setup']:<15} {t['measured']!s:>8}  {met}{paired}")
    for s, per in result["summary"].get("vs_floor", {}).items():
        cells = [f"{k} {v['ratio']:.2f}x" + (f" (paired per-round {v['paired']['min']:.2f}-{v['paired']['max']:.2f})"
                                             if v["paired"] else "") for k, v in per.items()]
        out.append(f"{'vs bare node pipe (' + FLOOR + ')':<55} {s:<15} {'   '.join(cells)}")
    for c in result["summary"].get("paired", []):
        out += ["", f"{c['what']}: {c['setup']} vs {c['ref']}, medians and ratio"]
        for k, v in c["metrics"].items():
            row = result["summary"]["metrics"][k]
            pr = v["paired"]
            out.append(f"  {row['label'] + ' (' + row['unit'] + ')':<53} {fmt(v['median'], row['unit']):>8} vs "
                       f"{fmt(v['ref_median'], row['unit']):>8}  {v['ratio']:.2f}x"
                       + (f" (paired per-round {pr['min']:.2f}-{pr['max']:.2f})" if pr else ""))
        if c["setup"] == OBSERVED:
            scrapes = [r["setups"][OBSERVED].get("scrapes", {}) for r in result["rounds"] if OBSERVED in r["setups"]]
            out.append(f"{'  scrapes of /metrics during the rounds':<55} ok {sum(x.get('ok', 0) for x in scrapes)}, "
                       f"failed {sum(x.get('failed', 0) for x in scrapes)}, last size "
                       f"{max((x.get('bytes', 0) for x in scrapes), default=0)} bytes")
    for s, p in result["profile"].items():
        if p.get("top"):
            out += ["", f"profile {s} ({p['window']}): main thread busy {p['busy_ms']} ms of {p['total_ms']} ms"
                        f" sampled; proxy CPU (all threads) {p.get('proxy_cpu_s')} s, main thread"
                        f" {p.get('proxy_cpu_main_s', '-')} s; top self time:"]
            out += [f"  {f['self_ms']:>8.1f} ms {f['pct_of_busy']:>5.1f}%  {f['function']}"
                    f"   <- {', '.join(f['called_from'])}" for f in p["top"]]
    return "\n".join(out)


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    mem = next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))

    def version(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.strip()
        except OSError:
            return None

    return {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": cpu, "mem_kib": int(mem),
            "node": version([shutil.which("node") or "node", "--version"]), "python": platform.python_version(),
            "hostname": platform.node(), "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
            "other_netns": len([n for n in os.listdir("/run/netns")]) - 3 if os.path.isdir("/run/netns") else 0}


def self_signed(outdir: Path) -> list[str]:
    """A P-256 certificate and key for reverse-ftps, made in the run's directory; the proxy's options."""
    cert, key = outdir / "ftps-cert.pem", outdir / "ftps-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=ftp.bench.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return ["--tls", "terminate", "--tls-cert", str(cert), "--tls-key", str(key)]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scripts/bench", description="see scripts/bench --help")
    ap.add_argument("--env", required=True, type=Path)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--source", required=True, help="what proxy build is measured (for the record)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--seq", type=int, help="sessions per sequential run")
    ap.add_argument("--conc-seconds", type=float)
    ap.add_argument("--concurrency", default="20,200")
    ap.add_argument("--retr", type=int, help="100 MiB transfers per mode per round")
    ap.add_argument("--list", type=int, help="LISTs per round")
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--idle-levels", help="comma list, e.g. 1000,10000; 0 = skip")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--observe", action="store_true",
                    help=f"add the setup {OBSERVED}: proxy-nftables with --metrics 127.0.0.1:9464 (scraped every "
                         "second) and --xferlog OUT/xferlog, in the same rounds (issue 12's cost, as paired ratios)")
    ap.add_argument("--ftps", action="store_true",
                    help=f"add the setups {' and '.join(REVERSE)}: a reverse-mode proxy in the gateway in front of "
                         "vsftpd (nftables plane), plain and with --tls terminate (a self-signed certificate made in OUT), "
                         "clients at the gateway's address; PASV session rate, 100 MiB RETR and proxy CPU, FTPS vs plain "
                         "as paired ratios (issue 14)")
    ap.add_argument("--converted", action="store_true",
                    help=f"add the setup {CONVERTED}: proxy-nftables with --server-mode passive, whose PORT transfers "
                         "are converted and relay-carried; PORT session rate, 100 MiB RETR and proxy CPU as paired ratios "
                         "to proxy-relay and proxy-nftables (issue 15)")
    ap.add_argument("--no-floor", action="store_true",
                    help=f"leave out the {FLOOR} setup (a bare Node.js TCP forwarder, PASV phases only, "
                         "the floor for a Node-based proxy) and the proxies' ratios to it; default: included")
    a = ap.parse_args()
    q = a.quick
    defaults = {"rounds": 2 if q else 7, "seq": 100 if q else 200, "conc_seconds": 1.5 if q else 2.5,
                "retr": 1 if q else 3, "list": 5 if q else 15, "warmup": WARMUP_QUICK if q else WARMUP,
                "idle_levels": "1000" if q else "1000,10000"}
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.concurrency = [int(x) for x in a.concurrency.split(",") if x]
    a.setups = [s for s in SETUPS if not (a.no_floor and s == FLOOR) and (a.observe or s != OBSERVED)
                and (a.converted or s != CONVERTED) and (a.ftps or s not in REVERSE)]
    a.idle_levels = [int(x) for x in a.idle_levels.split(",") if int(x) > 0]
    a.idle_settle = 2.0
    a.conc_ramp = 1.0
    a.profile_sessions = 200 if q else 500
    a.profile_top = 15
    return a


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        print(render(json.loads(Path(sys.argv[2]).read_text())))
        return 0
    cfg = parse_args()
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, on_signal)
    lab = Lab(cfg.env)
    stamp = datetime.datetime.now().astimezone()
    outdir = cfg.out / f"bench-{stamp:%Y%m%d-%H%M%S}"
    outdir.mkdir(parents=True, exist_ok=True)
    if cfg.observe:
        OBSERVE.extend(["--metrics", f"127.0.0.1:{METRICS_PORT}", "--xferlog", str(outdir / "xferlog")])
    if cfg.ftps:
        TLS_TERMINATE.extend(self_signed(outdir))
    meta = {"date": stamp.isoformat(timespec="seconds"), "machine": machine(),
            "proxy": {"source": cfg.source, "cli": cfg.cli,
                      "argv": f"-b :: -p {PROXY_PORT} --backend X -m 20000 -D 3",
                      **({"observed_argv_extra": " ".join(OBSERVE)} if OBSERVE else {}),
                      **({"converted_argv_extra": " ".join(CONVERT)} if cfg.converted else {}),
                      **({"reverse_argv": " ".join(reverse_args(lab, FTPS, "ftp-proxy")[1:])} if cfg.ftps else {})},
            "floor": {"script": str(NODE_PIPE), "argv": " ".join([NODE, *hop_args(lab, FLOOR, cfg.cli)])}
            if FLOOR in cfg.setups else None,
            "server": "vsftpd (lab, anonymous)", "client": "Python ftplib (load.py) in the client namespace",
            "config": {k: v for k, v in vars(cfg).items() if k not in ("env", "out")} | {"out": str(outdir)}}
    meta["config"]["cli"] = cfg.cli
    result: dict = {**meta, "rounds": [], "idle": {}, "profile": {}, "complete": False}
    json_path = outdir / "result.json"

    def save() -> None:
        json_path.write_text(json.dumps(result, indent=1, default=str))

    t_start = time.monotonic()
    try:
        for rnd in range(cfg.rounds):
            order = cfg.setups[rnd % len(cfg.setups):] + cfg.setups[:rnd % len(cfg.setups)]
            log(f"round {rnd + 1}/{cfg.rounds}: {' '.join(order)}")
            rr = {"round": rnd + 1, "order": order, "setups": {}}
            for s in order:
                t0 = time.monotonic()
                rr["setups"][s] = run_setup(lab, s, rnd + 1, cfg, cfg.cli, outdir)
                rr["setups"][s]["wall_s"] = round(time.monotonic() - t0, 1)
                ph, wu = rr["setups"][s]["phases"], rr["setups"][s]["warmup"]
                log(f"  {s}: warm-up " + ", ".join(
                    f"{m} {w['ok']} in {w['wall_s']} s" + (f" {w['proxy_cpu_s'] / max(1, w['ok']) * 1000:.2f} ms CPU/session"
                                                           if "proxy_cpu_s" in w else "") for m, w in wu.items())
                    + "; seq " + ", ".join(f"{m} {ph[f'seq_{m}'].get('sessions_per_s', 0):.0f}/s"
                                           for m in ("pasv", "port") if f"seq_{m}" in ph)
                    + f" ({rr['setups'][s]['wall_s']} s)")
            result["rounds"].append(rr)
            save()
        if not cfg.no_profile:
            for s in PROXIES:
                log(f"profile {s}: {cfg.profile_sessions} sequential sessions each PASV and PORT, node --cpu-prof")
                result["profile"][s] = run_profile(lab, s, cfg, cfg.cli, outdir)
                save()
        if cfg.idle_levels:
            for s in PROXIES:
                log(f"idle sessions {s}: levels {cfg.idle_levels}")
                result["idle"][s] = run_idle(lab, s, cfg, cfg.cli, outdir)
                save()
        result["complete"] = True
    except Stop as e:
        log(f"stopped by {e}")
        result["stopped_by"] = str(e)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        end_all()
        result["wall_s"] = round(time.monotonic() - t_start, 1)
        if result["rounds"]:
            text = render(result)
            (outdir / "table.txt").write_text(text + "\n")
            print(text)
        save()
        print(f"\nresults: {json_path}  (wall {result['wall_s']} s)")
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
