"""`jvpcli compute --junit-xml`: one test case per run, failures, skips, and the JUnit schema.

Reports are checked two ways: against the rules of the Jenkins xUnit plugin's junit-10.xsd
(tests/data/junit-10.xsd), re-stated here with xml.etree so that they need no dependency, and,
when xmlschema is installed, by validating against the XSD itself.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from jvpcli.cli import app

XSD = Path(__file__).resolve().parent / "data" / "junit-10.xsd"

FUNCTIONS = """
import torch


def smooth(x):
    return x.sin() * x


def boom(x):
    raise ValueError("gave up \\x00\\x1b[31m with control characters")


def halve(x):
    return x / 2
"""


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory: fns.py, x and v ({x}: (3,)), golden.safetensors for smooth that
    is wrong in jvp[1]."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fns.py").write_text(FUNCTIONS)
    x, v = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 2.0, -1.0])
    save_file({"x": x}, tmp_path / "x.safetensors")
    save_file({"x": v}, tmp_path / "v.safetensors")
    func_output, jvp = torch.autograd.functional.jvp(lambda t: t.sin() * t, x, v)
    jvp[1] += 1
    save_file({"func_output": func_output, "jvp": jvp}, tmp_path / "golden.safetensors")
    return tmp_path


SWEEP = """
inputs: x.safetensors
v: v.safetensors
output: results/{name}.safetensors
runs:
  - {name: fine, function: fns.py:smooth}
  - {name: off-golden, function: fns.py:smooth, expect: golden.safetensors}
  - {name: broken, function: fns.py:boom}
  - {name: last, function: fns.py:halve}
