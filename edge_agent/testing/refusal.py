"""The verdict of a case that expects its config refused (``expect_refused``): the config is
loaded as ``edge-agent validate`` loads it (when the case is loaded), and each pattern must
find a problem it was refused with. Nothing starts: no simulator, no agent, no broker."""

from __future__ import annotations

import re
import time

from edge_agent.testing.load import RefusalCase
from edge_agent.testing.run import CaseResult

SHOWN = 10
"""Problems listed in a failure's diff."""


def judge_refusal(case: RefusalCase) -> CaseResult:
    """Passed when the config was refused with a problem matching every pattern."""
    began = time.monotonic()
    patterns = case.case.refusal_patterns
    where = f"{case.ref.file}:{case.line}: expect_refused"
    result = CaseResult(case.ref, "passed")
    if case.issues is None:
        result.status = "failed"
        result.message = f"the config {case.config_file} was accepted; it should be refused"
        shown = ", ".join(f"/{p}/" for p in patterns)
        result.details = [f"{where}: expected a problem matching {shown}; validate found none"]
    else:
        lines = [str(i) for i in case.issues]
        unmatched = [p for p in patterns if not any(re.search(p, line) for line in lines)]
        if unmatched:
            result.status = "failed"
            result.message = (
                f"the config was refused, but {len(unmatched)} of {len(patterns)} pattern(s) "
                f"match none of its {len(lines)} problem(s)"
            )
            block = [f"{where}: no problem matches /{p}/" for p in unmatched]
            block.append("  the problems:")
            block += [f"    {line}" for line in lines[:SHOWN]]
            if len(lines) > SHOWN:
                block.append(f"    ... and {len(lines) - SHOWN} more")
            result.details = ["\n".join(block)]
        else:
            result.notes.append(f"refused with {len(lines)} problem(s), as expected")
    result.seconds = time.monotonic() - began
    return result
