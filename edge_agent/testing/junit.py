"""JUnit XML for a pipeline's test view (GitHub, GitLab, Jenkins, Azure read the same few
elements): one ``testcase`` per case, its diff in ``failure``, a case that could not run (or
a case file with mistakes) as ``error``, the agent's log in ``system-out``."""

from __future__ import annotations

import os
import re
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from edge_agent.testing.run import CaseResult

SUITE = "edge-agent test"
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(s: str) -> str:
    """XML 1.0 has no way to write most control characters (a scanner's garbage in a log
    line): shown as their code instead."""
    return _NOT_XML.sub(lambda m: f"<0x{ord(m.group()):02x}>", s)


def junit_xml(results: Sequence[CaseResult], seconds: float) -> bytes:
    failures = sum(r.status == "failed" for r in results)
    errors = sum(r.status == "error" for r in results)
    counts = {
        "tests": str(len(results)),
        "failures": str(failures),
        "errors": str(errors),
        "skipped": "0",
        "time": f"{seconds:.3f}",
    }
    root = ET.Element("testsuites", {"name": SUITE, **counts})
    suite = ET.SubElement(
        root,
        "testsuite",
        {
            "name": SUITE,
            **counts,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
            "hostname": socket.gethostname(),
        },
    )
    for r in results:
        name = r.ref.name
        group = name.rsplit("/", 1)[0].replace("/", ".") if "/" in name else "cases"
        case = ET.SubElement(
            suite,
            "testcase",
            {
                "classname": f"edge-agent.{group}",
                "name": name,
                "file": str(r.ref.file),
                "time": f"{r.seconds:.3f}",
            },
        )
        if r.status != "passed":
            tag = "failure" if r.status == "failed" else "error"
            element = ET.SubElement(case, tag, {"message": _text(r.message), "type": tag})
            element.text = _text("\n\n".join([r.message, *r.details, *r.notes]) + "\n")
        if r.log:
            ET.SubElement(case, "system-out").text = _text("\n".join(r.log) + "\n")
    ET.indent(root)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True)) + b"\n"


def write_junit(path: str | Path, results: Sequence[CaseResult], seconds: float) -> None:
    """Write atomically: a pipeline never reads half a report."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(junit_xml(results, seconds))
    os.replace(tmp, target)
