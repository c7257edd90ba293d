#!/usr/bin/env python3
"""A broker's SUBSCRIBE rate as the filters held per connection grow.

usage: subscribe-rate.py HOST PORT TOTAL FILTERS_PER_SUBSCRIBE CONNECTIONS

Connects CONNECTIONS MQTT 3.1.1 clients, subscribes TOTAL distinct filters
(`lwm2m/cN-dM/dn/#`, QoS 1) spread evenly over them, FILTERS_PER_SUBSCRIBE per
SUBSCRIBE packet with 64 packets in flight per connection, and prints the rate of
SUBACKed filters every tenth of the way, with the filters each connection then holds.
Python drives the sockets: at small batches (1 filter per packet) the client, not the
broker, may be the limit; compare batches of 50 or more. Used to size the gateway's
default `mqtt.connections` with per-endpoint subscriptions (docs/deployment.md).
"""
import socket, struct, sys, time
host, port, total, per_pkt, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def rl(n):
    out = b''
    while True:
        b = n % 128; n //= 128
        out += bytes([b | (0x80 if n else 0)])
        if not n: return out
def connect(cid):
    s = socket.create_connection((host, port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    vh = b'\x00\x04MQTT\x04\x02\x00\x3c' + struct.pack('>H', len(cid)) + cid
    s.sendall(b'\x10' + rl(len(vh)) + vh); s.recv(4); return s
socks = [connect(b'sr-%d' % i) for i in range(conns)]
bufs = [b''] * conns
def subpkt(pid, filters):
    body = struct.pack('>H', pid) + b''.join(struct.pack('>H', len(f)) + f + b'\x01' for f in filters)
    return b'\x82' + rl(len(body)) + body
def drain(i, block):
    s = socks[i]; s.setblocking(block)
    n = 0
    try:
        d = s.recv(1 << 16)
        bufs[i] += d
    except BlockingIOError:
        return 0
    b = bufs[i]
    while len(b) >= 2:
        # SUBACK: 0x90 len pid codes
        mult, l, j = 1, 0, 1
        while True:
            c = b[j]; l += (c & 127) * mult; mult *= 128; j += 1
            if c < 128: break
        if len(b) < j + l: break
        n += 1; b = b[j + l:]
    bufs[i] = b
    return n
window = 64
t0 = time.time(); sent = [0] * conns; acked = [0] * conns; pid = 1
per_conn = total // conns
mark = t0; step = max(per_conn // 10, 1) * conns; done_filters = 0; last_report = 0
while min(acked) < (per_conn + per_pkt - 1) // per_pkt:
    for i in range(conns):
        while sent[i] - acked[i] < window and sent[i] * per_pkt < per_conn:
            fs = [b'lwm2m/c%d-d%d/dn/#' % (i, sent[i] * per_pkt + k) for k in range(per_pkt)]
            socks[i].sendall(subpkt((sent[i] % 60000) + 1, fs)); sent[i] += 1
        acked[i] += drain(i, False)
    done = sum(min(a * per_pkt, per_conn) for a in acked)
    if done - last_report >= step:
        now = time.time()
        print(f"{done:>8} subs ({done // conns} per conn): {(done - last_report) / (now - mark):8.0f}/s", flush=True)
        mark = now; last_report = done
    time.sleep(0.0002)
el = time.time() - t0
print(f"total {total} in {el:.1f}s: {total / el:.0f}/s, {per_pkt} filters/SUBSCRIBE, {conns} connection(s)")
