"""Resolves SenML packs with PyPI's `senml` library (cbor2 reads the CBOR form).

Reads one pack a line on stdin, `json <SenML JSON text>` or `cbor <hex>`, and prints
each resolved record as `<name> <value as JSON>` (name = base name + name, RFC 8428
section 4.5.1), then `END` after each pack. Used by tests/interop_senml.rs.
"""

import json
import sys

import cbor2
from senml import SenMLDocument

# RFC 8428 section 6, Table 6: the CBOR labels of the JSON fields.
CBOR_LABELS = {
    -1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
    0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd",
}


def records(kind, text):
    if kind == "json":
        return json.loads(text)
    if kind == "cbor":
        pack = cbor2.loads(bytes.fromhex(text))
        return [{CBOR_LABELS.get(k, k): v for k, v in rec.items()} for rec in pack]
    raise ValueError(f"unknown kind {kind!r}")


def resolve(pack):
    """The library reads the base fields of a pack's first record; a base name
    applies until the next one, so each run of records from one `bn` on is a pack."""
    runs = []
    for rec in pack:
        if "bn" in rec or not runs:
            runs.append([])
        runs[-1].append(rec)
    for run in runs:
        doc = SenMLDocument.from_json(run)
        for m in doc.measurements:
            yield m.to_absolute(doc.base)


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        kind, _, text = line.partition(" ")
        for m in resolve(records(kind, text)):
            print(m.name, json.dumps(m.value))
        print("END", flush=True)


if __name__ == "__main__":
    main()
