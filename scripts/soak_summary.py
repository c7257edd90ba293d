#!/usr/bin/env python3
"""Summarises a soak run (scripts/soak.sh): RSS by thirds of the run and every cycle's
checks and latencies, as Markdown on stdout. Exits 1 when a cycle failed its checks
or when RSS kept growing after the warm-up: the last third's mean more than 5% above
the middle third's. (The first third holds the warm-up, the allocator's arenas and
the tables growing to the fleet's size, so it is reported but not judged.)

usage: soak_summary.py RUN.csv RUN.jsonl
"""
import csv
import json
import sys

rows = list(csv.DictReader(open(sys.argv[1])))
rss = [int(r["rss_kib"]) for r in rows if r["rss_kib"]]
n = len(rss) // 3 or 1
first, middle, last = (sum(p) / len(p) for p in (rss[:n], rss[n:2 * n] or rss, rss[2 * n:] or rss))

text, cycles, dec, i = open(sys.argv[2]).read(), [], json.JSONDecoder(), 0
while True:  # the loadgen's reports are pretty-printed, one after another
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        break
    c, i = dec.raw_decode(text, i)
    cycles.append(c)


def get(d, *path):
    for p in path:
        d = d.get(p) if isinstance(d, dict) else None
    return d


growth = 100 * (last - middle) / middle
failed = [k + 1 for k, c in enumerate(cycles) if not c.get("passed")]
totals = {"registrations": 0, "updates": 0, "notifications": 0, "notifications lost": 0,
          "commands": 0, "commands unanswered": 0}
print(f"# Soak {len(rows) * 10} s, {len(cycles)} cycles\n")
print(f"RSS mean by thirds of the run: {first:.0f} KiB (warm-up), {middle:.0f} KiB, {last:.0f} KiB; "
      f"growth after the warm-up {growth:+.1f}% (limit +5%), over the whole run "
      f"{100 * (last - first) / first:+.1f}%; peak {max(rss)} KiB. Cycles failing their checks: "
      f"{', '.join(map(str, failed)) or 'none'}.\n")
print("| cycle | registered | register p99 µs | updates ok | notifications on MQTT / sent | "
      "notification p99 µs | commands answered / sent | command p99 µs | checks |")
print("|---|---|---|---|---|---|---|---|---|")
for k, c in enumerate(cycles):
    reg, st, cm = c.get("registration") or {}, c.get("steady") or {}, c.get("commands") or {}
    totals["registrations"] += reg.get("ok", 0)
    totals["updates"] += st.get("updates_ok", 0)
    totals["notifications"] += st.get("notify_sent", 0)
    totals["notifications lost"] += st.get("notify_lost") or 0
    totals["commands"] += cm.get("sent", 0)
    totals["commands unanswered"] += cm.get("sent", 0) - cm.get("answered", 0)
    print(f"| {k + 1} | {reg.get('ok')}/{reg.get('devices')} | {get(reg, 'latency', 'p99_us')} | "
          f"{st.get('updates_ok')}/{st.get('updates_sent')} | "
          f"{st.get('mqtt_notify_received')}/{st.get('notify_sent')} | {get(st, 'notify_latency', 'p99_us')} | "
          f"{cm.get('answered')}/{cm.get('sent')} | {get(cm, 'rtt', 'p99_us')} | "
          f"{'passed' if c.get('passed') else '**failed**'} |")
print("\nTotals: " + ", ".join(f"{k} {v:,}" for k, v in totals.items()) + ".")
sys.exit(1 if failed or growth > 5 else 0)
