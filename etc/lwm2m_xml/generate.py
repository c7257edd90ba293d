#!/usr/bin/env python3
"""Generate the shipped LwM2M object definitions from the OMA registry.

Reads the OMA LwM2M registry (one object definition per XML file) and writes,
for each selected object, a reduced file in the same OMA XML shape that keeps
only what the gateway uses: ObjectID, Name, ObjectVersion, LWM2MVersion and
MultipleInstances of the object, and ID, Name, Operations, MultipleInstances
and Type of each resource.  The license header comment of the source file is
copied verbatim; a selected source file without one is an error.

Usage:
    generate.py [--registry DIR] [--out DIR] [--check]

--check writes nothing and exits 1 if the output directory differs from what
would be generated (missing, changed or stale *.xml files).

The output is deterministic: same registry in, same bytes out.
Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

HERE = Path(__file__).resolve().parent
DEFAULT_REGISTRY = HERE.parent.parent.parent / "shared" / "lwm2m-registry"

# LwM2M core objects, then the common IPSO smart-object ranges.
CORE_IDS = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 15, 16]
IPSO_RANGES = [range(3200, 3204), range(3300, 3351)]
# Objects every gateway needs: missing any of these is an error.
REQUIRED_IDS = set(range(0, 8))

SCHEMA_ATTR = "{http://www.w3.org/2001/XMLSchema-instance}noNamespaceSchemaLocation"
DEFAULT_SCHEMA = "http://www.openmobilealliance.org/tech/profiles/LWM2M-v1_1.xsd"

OBJECT_FIELDS = ["Name", "ObjectID", "LWM2MVersion", "ObjectVersion", "MultipleInstances"]
OPTIONAL_OBJECT_FIELDS = {"LWM2MVersion", "ObjectVersion"}
ITEM_FIELDS = ["Name", "Operations", "MultipleInstances", "Type"]


class GenerateError(Exception):
    pass


def selected_ids() -> list[int]:
    ids = list(CORE_IDS)
    for r in IPSO_RANGES:
        ids.extend(r)
    return sorted(set(ids))


def local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def child(elem: ET.Element, name: str) -> ET.Element | None:
    for c in elem:
        if isinstance(c.tag, str) and local(c.tag) == name:
            return c
    return None


def text_of(elem: ET.Element) -> str:
    return "".join(elem.itertext()).strip()


def license_header(raw: str, path: Path) -> str:
    """The comment(s) before the root element, verbatim."""
    start = raw.find("<LWM2M")
    if start < 0:
        raise GenerateError(f"{path}: no <LWM2M> root element")
    comments = re.findall(r"<!--.*?-->", raw[:start], flags=re.S)
    if not comments:
        raise GenerateError(f"{path}: no license header comment")
    return "\n".join(comments)


def convert(path: Path) -> tuple[int, str]:
    raw_bytes = path.read_bytes()
    raw = raw_bytes.decode("utf-8-sig").replace("\r\n", "\n")
    header = license_header(raw, path)
    try:
        root = ET.fromstring(raw_bytes)
    except ET.ParseError as e:
        raise GenerateError(f"{path}: {e}") from e
    if local(root.tag) != "LWM2M":
        raise GenerateError(f"{path}: root element is {root.tag}, not LWM2M")
    objects = [c for c in root if isinstance(c.tag, str) and local(c.tag) == "Object"]
    if len(objects) != 1:
        raise GenerateError(f"{path}: expected one <Object>, found {len(objects)}")
    obj = objects[0]

    schema = root.get(SCHEMA_ATTR, DEFAULT_SCHEMA)
    out = ['<?xml version="1.0" encoding="utf-8"?>', header]
    out.append(
        '<LWM2M xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f"xsi:noNamespaceSchemaLocation={quoteattr(schema)}>"
    )
    object_type = obj.get("ObjectType")
    if object_type is not None:
        out.append(f"\t<Object ObjectType={quoteattr(object_type)}>")
    else:
        out.append("\t<Object>")

    object_id = None
    for field in OBJECT_FIELDS:
        e = child(obj, field)
        if e is None:
            if field in OPTIONAL_OBJECT_FIELDS:
                continue
            raise GenerateError(f"{path}: <Object> has no <{field}>")
        value = text_of(e)
        if field == "ObjectID":
            try:
                object_id = int(value)
            except ValueError as err:
                raise GenerateError(f"{path}: bad ObjectID {value!r}") from err
        out.append(f"\t\t<{field}>{escape(value)}</{field}>")

    resources = child(obj, "Resources")
    if resources is None:
        raise GenerateError(f"{path}: <Object> has no <Resources>")
    items = []
    for item in resources:
        if not isinstance(item.tag, str) or local(item.tag) != "Item":
            continue
        rid = item.get("ID", "").strip()
        if not rid.isdigit():
            raise GenerateError(f"{path}: resource with bad ID {rid!r}")
        lines = [f"\t\t\t<Item ID={quoteattr(rid)}>"]
        for field in ITEM_FIELDS:
            e = child(item, field)
            if e is None:
                raise GenerateError(f"{path}: resource {rid} has no <{field}>")
            lines.append(f"\t\t\t\t<{field}>{escape(text_of(e))}</{field}>")
        lines.append("\t\t\t</Item>")
        items.append((int(rid), lines))
    items.sort(key=lambda x: x[0])
    if items:
        out.append("\t\t<Resources>")
        for _, lines in items:
            out.extend(lines)
        out.append("\t\t</Resources>")
    else:
        out.append("\t\t<Resources/>")
    out.append("\t</Object>")
    out.append("</LWM2M>")
    assert object_id is not None
    return object_id, "\n".join(out) + "\n"


def generate(registry: Path) -> dict[str, str]:
    """File name -> content for every selected object present in the registry."""
    result: dict[str, str] = {}
    for oid in selected_ids():
        src = registry / f"{oid}.xml"
        if not src.is_file():
            if oid in REQUIRED_IDS:
                raise GenerateError(f"{src}: required core object missing")
            continue
        got_id, content = convert(src)
        if got_id != oid:
            raise GenerateError(f"{src}: file defines object {got_id}, expected {oid}")
        result[f"{oid}.xml"] = content
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY)
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--check", action="store_true", help="verify, write nothing")
    args = ap.parse_args(argv)

    try:
        files = generate(args.registry)
    except (GenerateError, OSError, UnicodeDecodeError) as e:
        print(f"generate.py: {e}", file=sys.stderr)
        return 2

    out: Path = args.out
    existing = {p.name for p in out.glob("*.xml")} if out.is_dir() else set()
    stale = sorted(existing - files.keys())
    changed = sorted(
        name
        for name, content in files.items()
        if not (out / name).is_file() or (out / name).read_bytes() != content.encode("utf-8")
    )

    if args.check:
        for name in changed:
            print(f"out of date: {out / name}", file=sys.stderr)
        for name in stale:
            print(f"stale: {out / name}", file=sys.stderr)
        return 1 if changed or stale else 0

    out.mkdir(parents=True, exist_ok=True)
    for name in changed:
        (out / name).write_bytes(files[name].encode("utf-8"))
    for name in stale:
        (out / name).unlink()
    print(
        f"{len(files)} objects in {out} ({len(changed)} written, {len(stale)} removed)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
