"""The global budget: latency-aware sizes, interpolated cost curves, greedy allocation by cost per MAC."""

from __future__ import annotations

from onnxopt.passes.prune.budget import allocate, channel_levels, head_levels, interpolate
from onnxopt.passes.prune.importance import Unit


def unit(name, size, cost, saved_per_class, kind="channels"):
    u = Unit(kind, name, size, None, [])
    u.levels = sorted(cost, reverse=True)
    u.cost = dict(cost)
    u.saved = {k: (size - k) * saved_per_class for k in cost}
    return u


def test_channel_levels_are_multiples_of_round_to_above_min_channels():
    sizes, measured = channel_levels(1536, 16, 32, probes=8)
    assert sizes[0] == 1536 and all(k % 16 == 0 for k in sizes) and min(sizes) == 32
    assert set(measured) <= set(sizes) and 1536 in measured and 32 in measured and len(measured) <= 9
    assert channel_levels(20, 8, 8) == ([20, 16, 8], [20, 16, 8])
    assert head_levels(4) == [4, 3, 2, 1]


def test_interpolated_costs_are_monotone_in_the_removed_amount():
    u = unit("a", 64, {64: 0.0, 32: 0.4, 16: 0.3}, 1.0)  # a noisy measurement at 16
    interpolate(u, [64, 56, 48, 40, 32, 24, 16])
    assert u.levels == [64, 56, 48, 40, 32, 24, 16]
    costs = [u.cost[k] for k in u.levels]
    assert costs == sorted(costs) and u.cost[48] == 0.2 and u.cost[16] == 0.4


def test_allocation_takes_macs_where_they_cost_least():
    cheap = unit("cheap", 8, {8: 0.0, 6: 0.01, 4: 0.02, 2: 0.5}, 10.0)
    dear = unit("dear", 8, {8: 0.0, 6: 0.3, 4: 0.6, 2: 0.9}, 10.0)
    total = 160.0

    def macs(kept):
        return total - sum(u.saved[kept[u.name]] for u in (cheap, dear))

    kept, predicted = allocate([cheap, dear], macs, target=120.0)
    assert kept == {"cheap": 4, "dear": 8} and predicted == 120.0
    kept, predicted = allocate([cheap, dear], macs, target=100.0)
    assert kept["dear"] == 6 and predicted <= 100.0  # the third step of cheap costs more per MAC than dear's first


def test_allocation_stops_when_nothing_is_left_to_remove():
    only = unit("only", 4, {4: 0.0, 2: 0.1}, 5.0)
    kept, predicted = allocate([only], lambda k: 20.0 - only.saved[k["only"]], target=0.0)
    assert kept == {"only": 2} and predicted == 10.0


def test_allocation_from_a_committed_start_only_shrinks_further():
    a = unit("a", 8, {6: 0.0, 4: 0.05, 2: 0.5}, 10.0)  # committed at 6 by an earlier round
    b = unit("b", 8, {8: 0.0, 6: 0.2, 4: 0.3}, 10.0)
    total = 160.0

    def macs(kept):
        return total - sum(u.saved[kept[u.name]] for u in (a, b))

    kept, predicted = allocate([a, b], macs, target=120.0, start={"a": 6, "b": 8})
    assert kept == {"a": 4, "b": 8} and predicted == 120.0
    kept, predicted = allocate([a, b], macs, target=100.0, start={"a": 6, "b": 8})
    assert kept == {"a": 4, "b": 6} and predicted == 100.0
    # the give-back never grows a unit past where the round started it
    kept, predicted = allocate([a, b], macs, target=150.0, start={"a": 6, "b": 8})
    assert kept == {"a": 6, "b": 8} and predicted == 140.0
