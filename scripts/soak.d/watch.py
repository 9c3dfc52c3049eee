"""The hostile soak's watch over its proxies (scripts/soak --hostile): RSS and open descriptors
sampled, logs read as they grow, a proxy past --kill-mib killed before it takes the machine down.

Every --every seconds, for each NAME:PID:LOG: VmRSS and the number of open descriptors of PID
(one line per sample in --samples), and the lines LOG gained (ended sessions and their ids, the
highest session id seen, messages counted by level; a log past --log-cap-mib is emptied and read
from its start again, so the proxy's log is opened with O_APPEND by whoever started it). A
proxy whose RSS passes --kill-mib gets SIGKILL, and --stop-file is created so the driver stops
starting sessions. A line on stderr every --report seconds. On SIGTERM: a last read, the
figures as JSON in --out, exit.

usage: watch.py --out FILE --samples FILE --stop-file FILE [--every S] [--kill-mib M] NAME:PID:LOG...
"""
import argparse
import json
import os
import re
import signal
import sys
import time

LEVEL_MSG = re.compile(rb'"level":(\d+)[^\n]*?"msg":"((?:[^"\\\n]|\\.)*)"')
SID = re.compile(rb'"sid":"(\d+)"')
ENDED = re.compile(rb'"sid":"(\d+)"[^\n]*"msg":"session ended"')
# Examples of error-level lines kept per proxy.
EXAMPLES = 5
# Bytes of log read per proxy and sample.
BUDGET = 8 << 20


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class Proxy:
    def __init__(self, spec, cap):
        self.name, pid, self.log = spec.split(":", 2)
        self.pid = int(pid)
        self.cap = cap
        self.offset = 0
        self.rest = b""
        self.rss_start = rss_kib(self.pid)
        self.rss_max = self.rss_start
        self.rss_max_at = time.time()
        self.fds_start = fd_count(self.pid)
        self.fds_max = self.fds_start
        self.killed = None
        self.ended = set()
        self.max_sid = 0
        self.lines = 0
        self.truncated = 0
        self.skipped = 0
        self.by_level = {}
        self.messages = {}
        self.errors = []

    def sample(self, now, kill_kib, stop_file):
        rss, fds = rss_kib(self.pid), fd_count(self.pid)
        if rss > self.rss_max:
            self.rss_max, self.rss_max_at = rss, now
        self.fds_max = max(self.fds_max, fds)
        if rss > kill_kib and self.killed is None:
            os.kill(self.pid, signal.SIGKILL)
            self.killed = {"at": round(now, 2), "rss_kib": rss}
            open(stop_file, "w").close()
            print(f"soak: {self.name} proxy killed at {rss // 1024} MiB RSS", file=sys.stderr, flush=True)
        return rss, fds

    def read_log(self, budget):
        """Count what the log gained, at most `budget` bytes of it (sampling must not wait);
        whether there may be more."""
        try:
            size = os.path.getsize(self.log)
            if size < self.offset:
                self.offset, self.rest = 0, b""
            if size - self.offset > self.cap:
                # Too far behind to catch up: skip it all, empty the log.
                self.skipped += size - self.offset
                self.empty()
                return False
            with open(self.log, "rb") as f:
                f.seek(self.offset)
                data = f.read(budget)
        except OSError:
            return False
        more = len(data) == budget
        self.offset += len(data)
        data = self.rest + data
        cut = data.rfind(b"\n") + 1
        self.rest = data[cut:]
        self.count(data[:cut])
        if self.offset > self.cap and self.offset == size:
            self.empty()
        return more

    def empty(self):
        # The proxy's log is opened with O_APPEND: its next line lands at the new start.
        os.truncate(self.log, 0)
        self.offset, self.rest = 0, b""
        self.truncated += 1

    def count(self, data):
        self.lines += data.count(b"\n")
        for m in LEVEL_MSG.finditer(data):
            level, msg = int(m.group(1)), m.group(2).decode("utf-8", "replace")
            self.by_level[level] = self.by_level.get(level, 0) + 1
            if level >= 35:
                key = f"{level} {msg}"
                self.messages[key] = self.messages.get(key, 0) + 1
            if level >= 50 and len(self.errors) < EXAMPLES:
                end = data.find(b"\n", m.start())
                self.errors.append(data[data.rfind(b"\n", 0, m.start()) + 1:end].decode("utf-8", "replace")[:400])
        for m in ENDED.finditer(data):
            self.ended.add(int(m.group(1)))
        sids = [int(x) for x in SID.findall(data)]
        if sids:
            self.max_sid = max(self.max_sid, max(sids))

    def summary(self):
        return {
            "pid": self.pid,
            "rss_start_kib": self.rss_start,
            "rss_max_kib": self.rss_max,
            "rss_max_at": round(self.rss_max_at, 2),
            "fds_start": self.fds_start,
            "fds_max": self.fds_max,
            "killed": self.killed,
            "sessions_seen": self.max_sid,
            "sessions_ended": len(self.ended),
            "log_lines": self.lines,
            "log_truncated": self.truncated,
            "log_skipped_bytes": self.skipped,
            "by_level": {str(k): v for k, v in sorted(self.by_level.items())},
            "messages": dict(sorted(self.messages.items(), key=lambda kv: -kv[1])[:20]),
            "errors": self.errors,
        }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--samples", required=True)
    ap.add_argument("--stop-file", required=True)
    ap.add_argument("--every", type=float, default=0.5)
    ap.add_argument("--report", type=float, default=30)
    ap.add_argument("--kill-mib", type=int, default=1024)
    ap.add_argument("--log-cap-mib", type=int, default=1024)
    ap.add_argument("proxies", nargs="+", metavar="NAME:PID:LOG")
    args = ap.parse_args()
    proxies = [Proxy(p, args.log_cap_mib << 20) for p in args.proxies]
    done = []
    signal.signal(signal.SIGTERM, lambda *_: done.append(True))
    started = last_report = time.time()
    with open(args.samples, "a") as samples:
        while not done:
            now = time.time()
            line = []
            for p in proxies:
                rss, fds = p.sample(now, args.kill_mib << 10, args.stop_file)
                p.read_log(BUDGET)
                samples.write(f"{now:.2f} {p.name} {rss} {fds}\n")
                line.append(f"{p.name} RSS {rss // 1024} MiB (max {p.rss_max // 1024}), {fds} fds, {p.max_sid - len(p.ended)} sessions open")
            if now - last_report >= args.report:
                last_report = now
                print(f"soak: {now - started:.0f} s: " + "; ".join(line), file=sys.stderr, flush=True)
            time.sleep(args.every)
    for p in proxies:
        while p.read_log(BUDGET):
            pass
    with open(args.out, "w") as f:
        json.dump({p.name: p.summary() for p in proxies}, f)


if __name__ == "__main__":
    main()
