"""A graph convolutional network on local subgraphs whose readout is the centre node's embedding, G-Meta's
backbone (Huang & Zitnik 2020; GCN layers of Kipf & Welling 2017, or SGC's single linear map of Wu et al. 2019).

Input: a batch of node samples (B, M, M + F) as metarepro.data.graphs lays them out: the subgraph's normalised
adjacency in the first M columns, its nodes' features in the last F, the centre node in row 0. Dense batched
matmuls: the subgraphs are small (M <= a few dozen nodes), so one (B, M, M) @ (B, M, d) product per layer costs
less than scattering messages (benchmarks/README.md has the measurement against torch_geometric).
The weights are ordinary nn.Linear layers, so the functional inner loop (torch.func.functional_call on a params
dict) adapts them like any other backbone's.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .task_layers import TaskLinear

KINDS = ("gcn", "sgc")


class GraphFeatures(nn.Module):
    """(B, M, M + F) -> the centre node's embedding (B, d).
    gcn: H_l = ReLU(Â H_{l-1} W_l + b_l) for each hidden width; sgc: Â^L X W + b (linear), L = len(hidden)."""

    def __init__(self, n_nodes: int, in_features: int, hidden: Sequence[int], kind: str) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"gnn kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not hidden:
            raise ValueError("a gnn needs at least one hidden width")
        self.n_nodes, self.kind, self.hops = int(n_nodes), kind, len(hidden)
        widths = [in_features, *hidden] if kind == "gcn" else [in_features, hidden[-1]]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.n_nodes
        a, h = x[..., :m], x[..., m:]                      # (B, M, M), (B, M, F)
        if self.kind == "sgc":
            for _ in range(self.hops):
                h = a @ h
            return self.layers[0](h[:, 0])                 # SGC is linear; only the centre's row is read: (B, d)
        for layer in self.layers:
            # Â H W + b: the bias after the propagation (Kipf & Welling 2017; DGL's GraphConv in G-Meta's code)
            h = torch.relu(a @ F.linear(h, layer.weight) + layer.bias)    # (B, M, d)
        return h[:, 0]


class GNN(nn.Module):
    feature_map = "features"      # the centre node's embedding: what CML's co-learner reads

    def __init__(self, in_shape: tuple[int, ...], out_dim: int, hidden: Sequence[int] = (128, 128),
                 kind: str = "gcn") -> None:
        # hidden: two GCN layers of 128 (G-Meta's code: a 2-layer GNN, hidden size 128)
        super().__init__()
        if len(in_shape) != 2 or in_shape[1] <= in_shape[0]:
            raise ValueError(f"a gnn takes node samples of shape (M, M + F), got {tuple(in_shape)}")
        m, width = int(in_shape[0]), int(in_shape[1])
        self.features = GraphFeatures(m, width - m, list(hidden), kind)
        self.feature_dim = int(hidden[-1])
        self.head = TaskLinear(self.feature_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:    # (B, M, M + F) -> (B, out_dim)
        return self.head(self.features(x))
