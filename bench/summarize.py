#!/usr/bin/env python3
"""Turns the loadgen reports of one bench/run.sh run into results/<stamp>.json and .md.

usage: summarize.py REPORT_DIR OUT_PREFIX SECONDS PARAMS LOADAVG_START LOADAVG_END
"""
import json
import os
import platform
import subprocess
import sys

src, out, seconds, params = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
load_start, load_end = (sys.argv[5], sys.argv[6]) if len(sys.argv) > 6 else ("?", "?")


def load(name):
    try:
        with open(os.path.join(src, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"error": "no report"}


def get(d, *path):
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def mem_kb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 0


def git_rev():
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except Exception:
        return "unknown"


STORMS = ["storm-2", "storm-1", "storm-pe", "storm-emb", "storm-emb-pe"]
STORM_LABELS = {
    "storm-2": "Mosquitto, wildcard, 2 shards",
    "storm-1": "Mosquitto, wildcard, 1 shard",
    "storm-pe": "Mosquitto, per_endpoint, 2 shards",
    "storm-emb": "embedded broker, wildcard, 2 shards",
    "storm-emb-pe": "embedded broker, per_endpoint, 2 shards",
}
NOTIFIES = ["notify-2", "notify-1", "notify-half", "notify-con"]
names = ["broker", "storm-2", "storm-1", "storm-pe", "storm-emb", "storm-emb-pe", "cmd-peak", "cmd-half", "cmd-mix", "cmd-floor", "queue", "dtls", "notify-2",
         "notify-1", "notify-half", "notify-con", "echo-rate", "echo-max"]
# A scenario that SCENARIOS left out has no report file: it is "not run", not failed.
ran = {n: os.path.exists(os.path.join(src, n + ".json")) for n in names}
raw = {n: load(n) for n in names}
steal = {n: load(n + ".steal").get("steal_pct") for n in names}
# Mosquitto's CPU over each storm with Mosquitto as the broker (it also carries the
# loadgen's subscriber).
broker_cpu_ms = {n: load(n + ".mosquitto").get("cpu_ms") for n in STORMS}

machine = {
    "cores": os.cpu_count(),
    "model": cpu_model(),
    "kernel": platform.release(),
    "mem_total_kb": mem_kb(),
    "loadavg_start": load_start,
    "loadavg_end": load_end,
}


def ratio(a, b):
    return a / b if a is not None and b else None


broker_rate = get(raw["broker"], "end_to_end_rate_per_s")
e2e_rate = get(raw["notify-2"], "steady", "mqtt_notify_rate_per_s")
gw_cpu_note = get(raw["notify-2"], "watch", "cpu_us_per_notification")
echo_cpu = get(raw["echo-rate"], "watch", "cpu_us_per_echo")
echo_max_cpu = get(raw["echo-max"], "watch", "cpu_us_per_echo")
storm = raw["storm-2"]
reg_ok = get(storm, "registration", "ok")
reg_rate = get(storm, "registration", "rate_per_s")
rss_per_ep = get(storm, "watch", "rss_bytes_per_endpoint")
half_p99 = get(raw["cmd-half"], "commands", "rtt", "p99_us")
floor_p99 = get(raw["cmd-floor"], "rtt", "p99_us")

ratios = {
    "gateway_cpu_us_per_notification": gw_cpu_note,
    "echo_cpu_us_per_request": echo_cpu,
    "cpu_per_notification_over_echo": ratio(gw_cpu_note, echo_cpu),
    "echo_max_cpu_us_per_request": echo_max_cpu,
    "cpu_per_notification_over_echo_max": ratio(gw_cpu_note, echo_max_cpu),
    "end_to_end_notify_rate": e2e_rate,
    "broker_rate": broker_rate,
    "end_to_end_over_broker": ratio(e2e_rate, broker_rate),
    "command_p99_us": half_p99,
    "mqtt_relay_floor_p99_us": floor_p99,
    "command_p99_over_floor": ratio(half_p99, floor_p99),
}


def target(name, want, measured, met, needs):
    """A target measured by the scenarios `needs`; `met` is None when one of them did not run."""
    if not all(ran[n] for n in needs):
        return {"target": name, "want": want, "measured": None, "met": None}
    return {"target": name, "want": want, "measured": measured, "met": bool(met)}


devices = get(storm, "registration", "devices")
targets = [
    target("1,000,000 registered endpoints", "1000000 registered", f"{reg_ok} of {devices} registered",
           reg_ok is not None and reg_ok >= 1_000_000, ["storm-2"]),
    target("memory per endpoint (RSS growth)", "<= 1024 bytes",
           None if rss_per_ep is None else f"{rss_per_ep:.0f} bytes",
           rss_per_ep is not None and rss_per_ep <= 1024, ["storm-2"]),
    target("registration storm", ">= 50000/s sustained",
           None if reg_rate is None else f"{reg_rate:.0f}/s", reg_rate is not None and reg_rate >= 50_000,
           ["storm-2"]),
    target("gateway CPU per notification / echo CPU per request", "<= 2.0",
           None if ratios["cpu_per_notification_over_echo"] is None else f"{ratios['cpu_per_notification_over_echo']:.2f}",
           ratios["cpu_per_notification_over_echo"] is not None and ratios["cpu_per_notification_over_echo"] <= 2.0,
           ["notify-2", "echo-rate"]),
    target("end-to-end notification rate / broker's own rate", ">= 0.80",
           None if ratios["end_to_end_over_broker"] is None else f"{ratios['end_to_end_over_broker']:.2f}",
           ratios["end_to_end_over_broker"] is not None and ratios["end_to_end_over_broker"] >= 0.8,
           ["notify-2", "broker"]),
    target("command round trip p99 at half of peak", "< 2000 µs",
           None if half_p99 is None else f"{half_p99} µs", half_p99 is not None and half_p99 < 2000,
           ["cmd-half"]),
]



def delivered(n):
    """What reached an MQTT subscriber against what the gateway acknowledged to devices: for
    a storm, distinct endpoints seen in register messages / registrations answered 2.01; for
    notifications, those on MQTT / those acknowledged (CON) or sent (NON, no acknowledgement).
    `must`: below 1.0 is a failure (registrations, CON notifications)."""
    r = raw[n]
    if n in STORMS:
        reg = get(r, "registration") or {}
        got, base, what = reg.get("mqtt_registered_endpoints"), reg.get("ok"), "registrations answered 2.01"
        must = True
    else:
        st = get(r, "steady") or {}
        con = st.get("notify_con")
        got = st.get("mqtt_notify_received")
        base = st.get("notify_acked") if con else st.get("notify_sent")
        what = "CON notifications acknowledged" if con else "NON notifications sent"
        must = bool(con)
    ratio_ = None if got is None or not base else got / base
    return {"scenario": n, "on_mqtt": got, "acknowledged": base, "of": what, "ratio": ratio_, "must_be_100": must}


delivery = {n: delivered(n) for n in STORMS + NOTIFIES if ran[n]}
for n, d in delivery.items():
    if d["must_be_100"]:
        targets.append(target(f"MQTT delivered ratio, {n}", "100%",
                              None if d["ratio"] is None else f"{100 * d['ratio']:.2f}% ({d['on_mqtt']} of {d['acknowledged']})",
                              d["ratio"] is not None and d["ratio"] >= 1.0, [n]))
# After a per-endpoint storm, commands to a sample of the registered devices: each is
# answered only if its device's subscription is in place.
sampled = {}
for n in ["storm-pe", "storm-emb-pe"]:
    c = get(raw[n], "commands") if ran[n] else None
    if c:
        sampled[n] = {"sent": c.get("sent"), "answered": c.get("answered")}
        targets.append(target(f"commands to a sample after the storm answered, {n}", "all",
                              f"{c.get('answered')} of {c.get('sent')}",
                              bool(c.get("sent")) and c.get("answered") == c.get("sent"), [n]))
# The per-endpoint storm against an external broker (issue 17, point 1): every device
# registered (a device answered 5.03 while the broker's SUBACKs lag registers again after
# Max-Age, as a real client does) at the storm's rate, retries included.
pe = get(raw["storm-pe"], "registration") if ran["storm-pe"] else None
if pe:
    pe_ok, pe_n, pe_rate = pe.get("ok"), pe.get("devices"), pe.get("rate_per_s")
    targets.append(target("per-endpoint storm: every device registered, storm-pe", "all",
                          f"{pe_ok} of {pe_n} ({pe.get('retried', 0)} Registers retried after 5.03)",
                          pe_ok is not None and pe_ok == pe_n, ["storm-pe"]))
    targets.append(target("per-endpoint storm rate, storm-pe", ">= 50000/s",
                          None if pe_rate is None else f"{pe_rate:.0f}/s",
                          pe_rate is not None and pe_rate >= 50_000, ["storm-pe"]))
cmd_cpu = {n: get(raw[n], "watch", "cpu_us_per_command") for n in ["cmd-peak", "cmd-half", "cmd-mix"]}

result = {
    "date_utc": os.path.basename(out),
    "git": git_rev(),
    "machine": machine,
    "seconds": seconds,
    "params": params,
    "ratios": ratios,
    "targets": targets,
    "mqtt_delivered": delivery,
    "storm_sample_commands": sampled,
    "cmd_cpu_us_per_command": cmd_cpu,
    "not_run": [n for n in names if not ran[n]],
    "reports": raw,
    "steal_pct": steal,
}
with open(out + ".json", "w") as f:
    json.dump(result, f, indent=2)


def fmt(v, digits=0, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}{unit}"
    return f"{v:,}{unit}"


NOT_RUN = "not run"


def lat(p):
    if not p or not p.get("count"):
        return "-"
    return f"{p['p50_us']} / {p['p90_us']} / {p['p99_us']} / {p['p999_us']} / {p['max_us']}"


L = []
L.append(f"# Benchmark {os.path.basename(out)} (UTC)\n")
L.append(f"Machine: {machine['cores']} cores, {machine['model']}, kernel {machine['kernel']}, "
         f"{machine['mem_total_kb'] // 1024} MiB RAM. Commit `{result['git']}`. "
         f"Gateway, Mosquitto and the loadgen all share this machine (load average {load_start} at the "
         f"start, {load_end} at the end: other work on the machine counts in it). Run time {seconds} s.\n")
L.append(f"Parameters: `{params}`. Produced by `bench/run.sh`; raw loadgen reports in the .json file.\n")
if result["not_run"]:
    L.append(f"Not run (SCENARIOS left them out): {', '.join(result['not_run'])}.\n")
L.append("Host steal time (the share of this VM's CPU time the hypervisor gave to others, from "
         "/proc/stat, per scenario): " + ", ".join(f"{n} {steal[n]:.0f}%" for n in names
                                                   if steal.get(n) is not None) + ".\n")
L.append("## Targets\n")
L.append("| target | wanted | measured | met |")
L.append("|---|---|---|---|")
for t in targets:
    met = NOT_RUN if t["met"] is None else "yes" if t["met"] else "**no**"
    L.append(f"| {t['target']} | {t['want']} | {t['measured'] or '-'} | {met} |")
L.append("")
L.append("## Ratios (baselines measured in the same run)\n")
L.append("| quantity | value |")
L.append("|---|---|")
L.append(f"| gateway CPU µs per notification delivered (2 shards) | {fmt(gw_cpu_note, 2)} |")
L.append(f"| echo server CPU µs per datagram echoed, at the same rate | {fmt(echo_cpu, 2)} |")
L.append(f"| ratio | {fmt(ratios['cpu_per_notification_over_echo'], 2)} |")
L.append(f"| echo server CPU µs per datagram at full speed (bigger batches) | {fmt(echo_max_cpu, 2)} |")
L.append(f"| ratio to that | {fmt(ratios['cpu_per_notification_over_echo_max'], 2)} |")
L.append(f"| end-to-end notifications/s on MQTT (2 shards) | {fmt(e2e_rate)} |")
L.append(f"| broker's own publish→subscriber rate/s (QoS 0, 150 B) | {fmt(broker_rate)} |")
L.append(f"| ratio | {fmt(ratios['end_to_end_over_broker'], 2)} |")
L.append("")
L.append("## MQTT delivered ratio\n")
L.append("What reached an MQTT subscriber against what the gateway acknowledged to devices. Registrations "
         "and CON notifications must be 100% (the run fails otherwise); NON notifications offered above "
         "capacity may be shed before they are read.\n")
L.append("| scenario | on MQTT | of | ratio | must be 100% |")
L.append("|---|---|---|---|---|")
for n in STORMS + NOTIFIES:
    if not ran[n]:
        L.append(f"| {n} | {NOT_RUN} | | | |")
        continue
    d = delivery[n]
    r_ = "-" if d["ratio"] is None else f"{100 * d['ratio']:.2f}%"
    L.append(f"| {n} | {fmt(d['on_mqtt'])} | {fmt(d['acknowledged'])} {d['of']} | {r_} | "
             f"{'yes' if d['must_be_100'] else 'no'} |")
L.append("")
L.append("## Registration storms\n")
L.append("| storm | registered / devices | registrations/s | timeouts / retransmissions | latency µs p50/p90/p99/p99.9/max | "
         "gateway CPU µs per registration | RSS growth per endpoint, bytes | Mosquitto / loadgen CPU µs per registration |")
L.append("|---|---|---|---|---|---|---|---|")
for n in STORMS:
    if not ran[n]:
        L.append(f"| {n} ({STORM_LABELS[n]}) | {NOT_RUN} | | | | | | |")
        continue
    reg = get(raw[n], "registration") or {}
    mq = broker_cpu_ms.get(n)
    mq_per = None if mq is None or not reg.get("ok") else mq * 1000 / reg["ok"]
    L.append(f"| {n} ({STORM_LABELS[n]}) | {fmt(reg.get('ok'))} / {fmt(reg.get('devices'))} | {fmt(reg.get('rate_per_s'))} | "
             f"{fmt(reg.get('timed_out'))} / {fmt(reg.get('retransmissions'))} | {lat(reg.get('latency'))} | "
             f"{fmt(get(raw[n], 'watch', 'cpu_us_per_registration'), 2)} | {fmt(get(raw[n], 'watch', 'rss_bytes_per_endpoint'))} | "
             f"{fmt(mq_per, 2)} / {fmt(reg.get('loadgen_cpu_us_per_registration'), 2)} |")
L.append("")
L.append("Mosquitto's CPU is over the whole scenario (the storm and the wait for its register "
         "messages, and for storm-pe the sample commands), the loadgen's over its registration phase.")
L.append("")
L.append("## 1 shard and 2 shards side by side\n")
L.append("| | 2 shards | 1 shard |")
L.append("|---|---|---|")
rows = [
    ("storm", "registrations ok / devices", lambda s, n: f"{fmt(get(raw['storm-' + s], 'registration', 'ok'))} / {fmt(get(raw['storm-' + s], 'registration', 'devices'))}"),
    ("storm", "registrations/s (target rate " + str(get(raw['storm-2'], 'registration', 'target_rate')) + ")", lambda s, n: fmt(get(raw['storm-' + s], 'registration', 'rate_per_s'))),
    ("storm", "registration timeouts / retransmissions", lambda s, n: f"{fmt(get(raw['storm-' + s], 'registration', 'timed_out'))} / {fmt(get(raw['storm-' + s], 'registration', 'retransmissions'))}"),
    ("storm", "registration latency µs p50/p90/p99/p99.9/max", lambda s, n: lat(get(raw['storm-' + s], 'registration', 'latency'))),
    ("storm", "gateway CPU µs per registration", lambda s, n: fmt(get(raw['storm-' + s], 'watch', 'cpu_us_per_registration'), 2)),
    ("storm", "gateway RSS growth per endpoint, bytes", lambda s, n: fmt(get(raw['storm-' + s], 'watch', 'rss_bytes_per_endpoint'))),
    ("notify", "notifications sent/s (target " + str(get(raw['notify-2'], 'steady', 'notify_target_rate')) + ")", lambda s, n: fmt(get(raw['notify-' + s], 'steady', 'notify_rate_per_s'))),
    ("notify", "notifications on MQTT/s", lambda s, n: fmt(get(raw['notify-' + s], 'steady', 'mqtt_notify_rate_per_s'))),
    ("notify", "notifications lost", lambda s, n: fmt(get(raw['notify-' + s], 'steady', 'notify_lost'))),
    ("notify", "notification latency µs p50/p90/p99/p99.9/max", lambda s, n: lat(get(raw['notify-' + s], 'steady', 'notify_latency'))),
    ("notify", "gateway CPU µs per notification", lambda s, n: fmt(get(raw['notify-' + s], 'watch', 'cpu_us_per_notification'), 2)),
]
for group, label, f in rows:
    cells = [f(s, int(s)) if ran[f"{group}-{s}"] else NOT_RUN for s in ("2", "1")]
    L.append(f"| {label} | {cells[0]} | {cells[1]} |")
L.append("")
h = get(raw["notify-half"], "steady") or {}
if not ran["notify-half"]:
    L.append(f"Below saturation (notify-half): {NOT_RUN}.\n")
else:
    L.append(f"Below saturation (2 shards, offered {fmt(h.get('notify_target_rate'))}/s = half the peak): "
             f"{fmt(h.get('notify_sent'))} sent, {fmt(h.get('mqtt_notify_received'))} on MQTT "
             f"({fmt(h.get('notify_lost'))} lost), {fmt(h.get('mqtt_notify_rate_per_s'))}/s, latency device→MQTT µs "
             f"p50/p90/p99/p99.9/max {lat(h.get('notify_latency'))}, gateway CPU µs per notification "
             f"{fmt(get(raw['notify-half'], 'watch', 'cpu_us_per_notification'), 2)}.\n")
L.append("## Commands (2 shards, fresh gateway)\n")
L.append("| run | target/s | sent | answered | timed out | answered/s | round trip µs p50/p90/p99/p99.9/max | gateway CPU µs per command |")
L.append("|---|---|---|---|---|---|---|---|")
for n in ["cmd-peak", "cmd-half", "cmd-mix"]:
    if not ran[n]:
        L.append(f"| {n} | {NOT_RUN} | | | | | | |")
        continue
    c = get(raw[n], "commands") or {}
    L.append(f"| {n} | {fmt(c.get('target_rate'))} | {fmt(c.get('sent'))} | {fmt(c.get('answered'))} | "
             f"{fmt(c.get('timed_out'))} | {fmt(c.get('rate_per_s'))} | {lat(c.get('rtt'))} | {fmt(cmd_cpu[n], 1)} |")
fl = raw["cmd-floor"]
if not ran["cmd-floor"]:
    L.append(f"| cmd-floor (MQTT relay, no gateway) | {NOT_RUN} | | | | | | |")
else:
    L.append(f"| cmd-floor (MQTT relay, no gateway) | {fmt(fl.get('target_rate'))} | {fmt(fl.get('sent'))} | "
             f"{fmt(fl.get('answered'))} | - | {fmt(fl.get('rate_per_s'))} | {lat(fl.get('rtt'))} | - |")
L.append("")
cr = ratios["command_p99_over_floor"]
L.append(f"Command round trip p99 at half of peak ÷ the MQTT path's own p99 at that rate (cmd-floor: "
         f"the broker twice and a relay client, no gateway and no device): "
         f"{'-' if cr is None else f'{cr:.2f}'}.\n")
def checks(n):
    r = raw[n]
    if not ran[n]:
        return NOT_RUN
    if r.get("passed"):
        return "passed"
    failed = [c.get("name") for c in r.get("checks", []) if not c.get("ok")]
    verdict = "failures allowed" if r.get("failures_allowed") else "**failed**"
    return verdict + (f" ({', '.join(failed)})" if failed else "")


mix = get(raw["cmd-mix"], "commands") or {}
if not ran["cmd-mix"]:
    L.append(f"cmd-mix: {NOT_RUN}.\n")
else:
    L.append(f"cmd-mix: `{mix.get('mix', '-')}`, {fmt(mix.get('errors'))} answered with another code than "
             f"its kind's success code, {fmt(mix.get('duplicates'))} answered twice; checks "
             f"{checks('cmd-mix')}.\n")


def scenario(n, label, text):
    """A list item for scenario `n`: `text()` when it ran, else that it did not."""
    L.append(f"- {label}" + (text() if ran[n] else f": {NOT_RUN}."))


L.append("## Queue mode and DTLS (2 shards)\n")
q, qr = raw["queue"], get(raw["queue"], "queue") or {}
qc = get(q, "commands") or {}
scenario("queue", "Queue mode", lambda: (
    f" ({fmt(get(q, 'devices'))} devices, LwM2M {qr.get('lwm2m', '-')} `b=UQ`, "
    f"awake window {fmt(qr.get('window_s'), 0)} s): {fmt(qc.get('sent'))} commands, "
    f"{fmt(qr.get('commands_delivered'))} delivered ({fmt(qr.get('commands_held'))} held while the device "
    f"slept, {fmt(qr.get('commands_delivered_asleep'))} reached a sleeping device), "
    f"{fmt(qc.get('answered'))} answered, {fmt(qc.get('timed_out'))} timed out; MQTT → device µs "
    f"p50/p90/p99/p99.9/max {lat(qr.get('queue_latency'))}; checks {checks('queue')}."))
d, dr = raw["dtls"], get(raw["dtls"], "dtls") or {}
dreg = get(d, "registration") or {}
scenario("dtls", "DTLS-PSK", lambda: (
    f" ({fmt(get(d, 'devices'))} devices): {fmt(dr.get('handshakes_ok'))} of "
    f"{fmt(dr.get('handshakes_started'))} handshakes ({fmt(dr.get('handshakes_failed'))} failed), "
    f"handshake µs p50/p90/p99/p99.9/max {lat(dr.get('handshake_latency'))}; "
    f"{fmt(dreg.get('ok'))} registered at {fmt(dreg.get('rate_per_s'))}/s (target "
    f"{fmt(dreg.get('target_rate'))}), gateway CPU µs per handshake + registration "
    f"{fmt(get(d, 'watch', 'cpu_us_per_registration'), 2)}, RSS growth per DTLS endpoint "
    f"{fmt(get(d, 'watch', 'rss_bytes_per_endpoint'))} bytes; updates over DTLS "
    f"{fmt(get(d, 'steady', 'updates_ok'))} of {fmt(get(d, 'steady', 'updates_sent'))}; "
    f"checks {checks('dtls')}."))
L.append("")
L.append("## Baselines\n")
b = raw["broker"]
scenario("broker", "Broker", lambda: (
    f" (Mosquitto, QoS 0, {b.get('size')} B, {b.get('connections')} publisher connections): published "
    f"{fmt(b.get('count'))} at {fmt(b.get('publish_rate_per_s'))}/s, subscriber received {fmt(b.get('received'))} "
    f"({fmt(b.get('lost'))} lost) at {fmt(b.get('end_to_end_rate_per_s'))}/s end to end."))
for n, label in [("echo-rate", "Echo server at the gateway's notification rate"), ("echo-max", "Echo server at full speed")]:
    e = get(raw[n], "echo") or {}
    scenario(n, label, lambda: (
        f": {fmt(e.get('received'))}/{fmt(e.get('sent'))} echoed, {fmt(e.get('rate_per_s'))}/s, "
        f"round trip µs {lat(e.get('rtt'))}, echo server CPU µs per datagram "
        f"{fmt(get(raw[n], 'watch', 'cpu_us_per_echo'), 2)}."))
L.append("")
with open(out + ".md", "w") as f:
    f.write("\n".join(L))
print("\n".join(L))
# A registration or CON notification acknowledged and not delivered fails the run.
short = [n for n, d in delivery.items() if d["must_be_100"] and (d["ratio"] is None or d["ratio"] < 1.0)]
short += [f"{n} (sample commands)" for n, c in sampled.items() if not c["sent"] or c["answered"] != c["sent"]]
if short:
    print(f"MQTT delivered ratio below 100%: {', '.join(short)}", file=sys.stderr)
    sys.exit(1)
