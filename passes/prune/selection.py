"""Reconstruction-aware channel ranking: greedy Optimal Brain Surgeon over a group's consumers.

For a consumer with input Gram matrix G and weights W, removing a block B of input features and
letting the remaining weights compensate optimally (which reconstruction then does for real)
raises the output error by tr(W_B^T (G^-1)_BB^-1 W_B) (Hassibi & Stork 1993; Frantar & Alistarh
2022 for the structured case). The group's classes are eliminated greedily, cheapest first,
summing that cost over every consumer (each divided by its output energy, so consumers count
alike) and updating the inverse and weights after each removal. The elimination order is the
ranking: classes removed last are the most important.
"""

from __future__ import annotations

import numpy as np

from onnxopt.graphs import constant_input_value
from onnxopt.passes.prune.groups import ChannelGroup, Dim


class _Consumer:
    """One consumer's inverse Gram and optimally compensated weights, over its live features."""

    def __init__(self, dim: Dim, gram: np.ndarray, damp: float):
        weight = np.asarray(constant_input_value(dim.node.inputs[dim.index]), dtype=np.float64)
        per = int(np.prod(weight.shape[2:])) if dim.node.op == "Conv" else 1
        if dim.node.op == "Conv":
            w = weight.reshape(weight.shape[0], -1).T
        elif dim.node.op == "Gemm" and dim.node.attrs.get("transB", 0):
            w = weight.T
        else:
            w = weight
        gram = gram + damp * float(np.mean(np.diag(gram)) or 1.0) * np.eye(gram.shape[0])
        self.inverse = np.linalg.inv(gram)
        self.weights = w
        self.energy = float(np.einsum("ij,ik,kj->", w, gram, w)) or 1.0
        self.per = per
        self.live = np.arange(gram.shape[0])
        self.features_of: dict[int, np.ndarray] = {}
        self.element_class = None

    def bind(self, classes: np.ndarray) -> None:
        """Map each class to its feature positions (channel e of the dim owns features e*per .. e*per+per-1)."""
        for element, cls in enumerate(classes.tolist()):
            block = np.arange(element * self.per, (element + 1) * self.per)
            self.features_of[cls] = np.concatenate([self.features_of.get(cls, np.empty(0, int)), block])

    def _local(self, cls: int) -> np.ndarray:
        return np.searchsorted(self.live, self.features_of[cls])

    def cost(self, cls: int) -> float:
        if cls not in self.features_of:
            return 0.0
        b = self._local(cls)
        w_b = self.weights[b]
        return float(np.sum(w_b * np.linalg.solve(self.inverse[np.ix_(b, b)], w_b))) / self.energy

    def costs(self, classes: list[int]) -> np.ndarray:
        """cost() of many classes at once; vectorized when every class is one input feature."""
        if self.per == 1 and all(len(self.features_of.get(c, ())) == 1 for c in classes):
            b = np.searchsorted(self.live, np.array([self.features_of[c][0] for c in classes]))
            return np.sum(self.weights[b] ** 2, axis=1) / self.inverse[b, b] / self.energy
        return np.array([self.cost(c) for c in classes])

    def remove(self, classes: list[int]) -> None:
        blocks = [self._local(c) for c in classes if c in self.features_of]
        if not blocks:
            return
        b = np.concatenate(blocks)
        rest = np.setdiff1d(np.arange(len(self.live)), b)
        p_bb = self.inverse[np.ix_(b, b)]
        p_rb = self.inverse[np.ix_(rest, b)]
        correction = p_rb @ np.linalg.inv(p_bb)
        self.weights = self.weights[rest] - correction @ self.weights[b]
        self.inverse = self.inverse[np.ix_(rest, rest)] - correction @ p_rb.T
        self.live = self.live[rest]
        for c in classes:
            self.features_of.pop(c, None)


def obs_ranking(group: ChannelGroup, grams: dict[int, np.ndarray], keep_at_least: int, damp: float = 0.01, chunks: int = 48) -> np.ndarray | None:
    """Scores (higher = keep) from greedy elimination down to `keep_at_least` classes, or None
    when no consumer of the group has statistics."""
    consumers = []
    for dim in group.dims_of("in"):
        gram = grams.get(id(dim.node))
        if gram is None:
            continue
        consumer = _Consumer(dim, gram, damp)
        consumer.bind(group.classes[dim.key])
        consumers.append(consumer)
    if not consumers:
        return None
    alive = list(range(group.n_classes))
    score = np.zeros(group.n_classes)
    step = 0
    to_remove = max(group.n_classes - keep_at_least, 0)
    per_step = max(1, -(-to_remove // chunks))
    while len(alive) > keep_at_least:
        costs = sum(c.costs(alive) for c in consumers)
        take = min(per_step, len(alive) - keep_at_least)
        chosen = [alive[i] for i in np.argsort(costs, kind="stable")[:take]]
        for cls in chosen:
            score[cls] = step
            step += 1
        for consumer in consumers:
            consumer.remove(chosen)
        alive = [cls for cls in alive if cls not in set(chosen)]
    if alive:
        final = sum(c.costs(alive) for c in consumers)
        for rank, i in enumerate(np.argsort(final, kind="stable")):
            score[alive[i]] = step + rank
    return score + 1.0
