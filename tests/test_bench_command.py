"""`jvpcli bench`: every method on a config's own function and tensors, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from jvpcli.cli import app

REPO = Path(__file__).resolve().parent.parent


def bench(*args: str | Path):
    return CliRunner().invoke(app, ["bench", *map(str, args)])


def copied_config(tmp_path: Path, name: str) -> Path:
    """A sample config whose output would land in tmp_path, to show nothing is written."""
    config = tmp_path / name
    text = (REPO / "configs" / name).read_text().replace("../samples/", f"{REPO}/samples/")
    config.write_text(text)
    return config


def test_bench_reports_every_candidate_and_the_fastest_method(tmp_path):
    config = copied_config(tmp_path, "quickstart.yaml")
    result = bench(config, "--repeats", "2", "--json")
    assert result.exit_code == 0, result.output
    (run,) = json.loads(result.stdout)["runs"]
    assert set(run["median_seconds"]) == {
        "forward pass",
        "jvpcli auto",
        "jvpcli forward",
        "jvpcli double-backward",
        "torch.autograd.functional.jvp",
        "torch.func.jvp",
    }
    assert all(seconds > 0 for seconds in run["median_seconds"].values())
    assert run["fastest"] in {"auto", "forward", "double-backward"}
    assert run["median_seconds"]["jvpcli " + run["fastest"]] == min(
        s for name, s in run["median_seconds"].items() if name.startswith("jvpcli ")
    )
    assert run["rounds"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quickstart.yaml"]


def test_bench_shows_a_method_that_fails_and_picks_among_the_others(tmp_path):
    config = copied_config(tmp_path, "custom_function.yaml")
    result = bench(config, "--repeats", "1")
    assert result.exit_code == 0, result.output
    assert "NotImplementedError" in result.stdout
    assert "fastest: forward" not in result.stdout
    assert "fastest:" in result.stdout


def test_bench_takes_the_configs_flags(tmp_path):
    config = copied_config(tmp_path, "adder.yaml")
    result = bench(config, "--repeats", "1", "--set", "strict=true", "--json")
    assert result.exit_code == 0, result.output
    (run,) = json.loads(result.stdout)["runs"]
    assert "torch.func.jvp" not in run["median_seconds"]  # it has no strict mode


def test_bench_of_an_unusable_config_exits_2(tmp_path):
    result = bench(tmp_path / "missing.yaml")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_bench_appears_in_help():
    result = CliRunner().invoke(app, ["--help"])
    assert "bench" in result.stdout
