"""`jvpcli bench`: every method on a config's own function and tensors, nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console
from typer.testing import CliRunner

from jvpcli.benchmark import Timing
from jvpcli.cli import app
from jvpcli.report import bench_view
from jvpcli.runner import BenchResult

REPO = Path(__file__).resolve().parent.parent


def bench(*args: str | Path):
    return CliRunner().invoke(app, ["bench", *map(str, args)])


def copied_config(tmp_path: Path, name: str) -> Path:
    """A sample config whose output would land in tmp_path, to show nothing is written."""
    config = tmp_path / name
    text = (REPO / "configs" / name).read_text().replace("../samples/", f"{REPO}/samples/")
    config.write_text(text)
    return config


def test_bench_reports_every_candidate_its_spread_and_the_fastest_method(tmp_path):
    config = copied_config(tmp_path, "quickstart.yaml")
    result = bench(config, "--repeats", "3", "--json")
    assert result.exit_code == 0, result.output
    (run,) = json.loads(result.stdout)["runs"]
    candidates = {
        "forward pass",
        "jvpcli auto",
        "jvpcli forward",
        "jvpcli double-backward",
        "torch.autograd.functional.jvp",
        "torch.func.jvp",
    }
    assert set(run["median_seconds"]) == candidates
    for name in candidates:
        low, median, high = (run[f"{k}_seconds"][name] for k in ("min", "median", "max"))
        assert 0 < low <= median <= high
        assert run["spread"][name] >= 0
    jvpcli = {n: s for n, s in run["median_seconds"].items() if n.startswith("jvpcli ")}
    lowest = min(jvpcli, key=jvpcli.get).removeprefix("jvpcli ")
    if run["fastest"] is None:  # a tie within noise names no winner, and says who tied
        assert run["within_noise"][0] == lowest
        assert len(run["within_noise"]) >= 2
    else:
        assert run["fastest"] == lowest
        assert run["within_noise"] == []
    assert set(run["noisy"]) <= candidates
    assert run["rounds"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quickstart.yaml"]


def test_bench_shows_a_method_that_fails_and_picks_among_the_others(tmp_path):
    config = copied_config(tmp_path, "custom_function.yaml")
    result = bench(config, "--repeats", "1")
    assert result.exit_code == 0, result.output
    assert "jvpcli forward failed: NotImplementedError" in result.stdout
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


def view_of(**times: tuple[float, ...]) -> str:
    """What ``jvpcli bench`` prints for made-up rounds (seconds per candidate)."""
    timings = {name: Timing(name, rounds) for name, rounds in times.items()}
    spec = SimpleNamespace(name="run", function="module.py:f")
    console = Console(width=200, record=True)
    console.print(bench_view([BenchResult(spec, timings)]))
    return console.export_text()


FORWARD_ROUNDS = (1.0, 1.0, 1.01, 0.99, 1.0)


def test_bench_names_a_winner_only_outside_the_noise():
    clear = view_of(
        **{
            "forward pass": FORWARD_ROUNDS,
            "jvpcli auto": (2.0, 2.02, 1.98, 2.01, 2.0),
            "jvpcli forward": (3.0, 3.01, 2.99, 3.0, 3.02),
            "torch.func.jvp": (4.0, 4.02, 3.98, 4.0, 4.01),
        }
    )
    assert "fastest: auto, 2.00x the speed of the faster PyTorch API" in clear
    assert "warning" not in clear
    tie = view_of(
        **{
            "forward pass": FORWARD_ROUNDS,
            "jvpcli auto": (2.0, 2.1, 1.9, 2.05, 1.95),
            "jvpcli forward": (2.02, 1.92, 2.12, 1.97, 2.07),
            "torch.func.jvp": (2.03, 2.13, 1.93, 2.08, 1.98),
        }
    )
    assert "fastest: none clearly; auto, forward are within noise of each other" in tie
    peer_tie = view_of(
        **{
            "forward pass": FORWARD_ROUNDS,
            "jvpcli auto": (2.0, 2.1, 1.9, 2.05, 1.95),
            "torch.func.jvp": (2.03, 2.13, 1.93, 2.08, 1.98),
        }
    )
    assert "fastest: auto, within noise of the faster PyTorch API (torch.func.jvp)" in peer_tie


def test_bench_warns_in_one_line_when_rounds_disagree():
    text = view_of(
        **{
            "forward pass": FORWARD_ROUNDS,
            "jvpcli auto": (1.0, 2.0, 1.5, 1.2, 1.8),  # middle half: 1.2-1.8 around 1.5, 40%
        }
    )
    (warning,) = [line for line in text.splitlines() if line.startswith("warning")]
    assert "more than 20% (jvpcli auto 40%)" in warning
    assert "busy" in warning
