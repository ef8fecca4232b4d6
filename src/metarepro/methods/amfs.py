"""I-AMFS, the inner loop of AMFS ("Fast Adaptation with Kernel and Gradient based Meta Learning", arXiv
2411.00404): adaptation in function space by closed-form kernel ridge regression on the backbone's features. The
outer loop of AMFS, O-AMFS, is the `oamfs` aggregator add-on (metarepro.addons.oamfs): `amfs+oamfs` is the full
method, and `maml+oamfs` etc. use it with other inner loops.

No code or numbers of the paper could be found; every choice its description leaves open is ours, stated here
and in the method card:
- Features z = the backbone's `features` (head dropped), divided by sqrt(d) so that squared distances do not grow
  with the feature width d.
- Kernel: RBF, k(a, b) = exp(-||z_a - z_b||^2 / (2 sigma^2)); sigma = exp(log_sigma) and the ridge
  lambda = exp(log_lambda) are meta-learned (log-parametrised to stay positive), from `bandwidth` and `ridge`.
- Inner loop (closed form): alpha = (K_SS + lambda I)^{-1} Y with Y the one-hot support labels (the support
  targets for regression), solved by a Cholesky factorisation (torch.linalg.cholesky + cholesky_solve), never an
  explicit inverse; predictions f(x) = K(x, S) alpha. The outer loss backpropagates through the solve.
- Classification loss: cross-entropy of the logits tau * f(x), tau = exp(log_tau) learned from `scale` (kernel
  regression outputs of one-hot targets lie near [0, 1], too flat for a softmax; as ProtoNet's cosine scale).
  Regression: MSE of f(x).
- Regularisers, each off at weight 0:
  grad_norm_weight mu: mu * mean over query points of ||dl/do||^2, the squared norm of each query point's loss
    gradient w.r.t. its prediction o (the logits tau * f for classification, f for regression): the
    "gradient-norm term" mu ||grad_f L||^2;
  info_weight gamma: gamma * I(f*; D) with the Gaussian-process information gain of the support set,
    I = 1/2 log det(I + K_SS / lambda) (Srinivas, Krause, Kakade & Seeger 2010, "Gaussian Process Optimization in
    the Bandit Setting", Lemma 5.3: the mutual information between the data and the latent function for a GP with
    noise variance lambda), computed from the same Cholesky factor: log det(K + lambda I) - n log lambda. It is
    added to the outer loss (a penalty on how much the kernel memorises the support set).
  The paper writes both into I-AMFS's own objective. Carried into the inner solve they do nothing a closed form
  could keep apart: the information gain does not depend on the adapted function f at all (it is a function of K and
  lambda only), so it cannot change the solve; and on the ridge's squared loss the gradient norm of the support
  loss is itself a squared error of f, so mu only rescales the data term, the same solve with lambda / (1 + c mu),
  which the meta-learned lambda already covers. Both therefore act where they can: in the outer loss.
- `first_order`: the solve's coefficients alpha are treated as constants of the outer loss (no gradient through
  the Cholesky solve), the closed-form analogue of FO-MAML; the kernel K(x, S) still carries the gradient.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import drop_head
from .base import ClosedFormLearner, MetaLearner, Task, TaskOutcome


class AMFS(MetaLearner):
    name = "amfs"

    def __init__(self, model: nn.Module, task_type: str = "classification", *, bandwidth: float,
                 ridge: float, scale: float, grad_norm_weight: float, info_weight: float,
                 transductive: bool, first_order: bool) -> None:
        # defaults and their sources: the card in method_cards.yaml
        for name, v in (("bandwidth", bandwidth), ("ridge", ridge), ("scale", scale)):
            if v <= 0:
                raise ValueError(f"{name} must be > 0, got {v}")
        dtype = next(model.parameters()).dtype
        drop_head(model)
        super().__init__(model, task_type, inner_steps=0, eval_inner_steps=0)
        self.log_sigma = nn.Parameter(torch.tensor(math.log(bandwidth), dtype=dtype))
        self.log_lambda = nn.Parameter(torch.tensor(math.log(ridge), dtype=dtype))
        self.log_tau = nn.Parameter(torch.tensor(math.log(scale), dtype=dtype)) if task_type == "classification" \
            else None
        self.grad_norm_weight, self.info_weight = float(grad_norm_weight), float(info_weight)
        self.transductive = bool(transductive)
        self.first_order = bool(first_order)

    # ---- the closed-form inner loop --------------------------------------------------------------
    def features(self, z: Tensor) -> Tensor:
        return z.flatten(1) / math.sqrt(z.flatten(1).shape[1])

    def kernel(self, a: Tensor, b: Tensor) -> Tensor:
        d2 = (a.unsqueeze(1) - b.unsqueeze(0)).pow(2).sum(-1)
        return torch.exp(-d2 / (2 * torch.exp(2 * self.log_sigma)))

    def solve(self, zs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """alpha = (K + lambda I)^{-1} Y through a Cholesky factor; also the factor's log-determinant term of the
        information gain, 1/2 log det(I + K / lambda)."""
        k = self.kernel(zs, zs)
        lam = torch.exp(self.log_lambda)
        chol = torch.linalg.cholesky(k + lam * torch.eye(len(zs), dtype=k.dtype, device=k.device))
        alpha = torch.cholesky_solve(targets, chol)
        info = torch.log(torch.diagonal(chol)).sum() - 0.5 * len(zs) * self.log_lambda
        return alpha, info

    def targets(self, task: Task) -> Tensor:
        if self.task_type == "classification":
            return F.one_hot(task.y_support, int(task.y_support.max()) + 1).to(task.x_support.dtype)
        return task.y_support.reshape(len(task.y_support), -1)

    def adapt_trajectory(self, task: Task, steps: int, create_graph: bool) -> Iterator[ClosedFormLearner]:
        ctx = contextlib.nullcontext() if self.training else torch.no_grad()
        with ctx:
            zs, zq = self.embed_task(task, self.transductive)
            zs = self.features(zs)
            zq = self.features(zq) if zq is not None else None
            alpha, info = self.solve(zs, self.targets(task))
            if self.first_order:
                # first order: the adapted coefficients are a constant of the outer loss, as FO-MAML's adapted
                # weights; the meta-gradient reaches the features and sigma through K(x, S) only, lambda not at all
                alpha = alpha.detach()

        def predict(x: Tensor) -> Tensor:
            with ctx:
                z = zq if zq is not None and x is task.x_query else self.features(self.embed(x))
                f = self.kernel(z, zs) @ alpha
                if self.task_type == "classification":
                    return torch.exp(self.log_tau) * f
                return f.reshape(len(x), *task.y_support.shape[1:])
        learner = ClosedFormLearner(self, predict, 0)
        learner.info = info             # the information term of this adaptation (for the outer loss)
        yield learner

    # ---- the outer objective -------------------------------------------------------------------
    def outcome(self, task: Task) -> TaskOutcome:
        learner = self.adapt(task)
        out = learner(task.x_query)
        loss = self.loss(out, task.y_query)
        if self.grad_norm_weight:
            # dL/df per query point, kept in the graph (the penalty is differentiated in the outer loop)
            (g,) = torch.autograd.grad(loss * len(out), out, create_graph=True)
            loss = loss + self.grad_norm_weight * g.pow(2).flatten(1).sum(1).mean()
        if self.info_weight:
            loss = loss + self.info_weight * learner.info
        return TaskOutcome(loss, out, task)