"""


def write_config(folder: Path, text: str, name: str = "ci.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def cases(report: Path) -> dict[str, ElementTree.Element]:
    return {case.get("name", ""): case for case in ElementTree.parse(report).iter("testcase")}


# --------------------------------------------------------------------------------------------
# The schema: junit-10.xsd's rules, restated


TIME = re.compile(r"(([0-9]{0,3},)*[0-9]{3}|[0-9]{0,3})*(\.[0-9]*)?")  # SUREFIRE_TIME
ALLOWED = {
    "testsuites": ({"name", "time", "tests", "failures", "errors"}, set(), {"testsuite"}),
    "testsuite": (
        {
            "name", "tests", "failures", "errors", "group", "time", "skipped", "timestamp",
            "hostname", "id", "package", "file", "log", "url",
        },
        {"name", "tests", "failures", "errors"},
        {"testsuite", "properties", "testcase", "system-out", "system-err"},
    ),
    "properties": (set(), set(), {"property"}),
    "property": ({"name", "value"}, {"name", "value"}, set()),
    "testcase": (
        {"name", "time", "classname", "group"},
        {"name"},
        {"skipped", "error", "failure", "system-out", "system-err"},
    ),
    "failure": ({"type", "message"}, set(), set()),
    "error": ({"type", "message"}, set(), set()),
    "skipped": ({"type", "message"}, set(), set()),
    "system-out": (set(), set(), set()),
    "system-err": (set(), set(), set()),
}  # fmt: skip


def assert_follows_the_junit_schema(report: Path) -> None:
    """junit-10.xsd's rules for what jvpcli writes: allowed and required attributes, allowed
    children, time formats; plus that the counts add up."""
    root = ElementTree.parse(report).getroot()
    assert root.tag == "testsuites"
    for element in root.iter():
        allowed, required, children = ALLOWED[element.tag]
        assert set(element.attrib) <= allowed, element.tag
        assert required <= set(element.attrib), element.tag
        assert {child.tag for child in element} <= children, element.tag
        if element.tag in ("testsuites", "testsuite") and "time" in element.attrib:
            assert TIME.fullmatch(element.attrib["time"])
    for suite in root.iter("testsuite"):
        testcases = suite.findall("testcase")
        assert int(suite.get("tests", "")) == len(testcases)
        for kind, attribute in (
            ("failure", "failures"),
            ("error", "errors"),
            ("skipped", "skipped"),
        ):
            assert int(suite.get(attribute, "0")) == sum(
                c.find(kind) is not None for c in testcases
            )
        for case in testcases:
            float(case.get("time", "0"))


def assert_valid_against_the_xsd(report: Path) -> None:
    xmlschema = pytest.importorskip("xmlschema")
    xmlschema.XMLSchema(XSD).validate(report)


# --------------------------------------------------------------------------------------------
# Content


def test_one_testcase_per_run_with_a_failure_for_each_failed_run_or_check(
    workspace: Path,
) -> None:
    config = write_config(workspace, SWEEP)
    report = workspace / "reports" / "jvp.xml"
    result = invoke("compute", config, "--junit-xml", report)
    assert result.exit_code == 1  # as without --junit-xml
    assert_follows_the_junit_schema(report)
    assert_valid_against_the_xsd(report)
    suite = ElementTree.parse(report).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("name"), suite.get("tests"), suite.get("failures")) == ("ci", "4", "2")
    by_name = cases(report)
    assert list(by_name) == ["fine", "off-golden", "broken", "last"]
    assert {case.get("classname") for case in by_name.values()} == {"ci"}
    fine = by_name["fine"]
    assert fine.find("failure") is None and fine.find("skipped") is None
    assert "method: auto (used: forward)" in (fine.findtext("system-out") or "")
    (golden,) = by_name["off-golden"].findall("failure")
    assert golden.get("type") == "golden"
    assert "jvp: 1 of 3 elements beyond the bound" in (golden.get("message") or "")
    assert "largest absolute error 1 at index (1,)" in (golden.get("message") or "")
    (broken,) = by_name["broken"].findall("failure")
    assert broken.get("type") == "ComputeError"
    assert "gave up" in (broken.get("message") or "")
    assert "fns.py:10, in boom" in (broken.text or "")
    assert float(by_name["last"].get("time", "")) > 0


def test_runs_not_run_and_outputs_up_to_date_are_skipped(workspace: Path) -> None:
    config = write_config(workspace, SWEEP)
    report = workspace / "jvp.xml"
    assert invoke("compute", config, "--fail-fast", "--junit-xml", report).exit_code == 1
    assert_follows_the_junit_schema(report)
    assert_valid_against_the_xsd(report)
    skipped = cases(report)["broken"].find("skipped")
    assert skipped is not None
    assert "--fail-fast" in (skipped.get("message") or "")

    single = write_config(workspace, "function: fns.py:smooth\n" + SWEEP.split("runs:")[0])
    assert invoke("compute", single, "-q").exit_code == 0
    assert invoke("compute", single, "--resume", "--junit-xml", report).exit_code == 0
    assert_follows_the_junit_schema(report)
    (case,) = cases(report).values()
    assert "--resume" in (case.find("skipped").get("message") or "")  # type: ignore[union-attr]


def test_an_unusable_config_is_an_error_testcase_and_keeps_exit_code_2(workspace: Path) -> None:
    config = write_config(workspace, SWEEP + "metod: forward\n")
    report = workspace / "jvp.xml"
    result = invoke("compute", config, "--junit-xml", report)
    assert result.exit_code == 2
    assert_follows_the_junit_schema(report)
    assert_valid_against_the_xsd(report)
    (case,) = cases(report).values()
    error = case.find("error")
    assert (case.get("name"), error.get("type")) == ("config", "ConfigError")  # type: ignore[union-attr]
    assert "unknown key 'metod'" in (error.get("message") or "")  # type: ignore[union-attr]
    assert not (workspace / "results").exists()


def test_control_characters_in_messages_stay_valid_xml(workspace: Path) -> None:
    config = write_config(workspace, SWEEP)
    report = workspace / "jvp.xml"
    invoke("compute", config, "--junit-xml", report)
    assert_valid_against_the_xsd(report)
    message = cases(report)["broken"].find("failure").get("message")  # type: ignore[union-attr]
    assert "gave up \\x00\\x1b[31m with control characters" in (message or "")


def test_the_report_replaces_the_old_one_atomically(workspace: Path) -> None:
    report = workspace / "jvp.xml"
    report.write_text("old")
    config = write_config(workspace, "function: fns.py:smooth\n" + SWEEP.split("runs:")[0])
    assert invoke("compute", config, "--junit-xml", report).exit_code == 0
    assert list(cases(report)) == ["ci"]
    assert sorted(p.name for p in workspace.iterdir() if p.name.endswith(".tmp")) == []


def test_a_report_path_that_is_a_folder_is_a_usage_error(workspace: Path) -> None:
    config = write_config(workspace, SWEEP)
    result = invoke("compute", config, "--junit-xml", workspace)
    assert result.exit_code == 2
    assert "is a folder" in result.stderr
    assert not (workspace / "results").exists()


def test_suite_properties_name_the_version_config_and_shard(workspace: Path) -> None:
    config = write_config(workspace, SWEEP)
    report = workspace / "jvp.xml"
    invoke("compute", config, "--junit-xml", report, "--shard", "1/2")
    properties = {p.get("name"): p.get("value") for p in ElementTree.parse(report).iter("property")}
    assert properties["shard"] == "1/2"
    assert properties["config"] == "ci.yaml"
    assert list(cases(report)) == ["fine", "broken"]
