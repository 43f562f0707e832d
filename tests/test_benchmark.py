"""The side-by-side timing core shared by jvpcli bench and benchmarks/suite.py."""

from __future__ import annotations

import torch
from torch.autograd.functional import jvp as torch_jvp

from jvpcli.benchmark import FORWARD, Timing, candidates, compare, fastest


def test_candidates_compute_what_they_are_named_after():
    x, v = torch.rand(3, 4), torch.rand(3, 4)
    calls = candidates(lambda t: t.exp().sum(1), (x,), (v,))
    expected = torch_jvp(lambda t: t.exp().sum(1), x, v)
    assert set(calls) == {
        FORWARD,
        "jvpcli auto",
        "jvpcli forward",
        "jvpcli double-backward",
        "torch.autograd.functional.jvp",
        "torch.func.jvp",
    }
    torch.testing.assert_close(calls[FORWARD](), expected[0])
    for name in ("jvpcli auto", "jvpcli forward", "jvpcli double-backward"):
        out, tangent = calls[name]()
        torch.testing.assert_close((out, tangent), expected)


def test_peers_that_cannot_take_the_flags_are_left_out():
    x = (torch.rand(3),)
    assert "torch.func.jvp" not in candidates(torch.sin, x, x, strict=True)
    assert "torch.autograd.functional.jvp" in candidates(torch.sin, x, x, create_graph=True)
    batched = candidates(torch.sin, x, (torch.rand(2, 3),), batched_v=True)
    assert not any(name.startswith("torch.") for name in batched)
    _, tangents = batched["jvpcli forward"]()
    assert tangents.shape == (2, 3)


def test_compare_times_every_round_after_the_warmup_and_records_failures():
    calls_made = []

    def failing():
        raise NotImplementedError("no forward rule\nsecond line")

    timings = compare({"ok": lambda: calls_made.append(1), "failing": failing}, repeats=4, warmup=2)
    assert len(calls_made) == 6
    assert len(timings["ok"].times) == 4
    assert timings["ok"].median is not None
    assert timings["failing"] == Timing("failing", (), "NotImplementedError: no forward rule")
    assert timings["failing"].median is None


def test_fastest_is_the_jvpcli_candidate_with_the_lowest_median():
    timings = {
        "jvpcli auto": Timing("jvpcli auto", (3.0, 2.0, 4.0)),
        "jvpcli forward": Timing("jvpcli forward", (1.0, 9.0, 1.5)),
        "jvpcli double-backward": Timing("jvpcli double-backward", (), "RuntimeError: x"),
        "torch.func.jvp": Timing("torch.func.jvp", (0.1,)),
    }
    assert fastest(timings).name == "jvpcli forward"
    assert fastest({}) is None
