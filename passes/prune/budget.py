"""One global budget across units of every kind: remove MACs where they cost the least fidelity.

Every unit (attention heads, FFN neurons, conv channels) offers candidate sizes with a measured
output cost (importance.py) and the MACs each size removes. Starting from the full model, the
allocator repeatedly takes the cheapest step: the move of one unit to a smaller size with the
least added output error per MAC removed (looking past the next size too, so a cost curve that
is flat after a bump is still reached), until the model's MACs meet the target. Costs are
treated as additive across units, the usual approximation of a block-diagonal Fisher (Kwon et
al. 2022); MACs are recomputed exactly for the combined plan, since a conv shrinking on both
sides saves less than its two sides apart.

Sizes are latency-aware: channel counts are multiples of `round_to` (kernels vectorize over
8/16 channels) and never below `min_channels`; heads go one at a time, at least one per block.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxopt.passes.prune.importance import Unit


def channel_levels(n: int, round_to: int, min_channels: int, probes: int = 8) -> tuple[list[int], list[int]]:
    """(sizes the allocator may choose, sizes measured): all multiples of round_to at or above
    min_channels, and about `probes` of them, denser near the full size where cost curves bend
    most (removing 1/16, 1/8, 1/4, ... of the channels), whose costs the rest interpolate."""
    step = round_to if n >= round_to else 1
    floor = min(max(min_channels, step), n)
    sizes = [n] + [k for k in range((n - 1) // step * step, floor - 1, -step) if k < n]
    if len(sizes) <= probes + 1:
        return sizes, sizes
    fractions = [1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 1.0][-probes:]
    measured = {n} | {min(sizes, key=lambda k: abs(k - n * (1 - f))) for f in fractions}
    return sizes, sorted(measured, reverse=True)


def head_levels(heads: int) -> list[int]:
    return list(range(heads, 0, -1))


def interpolate(unit: Unit, sizes: list[int]) -> None:
    """Costs at every allowed size from the measured ones (linear in the kept size), made monotone."""
    measured = sorted(unit.cost)
    xs = np.array(measured, float)
    ys = np.array([unit.cost[k] for k in measured])
    cost = {k: float(np.interp(k, xs, ys)) for k in sizes}
    running = 0.0
    for k in sorted(cost, reverse=True):
        running = max(running, cost[k])
        cost[k] = running
    unit.cost = cost
    unit.levels = sorted(cost, reverse=True)


def allocate(units: list[Unit], total_macs: Callable[[dict[str, int]], float], target: float, start: dict[str, int] | None = None) -> tuple[dict[str, int], float]:
    """Kept size per unit name: greedy by added cost per MAC removed until total_macs <= target,
    from `start` (default: every unit whole); give-back never grows a unit past its start."""
    kept = dict(start) if start else {u.name: u.size for u in units}
    by_name = {u.name: u for u in units}
    current = total_macs(kept)
    while current > target:
        best = None
        for unit in units:
            now = kept[unit.name]
            for level in unit.levels:
                if level >= now:
                    continue
                gain = unit.saved[level] - unit.saved[now]
                if gain <= 0:
                    continue
                ratio = (unit.cost[level] - unit.cost[now]) / gain
                if best is None or ratio < best[0]:
                    best = (ratio, unit.name, level)
        if best is None:
            break
        # take the step one size at a time, so the exact MACs decide where to stop
        name = best[1]
        unit = by_name[name]
        smaller = [lv for lv in unit.levels if lv < kept[name]]
        kept[name] = smaller[0] if best[2] in smaller[:1] or unit.cost[smaller[0]] <= unit.cost[best[2]] else best[2]
        current = total_macs(kept)
    return _give_back(units, kept, total_macs, target, current)


def _give_back(units: list[Unit], kept: dict[str, int], total_macs, target: float, current: float) -> tuple[dict[str, int], float]:
    """Sizes are discrete, so the last step may overshoot: grow back, one size at a time, the
    units whose growth buys the most output error per MAC while the target still holds."""
    while True:
        best = None
        for unit in units:
            larger = [lv for lv in unit.levels if lv > kept[unit.name]]
            if not larger:
                continue
            trial = {**kept, unit.name: larger[-1]}
            macs = total_macs(trial)
            if macs > target:
                continue
            gain = unit.cost[kept[unit.name]] - unit.cost[larger[-1]]
            value = gain / max(macs - current, 1.0)
            if best is None or value > best[0]:
                best = (value, trial, macs)
        if best is None:
            return kept, current
        _, kept, current = best
