"""Drives one LwM2M device through the gateway with PyPI's emqxlwm2m, unchanged.

    python emqxlwm2m_check.py --host 127.0.0.1 --port 1883 --ep ENDPOINT

Uses the library's public API (EMQxEngine.via_mqtt, engine.endpoint(), and the
endpoint's read/write/discover/observe), which publishes commands to
lwm2m/{ep}/dn and matches the gateway's replies by reqID. The device is expected
to be the lwm2m-node-lib client of tests/interop/node (objects /3/0 and /3303/0).

Prints one line per step: "OK <step> <detail>" or "FAIL <step> <detail>". Once
subscribed it prints "SUBSCRIBED" and waits for the device's registration: the test
then starts the device. After the observe response it prints "OBSERVING" and waits
for notifications: the test then changes /3303/0/5700 on the device to 25.5 and
26.5. Exits 0 when every step passed.
"""

import argparse
import logging
import sys
import time

from emqxlwm2m.engines.emqx import EMQxEngine
from emqxlwm2m.lwm2m import CoAPResponseCode

failures = []


def report(ok, step, detail):
    print(("OK " if ok else "FAIL ") + step + " " + detail, flush=True)
    if not ok:
        failures.append(step)


def check(step, got, want):
    report(got == want, step, f"got {got!r} want {want!r}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--ep", required=True)
    p.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    engine = EMQxEngine.via_mqtt(host=args.host, port=args.port, timeout=args.timeout)
    with engine:
        if not engine.connected_once.is_set():
            report(False, "connect", f"no MQTT connection to {args.host}:{args.port}")
            return 1
        ep = engine.endpoint(args.ep)
        regs = ep.registrations()
        # The subscription to lwm2m/{ep}/# is sent asynchronously; give the
        # broker a moment before the device registers.
        time.sleep(0.3)
        print("SUBSCRIBED", flush=True)

        # register: the gateway's register message, parsed by emqxlwm2m
        try:
            reg = regs.get(timeout=args.timeout)
        except Exception as e:  # queue.Empty
            report(False, "register", f"no registration: {type(e).__name__}")
            return 1
        check(
            "register",
            (reg.ep, reg.lt, reg.lwm2m, reg.b, reg.alternate_path, list(reg.object_list)),
            (args.ep, 300, "1.0", "U", "/", ["/3/0", "/3303/0"]),
        )

        # read
        r = ep.read("/3/0/1")
        check("read-code", r.code, CoAPResponseCode.Content)
        check("read", r.value, "Lightweight M2M Client")
        r = ep.read("/3303/0/5700")
        check("read-float", r.value, 21.5)

        # write a String, then read it back
        w = ep.write("/3/0/15", "Europe/Paris")
        check("write", w.code, CoAPResponseCode.Changed)
        check("write-readback", ep.read("/3/0/15").value, "Europe/Paris")

        # discover
        d = ep.discover("/3/0")
        check("discover-code", d.code, CoAPResponseCode.Content)
        paths = sorted(str(k) for k in d.data)
        want = ["/3/0", "/3/0/0", "/3/0/1", "/3/0/14", "/3/0/15", "/3/0/2", "/3/0/3"]
        check("discover", paths, want)

        # observe: the first value comes in the response, changes as notifications
        o = ep.observe("/3303/0/5700")
        check("observe-code", o.code, CoAPResponseCode.Content)
        check("observe", o.value, 21.5)
        print("OBSERVING", flush=True)
        seqs = []
        for want in (25.5, 26.5):
            try:
                n = o.notifications.get(timeout=args.timeout)
            except Exception as e:  # queue.Empty
                report(False, "notify", f"no notification for {want}: {type(e).__name__}")
                break
            check("notify", (str(n.req_path), n.value), ("/3303/0/5700", want))
            seqs.append(n.seq_num)
        if len(seqs) == 2:
            report(seqs[0] < seqs[1], "notify-seq", f"seqNum {seqs}")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        code = main()
    except Exception as e:
        print(f"FAIL exception {type(e).__name__}: {e}", flush=True)
        code = 1
    print("DONE " + ("ok" if code == 0 else "failed: " + ",".join(failures)), flush=True)
    sys.exit(code)
