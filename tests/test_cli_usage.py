"""The command line as a user types it: help without placeholders for plain flags, and usage
errors told like jvpcli's own errors (one ``error:`` paragraph, exit 2, a JSON document with
``--json``), through the real console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def jvpcli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jvpcli", *args],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "120", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("command", [[], ["compute"], ["validate"], ["inspect"], ["bench"]])
def test_help_shows_no_value_placeholder_after_plain_flags(command: list[str]) -> None:
    done = jvpcli(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert "<bool>" not in done.stdout
    assert "--help" in done.stdout


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["compute", "--bogus"], "no such option: --bogus. See 'jvpcli compute --help'."),
        (["compute", "configs/quickstart.yaml", "extra"], "unexpected extra argument"),
        (["compute", "-o"], "option '-o' requires an argument"),
        (["validate"], "missing argument 'config'"),
        (["nonsense"], "no such command 'nonsense'"),
        (["compute", "--json", "true"], "config file true does not exist"),
    ],
)
def test_usage_errors_are_one_paragraph_with_exit_2(arguments: list[str], fragment: str) -> None:
    done = jvpcli(*arguments)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("error: ")
    assert fragment in " ".join(done.stderr.split())
    assert "╭" not in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_usage_error_with_json_gets_a_json_error_document() -> None:
    done = jvpcli("compute", "--bogus", "--json")
    assert done.returncode == 2
    document = json.loads(done.stdout)
    assert (document["ok"], document["exit_code"]) == (False, 2)
    assert "--bogus" in document["error"]["message"]


def test_no_command_prints_the_help() -> None:
    done = jvpcli()
    assert done.returncode == 0
    assert "compute" in done.stdout and "Usage" in done.stdout


def test_a_typo_inside_a_nested_set_is_blamed_on_the_set(tmp_path: Path) -> None:
    done = jvpcli("validate", "configs/tiny_mlp.yaml", "--set", "function.inti.hidden=32")
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert message.startswith("error: --set function.inti.hidden=32: unknown key 'function.inti'")
    assert "Did you mean 'init'?" in message
