"""Random directions: reproducible, independent of what else is drawn, of the right law."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import jvpcli
from jvpcli.directions import DISTRIBUTIONS, RandomDirections, draw, select

TARGETS = {
    "encoder.weight": ((4, 3), torch.float32),
    "encoder.bias": ((4,), torch.float32),
    "head.weight": ((2, 4), torch.float64),
}

_DRAW_IN_A_FRESH_PROCESS = """
import sys
import torch
from jvpcli.directions import RandomDirections, draw
spec = RandomDirections(sys.argv[1], int(sys.argv[2]), k=3)
tensors = draw(spec, {"encoder.weight": ((4, 3), torch.float32), "x": ((5,), torch.float64)})
for name, tensor in tensors.items():
    print(name, tensor.numpy().tobytes().hex())
"""


def _drawn_elsewhere(distribution: str, seed: int) -> dict[str, str]:
    # The fresh process imports the jvpcli under test, wherever it lies.
    root = str(Path(jvpcli.__file__).resolve().parents[1])
    pythonpath = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    done = subprocess.run(
        [sys.executable, "-c", _DRAW_IN_A_FRESH_PROCESS, distribution, str(seed)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": pythonpath},
    )
    return dict(line.split() for line in done.stdout.splitlines())


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_same_seed_gives_bit_identical_directions_in_separate_processes(distribution):
    first = _drawn_elsewhere(distribution, 7)
    second = _drawn_elsewhere(distribution, 7)
    assert first == second
    here = draw(
        RandomDirections(distribution, 7, k=3),
        {"encoder.weight": ((4, 3), torch.float32), "x": ((5,), torch.float64)},
    )
    assert {name: t.numpy().tobytes().hex() for name, t in here.items()} == first


def test_another_seed_gives_other_directions():
    first = draw(RandomDirections("normal", 0), TARGETS)
    second = draw(RandomDirections("normal", 1), TARGETS)
    for name in TARGETS:
        assert not torch.equal(first[name], second[name])


def test_tensors_of_one_draw_differ_from_each_other():
    same_shape = {"a": ((64,), torch.float64), "b": ((64,), torch.float64)}
    drawn = draw(RandomDirections("normal", 0), same_shape)
    assert not torch.equal(drawn["a"], drawn["b"])


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_a_direction_does_not_depend_on_what_else_is_drawn(distribution):
    spec = RandomDirections(distribution, 3)
    alone = draw(spec, {"head.weight": TARGETS["head.weight"]})
    together = draw(spec, TARGETS)
    reordered = draw(spec, dict(reversed(TARGETS.items())))
    assert torch.equal(alone["head.weight"], together["head.weight"])
    assert torch.equal(alone["head.weight"], reordered["head.weight"])


def test_the_target_dtype_only_rounds_the_float64_draw():
    spec = RandomDirections("normal", 5)
    wide = draw(spec, {"w": ((6, 7), torch.float64)})["w"]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        narrow = draw(spec, {"w": ((6, 7), dtype)})["w"]
        assert narrow.dtype == dtype
        assert torch.equal(narrow, wide.to(dtype))


def test_directions_have_the_target_shape_and_dtype_on_the_cpu():
    drawn = draw(RandomDirections("rademacher", 0), TARGETS)
    assert list(drawn) == list(TARGETS)
    for name, (shape, dtype) in TARGETS.items():
        assert drawn[name].shape == shape
        assert drawn[name].dtype == dtype
        assert drawn[name].device == torch.device("cpu")


def test_k_adds_a_leading_dimension_of_k_distinct_directions():
    drawn = draw(RandomDirections("normal", 0, k=5), TARGETS)
    for name, (shape, _) in TARGETS.items():
        assert drawn[name].shape == (5, *shape)
    assert not torch.equal(drawn["encoder.weight"][0], drawn["encoder.weight"][1])


def test_scalar_targets_get_scalar_directions():
    assert draw(RandomDirections("normal", 0), {"t": ((), torch.float32)})["t"].shape == ()


def test_rademacher_entries_are_plus_or_minus_one_and_balanced():
    values = draw(RandomDirections("rademacher", 11), {"w": ((100_000,), torch.float32)})["w"]
    assert set(values.unique().tolist()) == {-1.0, 1.0}
    # The mean of 1e5 fair ±1 draws has standard deviation 0.0032: 0.02 is over six of them.
    assert abs(values.mean().item()) < 0.02


def test_normal_entries_have_mean_zero_and_variance_one():
    values = draw(RandomDirections("normal", 12), {"w": ((200_000,), torch.float64)})["w"]
    assert abs(values.mean().item()) < 0.015
    assert abs(values.var().item() - 1) < 0.02
    assert values.abs().max().item() > 3  # not, e.g., uniform or clipped


def test_without_match_every_candidate_is_selected_in_order():
    candidates = ["b", "a", "c.weight"]
    assert select(RandomDirections("normal", 0), candidates) == ("b", "a", "c.weight")


def test_match_selects_by_glob_in_the_candidates_order():
    candidates = ["encoder.weight", "encoder.bias", "head.weight", "head.bias"]
    spec = RandomDirections("normal", 0, match=("head.*", "*.weight"))
    assert select(spec, candidates) == ("encoder.weight", "head.weight", "head.bias")


def test_match_is_case_sensitive_and_whole_name():
    spec = RandomDirections("normal", 0, match=("weight",))
    with pytest.raises(ValueError, match="'weight' selects nothing"):
        select(spec, ["encoder.weight", "Weight"])


def test_a_pattern_that_matches_nothing_names_some_candidates():
    candidates = [f"layers.{i}.weight" for i in range(10)]
    spec = RandomDirections("normal", 0, match=("*.weight", "*.bais"))
    with pytest.raises(ValueError) as error:
        select(spec, candidates)
    message = str(error.value)
    assert "'*.bais' selects nothing" in message
    assert "'layers.0.weight'" in message
    assert "and 4 more" in message


def test_spec_text_is_canonical_json():
    spec = RandomDirections("normal", 0, match=("*.weight",), k=32)
    assert spec.spec_text() == '{"random":"normal","seed":0,"match":["*.weight"],"k":32}'
    assert RandomDirections("rademacher", 3).spec_text() == '{"random":"rademacher","seed":3}'
    assert json.loads(spec.spec_text())["match"] == ["*.weight"]


def test_integer_targets_are_refused():
    with pytest.raises(ValueError, match=re.escape("'ids': its dtype torch.int64 is not")):
        draw(RandomDirections("normal", 0), {"ids": ((3,), torch.int64)})
