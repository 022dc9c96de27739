"""Connected components of candidate-duplicate pairs: edges in, a representative per node out.

In: pairs (i, j) of global document indices (documents ordered by earlier corpora first, then
shard, then row). Out: for every node that appears in a pair, the smallest index of its
component, which is the document the component keeps. Union by smallest root makes the
answer independent of the order the pairs come in, so any number of workers that produced
the pairs gives the same kept set. Memory holds only the nodes that have a pair.
"""

from __future__ import annotations

import numpy as np


def component_roots(edges: np.ndarray) -> dict[int, int]:
    """node -> smallest node of its component, for every node of an (E x 2) edge array."""
    parent: dict[int, int] = {}

    def find(node: int) -> int:
        root = node
        while parent.get(root, root) != root:
            root = parent[root]
        while node != root:  # path compression
            parent[node], node = root, parent[node]
        return root

    for first, second in np.unique(np.sort(edges, axis=1), axis=0).tolist():
        a, b = find(first), find(second)
        if a != b:
            parent[max(a, b)] = min(a, b)
        parent.setdefault(min(a, b), min(a, b))
    return {node: find(node) for node in list(parent)}
