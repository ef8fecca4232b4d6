"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra 2016, "Matching Networks for One
Shot Learning", NeurIPS).

P(y | x, S) = sum_i a(x, x_i) y_i with a(x, x_i) = softmax_i(cos(f(x), g(x_i))) over the support set and y_i
one-hot labels; the learner's logits are log P, so the cross-entropy loss is the paper's -log P(y | x, S).
Without full context embeddings (the default) f = g = the backbone's features (its head is dropped).
With `fce` (Sec. 2.1.2, App. A.1-A.2):
  g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i)     a bidirectional LSTM over the support embeddings g', read in an
                                               order shuffled with the episode's seed (episodes list supports by class)
  f(x, S)   = h_K of K "processing" steps of an attention LSTM over g(S), starting at h^_0 = c_0 = 0:
      h_{k-1} = h^_{k-1} + f'(x)
      r_{k-1} = sum_i softmax_i(h_{k-1}^T g(x_i)) g(x_i)
      h^_k, c_k = LSTM(f'(x), [h_{k-1}, r_{k-1}], c_{k-1})      (recurrent input: the concatenation, 2D)
      h_K = h^_K + f'(x)
The LSTM whose recurrent input is [h, r] (2D) but whose output h^ is D-dimensional is written out (AttLSTMCell).
Batch norm: support and query are embedded as one batch (`transductive`, the default; False: separate batches).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import drop_head
from ..utils import stable_hash
from .base import ClosedFormLearner, MetaLearner, Task


class AttLSTMCell(nn.Module):
    """LSTM cell with input x (D), recurrent input [h, r] (2D), cell and output D; gates ordered i, f, g, o."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.x2gates = nn.Linear(dim, 4 * dim)
        self.hr2gates = nn.Linear(2 * dim, 4 * dim, bias=False)

    def forward(self, x: Tensor, hr: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        # x: (Q, D), hr: (Q, 2D), c: (Q, D) -> h^, c: (Q, D)
        i, f, g, o = (self.x2gates(x) + self.hr2gates(hr)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class MatchingNet(MetaLearner):
    name = "matchingnet"

    def __init__(self, model: nn.Module, task_type: str = "classification", *, fce: bool,
                 fce_steps: int, transductive: bool) -> None:
        # transductive: embed support and query as one batch (batch norm over all S + Q images), as ProtoNet
        # fce: off by default (the paper reports both; FCE helped on miniImageNet, Vinyals et al. 2016, Table 2)
        # fce_steps: K processing steps of the attention LSTM; the paper does not state K (10: our choice)
        if task_type != "classification":
            raise ValueError(f"{self.name} is a classification method; got task_type {task_type!r}")
        if fce_steps < 1:
            raise ValueError(f"fce_steps must be >= 1, got {fce_steps}")
        drop_head(model)
        super().__init__(model, task_type, inner_steps=0, eval_inner_steps=0)
        self.fce, self.fce_steps, self.transductive = bool(fce), int(fce_steps), bool(transductive)
        if self.fce:
            dim = int(getattr(model, "feature_dim"))
            ref = next(model.parameters())
            self.support_lstm = nn.LSTM(dim, dim, bidirectional=True).to(ref)
            self.query_lstm = AttLSTMCell(dim).to(ref)

    def encode_support(self, z: Tensor, order: Tensor | None = None) -> Tensor:
        """g(x_i, S): (S, D) -> (S, D), row i still the support example i. With FCE the bidirectional LSTM reads
        the support set in the order `order` (a permutation of 0..S-1; None: as given)."""
        if not self.fce:
            return z
        seq = z if order is None else z[order]
        out, _ = self.support_lstm(seq.unsqueeze(1))          # (S, 1, D) as (seq, batch, D) -> (S, 1, 2D)
        fwd, bwd = out.squeeze(1).chunk(2, dim=1)             # (S, D) each, in reading order
        g = fwd + bwd + seq
        return g if order is None else g[torch.argsort(order)]

    @staticmethod
    def support_order(task: Task) -> Tensor | None:
        """A permutation of the support set drawn from the episode's seed (Task.info["episode_key"]): episodes list
        their support examples sorted by class, and an LSTM reading them in that order would see the labels'
        layout in the sequence; the order is fixed per episode, so evaluation stays deterministic."""
        key = (task.info or {}).get("episode_key")
        if key is None:
            return None
        g = torch.Generator().manual_seed(stable_hash("matchingnet-fce-order", *key))
        return torch.randperm(len(task.y_support), generator=g).to(task.y_support.device)

    def encode_query(self, z: Tensor, g: Tensor) -> Tensor:
        """f(x, S): query embeddings (Q, D) attending over g(S) (S, D) -> (Q, D)."""
        if not self.fce:
            return z
        h_hat, c = torch.zeros_like(z), torch.zeros_like(z)
        for _ in range(self.fce_steps):
            h = h_hat + z
            r = (h @ g.t()).softmax(dim=1) @ g                # (Q, S) attention -> (Q, D) read-out
            h_hat, c = self.query_lstm(z, torch.cat([h, r], dim=1), c)
        return h_hat + z

    def adapt_trajectory(self, task: Task, steps: int, create_graph: bool) -> Iterator[ClosedFormLearner]:
        """Closed form: one learner (step 0) whatever `steps` is. Keeps the graph only while training."""
        ctx = contextlib.nullcontext() if self.training else torch.no_grad()
        ways = int(task.y_support.max()) + 1
        with ctx:
            zs, zq = self.embed_task(task, self.transductive)
            g = self.encode_support(zs, self.support_order(task) if self.fce else None)
            onehot = F.one_hot(task.y_support, ways).to(g.dtype)      # (S, ways)

        def predict(x: Tensor) -> Tensor:
            with ctx:
                f = self.encode_query(zq if zq is not None and x is task.x_query else self.embed(x), g)
                attention = (F.normalize(f, dim=1) @ F.normalize(g, dim=1).t()).softmax(dim=1)   # (Q, S)
                return (attention @ onehot).log()                     # log P(y | x, S): (Q, ways)
        yield ClosedFormLearner(self, predict, 0)
