"""Connected components of candidate-duplicate pairs: edges in, a representative per node out.

In: pairs (i, j) of global document indices (documents ordered by earlier corpora first, then
shard, then row). Out: for every node that appears in a pair, the smallest index of its
component, which is the document the component keeps. Union by smallest root makes the
answer independent of the order the pairs come in, so any number of workers that produced
the pairs gives the same kept set. Memory holds only the nodes that have a pair.

`component_arrays` (what the dedup stage uses) gives the same answer as two arrays, by
min-label propagation with pointer jumping in numpy: ~40 bytes a pair and a node, where the
dict union-find `component_roots` built Python objects (~140 bytes a pair while it ran, ~100
bytes a node after).
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


def component_arrays(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes ascending, smallest node of each one's component) for an (E x 2) edge array."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if not len(edges):
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    nodes, inverse = np.unique(edges, return_inverse=True)  # nodes renumbered 0..n-1, in order
    first, second = inverse.reshape(-1, 2).T
    label = np.arange(len(nodes))  # a label only ever decreases, and stays in its component
    while True:
        low = np.minimum(label[first], label[second])
        new = label.copy()
        np.minimum.at(new, first, low)
        np.minimum.at(new, second, low)
        np.minimum.at(new, label, new)  # hook: a label's own node takes the lower label too
        while not np.array_equal(jumped := new[new], new):  # pointer jumping
            new = jumped
        if np.array_equal(new, label):
            break
        label = new
    # fixed point: every pair has one label and label[label] == label, so a component has one
    # label, the node whose label is itself: its smallest (its label can never be lower)
    return nodes, nodes[label]
