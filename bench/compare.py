#!/usr/bin/env python3
"""Side by side: the rounds of bench/compare.sh, before and after.

usage: compare.py DIR   (DIR holds before-N.json and after-N.json, run.sh summaries)
"""
import glob
import json
import os
import statistics
import sys

d = sys.argv[1]


def runs(side):
    out = []
    for f in sorted(glob.glob(os.path.join(d, side + "-*.json"))):
        with open(f) as fh:
            out.append(json.load(fh))
    return out


def get(x, *path):
    for p in path:
        if not isinstance(x, dict):
            return None
        x = x.get(p)
    return x


# (label, report, path, higher is better)
METRICS = [
    ("storm-2 registrations/s", "storm-2", ("registration", "rate_per_s"), True),
    ("storm-2 gateway CPU µs/registration", "storm-2", ("watch", "cpu_us_per_registration"), False),
    ("storm-2 RSS bytes/endpoint", "storm-2", ("watch", "rss_bytes_per_endpoint"), False),
    ("storm-2 register messages on MQTT", "storm-2", ("registration", "mqtt_register_msgs"), True),
    ("storm-1 registrations/s", "storm-1", ("registration", "rate_per_s"), True),
    ("storm-1 gateway CPU µs/registration", "storm-1", ("watch", "cpu_us_per_registration"), False),
    ("cmd-peak commands/s answered", "cmd-peak", ("commands", "rate_per_s"), True),
    ("cmd-half round trip p50 µs", "cmd-half", ("commands", "rtt", "p50_us"), False),
    ("cmd-half round trip p99 µs", "cmd-half", ("commands", "rtt", "p99_us"), False),
    ("cmd-half gateway CPU µs/command", "cmd-half", ("watch", "cpu_us_per_command"), False),
    ("cmd-floor (broker only) p99 µs", "cmd-floor", ("rtt", "p99_us"), False),
    ("notify-2 notifications/s to MQTT", "notify-2", ("steady", "mqtt_notify_rate_per_s"), True),
    ("notify-2 gateway CPU µs/notification", "notify-2", ("watch", "cpu_us_per_notification"), False),
    ("notify-1 notifications/s to MQTT", "notify-1", ("steady", "mqtt_notify_rate_per_s"), True),
    ("notify-half notifications lost", "notify-half", ("steady", "notify_lost"), False),
]


def values(rs, report, path):
    v = [get(r, "reports", report, *path) for r in rs]
    return [x for x in v if isinstance(x, (int, float))]


def fmt(v):
    if not v:
        return "-"
    m = statistics.median(v)
    return f"{m:,.1f} [{min(v):,.1f}..{max(v):,.1f}]"


before, after = runs("before"), runs("after")
print(f"rounds: {len(before)} before, {len(after)} after (median [min..max])\n")
print("| metric | before | after | after/before | beyond noise |")
print("|---|---|---|---|---|")
for label, report, path, higher in METRICS:
    b, a = values(before, report, path), values(after, report, path)
    ratio = "-"
    verdict = "-"
    if b and a and statistics.median(b):
        ratio = f"{statistics.median(a) / statistics.median(b):.3f}"
        # A difference counts when the two sides' ranges do not overlap.
        if max(a) < min(b):
            verdict = "better" if not higher else "worse"
        elif min(a) > max(b):
            verdict = "better" if higher else "worse"
        else:
            verdict = "no (ranges overlap)"
    print(f"| {label} | {fmt(b)} | {fmt(a)} | {ratio} | {verdict} |")
steal = [
    max((v for v in (get(r, "steal_pct") or {}).values() if isinstance(v, (int, float))), default=0)
    for r in before + after
]
print(f"\nhighest steal time of a scenario, per run (%): {steal}")
