"""The side-by-side timing core shared by jvpcli bench and benchmarks/suite.py."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jvp as torch_jvp

import jvpcli.benchmark
from jvpcli.benchmark import (
    FORWARD,
    Timing,
    candidates,
    compare,
    fastest,
    noisy,
    relative,
    tied,
    within_noise,
)


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


def test_spread_is_the_middle_half_of_the_rounds_relative_to_the_median():
    timing = Timing("t", (5.0, 1.0, 3.0, 2.0, 4.0, 100.0, 3.0))  # sorted: 1 2 3 3 4 5 100
    assert (timing.min, timing.median, timing.max) == (1.0, 3.0, 100.0)
    assert timing.quantile(0.25) == 2.5  # between the 2nd and 3rd of seven, as numpy
    assert timing.quantile(0.75) == 4.5
    assert timing.spread == pytest.approx(2.0 / 3.0)  # the outlier at 100 does not move it
    assert timing.uncertainty == pytest.approx(1.57 * (2.0 / 3.0) / 7**0.5)
    assert Timing("one", (2.0,)).spread == 0.0
    failed = Timing("failed", (), "RuntimeError: x")
    assert (failed.min, failed.max, failed.spread, failed.uncertainty) == (None,) * 4


def test_relative_divides_round_by_round():
    base = Timing(FORWARD, (1.0, 2.0, 4.0))
    ratios = relative(Timing("t", (2.0, 4.0, 8.0), first_call=9.0), base)
    assert ratios == Timing("t", (2.0, 2.0, 2.0), None, 9.0)
    assert relative(Timing("f", (), "E: x"), base).times == ()


def test_only_candidates_outside_each_others_middle_half_are_ranked():
    a = Timing("jvpcli a", (1.0, 1.1, 1.2, 1.3, 1.4))  # middle half 1.1-1.3
    b = Timing("jvpcli b", (1.25, 1.35, 1.45, 1.55, 1.65))  # 1.35-1.55: above a's
    c = Timing("jvpcli c", (1.2, 1.3, 1.4, 1.5, 1.6))  # 1.3-1.5: touches a's
    assert not within_noise(a, b)
    assert within_noise(a, c) and within_noise(c, a)
    assert tied({"a": a, "b": b}) == [a]
    assert tied({"c": c, "a": a, "b": b}) == [a, c]
    assert tied({"failed": Timing("jvpcli failed", (), "E: x")}) == []
    steady = Timing("steady", (1.0, 1.01, 0.99, 1.0))
    busy = Timing("busy", (1.0, 1.5, 1.2, 1.3))  # middle half 1.15-1.35 around 1.25: 16%
    very_busy = Timing("very busy", (1.0, 2.0, 1.5, 1.2, 1.8))  # 1.2-1.8 around 1.5: 40%
    assert noisy({t.name: t for t in (steady, busy, very_busy)}) == [very_busy]


class ScriptedClock:
    """time.perf_counter for compare(): each call advances it by the seconds scripted for the
    candidate, so rounds take known times."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def call(self, durations):
        durations = iter(durations)

        def advance():
            self.now += next(durations)

        return advance


@pytest.fixture
def clock(monkeypatch):
    clock = ScriptedClock()
    monkeypatch.setattr(jvpcli.benchmark.time, "perf_counter", clock)
    return clock


def test_compare_stops_after_the_repeats_when_every_median_is_precise(clock):
    calls = {FORWARD: clock.call([1.0] * 100), "steady": clock.call([2.0] * 100)}
    timings = compare(calls, repeats=5, warmup=1, budget=1e9, precision=0.03)
    assert len(timings["steady"].times) == 5
    assert timings["steady"].first_call == 2.0


def test_compare_samples_imprecise_medians_until_the_budget_is_spent(clock):
    calls = {FORWARD: clock.call([1.0] * 1000), "noisy": clock.call([1.0, 3.0] * 500)}
    timings = compare(calls, repeats=3, warmup=1, budget=60.0, precision=0.03)
    # Rounds of 1 + (1 or 3) seconds, 3 on average: the 60 s budget is spent after 20 rounds.
    assert len(timings["noisy"].times) == 20
    assert len(timings[FORWARD].times) == 20
    capped = compare(
        {FORWARD: clock.call([1.0] * 100), "noisy": clock.call([1.0, 3.0] * 50)},
        repeats=3,
        budget=1e9,
        max_rounds=7,
    )
    assert len(capped["noisy"].times) == 7


def test_compare_samples_precise_medians_until_the_minimum_time_is_spent(clock):
    # Precise after 5 rounds of 3 s, but 30 s of rounds are asked for: 10 rounds, not more.
    calls = {FORWARD: clock.call([1.0] * 100), "steady": clock.call([2.0] * 100)}
    timings = compare(calls, repeats=5, warmup=1, budget=1e9, precision=0.03, min_seconds=30.0)
    assert len(timings["steady"].times) == 10
    capped = compare(
        {FORWARD: clock.call([1.0] * 100), "steady": clock.call([2.0] * 100)},
        repeats=3,
        min_seconds=1e9,
        max_rounds=7,
    )
    assert len(capped["steady"].times) == 7


def test_compare_rotates_the_order_from_round_to_round():
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
    compare(calls, repeats=2, warmup=1)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
