"""The architecture grid shared by tests that must hold for every combination, and its pairwise cover.

By default a test sees the pairwise covering subset (every pair of values of any two keys
appears in some case); ``--full-grid`` gives every combination.
"""

from __future__ import annotations

import itertools
import random

import pytest

GRID: dict[str, list] = {
    "normalization": ["layernorm", "layernorm_nobias", "rmsnorm"],
    "activation": ["gelu", "silu", "relu", "leaky_relu"],
    "position_encoding": ["learned_absolute", "rope", "alibi", "none"],
    "ffn_type": ["standard", "swiglu", "geglu"],
    "norm_position": ["pre", "post"],
    "bias": [False, True],
    "weight_tying": [False, True],
    "attention_backend": ["sdpa", "manual"],
    "n_kv_head": [None, 2],  # plain multi-head vs grouped-query (4 query heads, 2 KV heads)
}


def pairwise_cover(grid: dict[str, list], candidates: int = 60, seed: int = 0) -> list[dict]:
    """A small set of combinations in which every pair of values of any two keys appears (AETG greedy)."""
    keys = list(grid)
    uncovered = {
        (a, va, b, vb)
        for a, b in itertools.combinations(keys, 2)
        for va in range(len(grid[a]))
        for vb in range(len(grid[b]))
    }
    rng = random.Random(seed)
    rows: list[dict[str, int]] = []
    while uncovered:
        # seed each candidate with an uncovered pair so that every row makes progress
        best, best_gain = None, -1
        for _ in range(candidates):
            a, va, b, vb = rng.choice(sorted(uncovered))
            row = {k: rng.randrange(len(grid[k])) for k in keys}
            row[a], row[b] = va, vb
            gain = sum((x, row[x], y, row[y]) in uncovered for x, y in itertools.combinations(keys, 2))
            if gain > best_gain:
                best, best_gain = row, gain
        rows.append(best)
        uncovered -= {(x, best[x], y, best[y]) for x, y in itertools.combinations(keys, 2)}
    return [{k: grid[k][i] for k, i in row.items()} for row in rows]


def grid_cases(config: pytest.Config) -> list[dict]:
    if config.getoption("--full-grid"):
        return [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    return pairwise_cover(GRID)


def parametrize_combo(metafunc: pytest.Metafunc) -> None:
    """Call from a module's ``pytest_generate_tests``: parametrize a ``combo`` argument over the grid."""
    if "combo" in metafunc.fixturenames:
        cases = grid_cases(metafunc.config)
        ids = ["-".join(str(v) for v in case.values()) for case in cases]
        metafunc.parametrize("combo", cases, ids=ids)
