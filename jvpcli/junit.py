"""JUnit XML reports of ``jvpcli compute`` runs, for the test views of CI systems.

The document follows the JUnit schema of Jenkins' xUnit plugin (``junit-10.xsd``), the dialect
GitHub Actions reporters, GitLab and Jenkins read: one ``<testsuite>`` (named after the config)
inside ``<testsuites>``, one ``<testcase>`` per run (named after the run, its ``classname`` the
suite's name, its ``time`` the run's), holding

- a ``<failure>`` for a run that failed (``type`` the error's class), or one per check its
  results failed (``type`` the check: ``golden``, ``finite-differences``, ``finite``), the
  message in the ``message`` attribute and the details in the text;
- ``<skipped>`` for a run that was not run (``--fail-fast``, Ctrl-C) or whose output was up to
  date (``--resume``);
- ``<system-out>``: how it ran (method, device, dtype, seed, output, golden, each check);
- ``<system-err>``: warnings (non-finite values).

That schema allows no properties in a test case: run details are in ``<system-out>``, and the
suite's ``<properties>`` hold what all runs share (versions, config, shard). An error that
stopped the command before its runs (an unusable config or file: exit code 2) is a test case
named ``config`` with an ``<error>``. This module does not import torch.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING
from xml.etree import ElementTree

from jvpcli.errors import Interrupted, JvpcliError, RunsFailed, display_path
from jvpcli.files import write_atomically

if TYPE_CHECKING:
    from jvpcli.config import RunSpec
    from jvpcli.runner import RunFailure, RunResult
    from jvpcli.verify import Check

    RunOutcome = RunResult | RunFailure

__all__ = ["junit_document", "write_junit"]

# Characters XML 1.0 cannot hold, even escaped (control characters, lone surrogates, U+FFFE/F).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def junit_document(
    suite: str,
    runs: Sequence[RunSpec],
    outcomes: Sequence[RunOutcome],
    *,
    error: JvpcliError | None = None,
    seconds: float = 0.0,
    properties: Mapping[str, str] | None = None,
) -> ElementTree.Element:
    """Build the JUnit document of a ``compute`` command.

    Args:
        suite: the test suite's name (and each test case's ``classname``): the config's stem.
        runs: the runs the command was to run, in order.
        outcomes: how each finished (those missing are reported as not run).
        error: the error the command ended with, if any. One that is not a run's own (nor the
            summary of failed runs, nor Ctrl-C) becomes a test case ``config`` with an
            ``<error>``.
        seconds: the command's wall time, for the suite.
        properties: the suite's properties (name → value).

    Returns:
        The ``<testsuites>`` element.
    """
    finished = {outcome.spec.name: outcome for outcome in outcomes}
    if isinstance(error, Interrupted):
        not_run = "not run: the command was interrupted (Ctrl-C or SIGTERM) before it"
    else:
        not_run = "not run: --fail-fast stopped the sweep at its first failure"
    cases = [_testcase(suite, spec, finished.get(spec.name), not_run) for spec in runs]
    own = {id(outcome.error) for outcome in outcomes if outcome.status == "failed"}
    if (
        error is not None
        and id(error) not in own
        and not isinstance(error, (RunsFailed, Interrupted))
    ):
        case = ElementTree.Element("testcase", name="config", classname=_text(suite), time="0.000")
        ElementTree.SubElement(
            case, "error", type=type(error).__name__, message=_text(error.message)
        ).text = _text(str(error))
        cases.append(case)
    counts = {
        kind: str(sum(case.find(kind) is not None for case in cases))
        for kind in ("failure", "error", "skipped")
    }
    root = ElementTree.Element(
        "testsuites",
        name="jvpcli",
        tests=str(len(cases)),
        failures=counts["failure"],
        errors=counts["error"],
        time=_seconds(seconds),
    )
    testsuite = ElementTree.SubElement(
        root,
        "testsuite",
        name=_text(suite),
        tests=str(len(cases)),
        failures=counts["failure"],
        errors=counts["error"],
        skipped=counts["skipped"],
        time=_seconds(seconds),
        timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        hostname=_text(socket.gethostname()),
    )
    if properties:
        listing = ElementTree.SubElement(testsuite, "properties")
        for name, value in properties.items():
            ElementTree.SubElement(listing, "property", name=_text(name), value=_text(value))
    testsuite.extend(cases)
    return root


def write_junit(path: Path, document: ElementTree.Element) -> None:
    """Write a JUnit document to ``path`` (UTF-8, indented), atomically.

    Raises:
        OSError: the file cannot be written.
    """
    ElementTree.indent(document)
    data = ElementTree.tostring(document, encoding="utf-8", xml_declaration=True) + b"\n"
    write_atomically(path, lambda temporary: temporary.write_bytes(data))


def _testcase(
    suite: str, spec: RunSpec, outcome: RunOutcome | None, not_run: str
) -> ElementTree.Element:
    seconds = 0.0 if outcome is None else outcome.total_seconds
    case = ElementTree.Element(
        "testcase", name=_text(spec.name), classname=_text(suite), time=_seconds(seconds)
    )
    if outcome is None:
        ElementTree.SubElement(case, "skipped", message=not_run)
        return case
    result = outcome.result if outcome.status == "failed" else outcome
    if outcome.status == "failed" and result is None:
        ElementTree.SubElement(
            case, "failure", type=type(outcome.error).__name__, message=_text(outcome.error.message)
        ).text = _text(str(outcome.error))
    if result is None:
        return case
    for check in result.checks:
        if check.failed:
            ElementTree.SubElement(
                case, "failure", type=check.name, message=_text(check.message)
            ).text = _text(_check_details(check))
    if outcome.status == "skipped":
        ElementTree.SubElement(
            case, "skipped", message="output up to date (--resume): nothing computed"
        )
    lines = [
        f"function: {spec.function}",
        f"method: {spec.method} (used: {result.method_used})",
        f"device: {result.device}",
        f"dtype: {spec.dtype or 'as stored'}",
        f"seed: {'none' if spec.seed is None else spec.seed}",
        f"deterministic: {str(spec.deterministic).lower()}",
        f"output: {display_path(spec.output)}",
    ]
    if spec.expect is not None:
        lines.append(f"golden: {display_path(spec.expect)}")
    # A failed check's message is in its <failure>.
    lines += [
        f"check {check.name}: {check.status}" + ("" if check.failed else f": {check.message}")
        for check in result.checks
    ]
    ElementTree.SubElement(case, "system-out").text = _text("\n".join(lines))
    warnings = [check.message for check in result.checks if check.status == "warning"]
    if warnings:
        ElementTree.SubElement(case, "system-err").text = _text(
            "\n".join(f"warning: {w}" for w in warnings)
        )
    return case


def _check_details(check: Check) -> str:
    """A failed check's tensors, a line each (its message, when it has none)."""
    lines = []
    for tensor in check.tensors:
        if tensor.status == "passed":
            continue
        line = f"{tensor.name}: {tensor.status}"
        if tensor.max_abs_error is not None:
            line += (
                f", max abs error {tensor.max_abs_error:.6g} at {tensor.max_abs_index}, "
                f"max rel error {tensor.max_rel_error:.6g} at {tensor.max_rel_index}, "
                f"{tensor.mismatched} of {tensor.elements} elements beyond the bound"
            )
        if tensor.message:
            line += f": {tensor.message}"
        lines.append(line)
    return "\n".join(lines) or check.message


def _seconds(seconds: float) -> str:
    # The schema's time is digits and a dot: no exponent, no sign.
    return f"{max(seconds, 0.0):.3f}"


def _text(value: object) -> str:
    """``value`` as text XML 1.0 can hold: the characters it cannot are written as ``\\xNN``."""
    return _NOT_XML.sub(lambda match: f"\\x{ord(match[0]):02x}", str(value))
