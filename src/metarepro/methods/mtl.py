"""Meta-Transfer Learning (Sun, Liu, Chua & Schiele 2019, "Meta-Transfer Learning for Few-Shot Learning", CVPR),
its meta-transfer stage: scaling & shifting (SS) of a frozen pretrained backbone, with a head-only inner loop.

- Stage 1 (pretraining) is the pipeline's pretrain stage: a classifier over all meta-train classes, selected on
  validation episodes, its head discarded (the training loop loads the backbone: `needs_pretrained`).
- Every convolution of the backbone is frozen and modulated: (W ⊙ Φ_S1) X + (b + Φ_S2), as the paper (Sec. 4.2)
  and its official `conv2d_mtl.py` define it: one scale per 3x3 kernel, that is per (output, input) channel pair
  (`mtl_weight` of shape (out, in, 1, 1) there, init 1), and one shift per output channel (init 0). A per-kernel
  scale does not factor out of the convolution, so the convolution runs on the modulated weight W ⊙ Φ_S1 (its
  `forward` is replaced; the frozen W keeps its name, so the pretrained state loads as is). `shift: all` shifts
  every convolution (the paper); `shift: first` only the first, as the official code (whose convs have no bias).
- Batch-norm affine parameters stay trainable; SS and batch norm are meta-learned in the outer loop only, at
  `ss_lr` (1e-4), the classifier initialisation theta at the meta lr (1e-3), both by Adam (`param_groups`).
- Inner loop: only the head theta adapts, `inner_steps` (100) plain SGD steps at `inner_lr` (0.01) on the support
  features, first order (no graph through the steps), as the official code; the encoder runs once per task.
  The cross-entropy gradient of a linear head is written out: dW = (softmax(Z W^T + b) - Y)^T Z / N, db = sum.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import ClosedFormLearner, MetaLearner, Task

SHIFTS = ("all", "first")
# The paper's ablation (Sun et al. 2019, Tables 1-2): what meta-training changes in the pretrained backbone.
#   ss:    scaling & shifting of the frozen convolutions (MTL);
#   ft:    fine-tuning: every backbone weight is meta-learned (at ss_lr), no SS ("FT" / "MAML deep" rows);
#   theta: nothing is meta-learned: each task trains the head theta from its initialisation on the frozen pretrained
#          features ("update theta only", no meta-learning; the run has no meta-parameters, so 0 iterations).
MODES = ("ss", "ft", "theta")


class MTL(MetaLearner):
    name = "mtl"

    def __init__(self, model: nn.Module, task_type: str = "classification", *, inner_lr: float,
                 inner_steps: int, eval_inner_steps: int | None, shift: str,
                 ss_lr: float, mode: str) -> None:
        # defaults and their sources: the card in method_cards.yaml
        if task_type != "classification":
            raise ValueError(f"{self.name} is a classification method; got task_type {task_type!r}")
        if shift not in SHIFTS:
            raise ValueError(f"shift must be one of {', '.join(SHIFTS)}, got {shift!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        super().__init__(model, task_type, inner_steps, eval_inner_steps, first_order=True)
        self.inner_lr, self.shift, self.ss_lr, self.mode = float(inner_lr), shift, float(ss_lr), mode
        convs = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"{type(model).__name__} has no convolutions to scale and shift")
        ref = next(model.parameters())
        ss = mode == "ss"
        self.ss_scale = nn.ParameterList([nn.Parameter(torch.ones(c.out_channels, c.in_channels // c.groups, 1, 1)
                                                       .to(ref)) for c in convs if ss])
        self.ss_shift = nn.ParameterList([nn.Parameter(torch.zeros(c.out_channels).to(ref))
                                          for c in (convs if shift == "all" else convs[:1]) if ss])
        if mode == "theta":
            for p in model.parameters():
                p.requires_grad_(False)          # no meta-parameter at all: the run does not meta-train
        if not ss:
            return
        for i, conv in enumerate(convs):
            for p in conv.parameters():
                p.requires_grad_(False)          # the pretrained filters stay fixed
            # an instance attribute: nn.Module calls it in place of Conv2d.forward; a partial of a bound method
            # deep-copies with the learner (evaluation copies it), unlike a closure
            conv.forward = functools.partial(self._modulated_conv, conv, i)

    def _modulated_conv(self, conv: nn.Conv2d, i: int, x: Tensor) -> Tensor:
        """(W ⊙ Φ_S1) X + (b + Φ_S2) for the i-th convolution."""
        bias = conv.bias
        if i < len(self.ss_shift):
            bias = self.ss_shift[i] if bias is None else bias + self.ss_shift[i]
        return conv._conv_forward(x, conv.weight * self.ss_scale[i], bias)

    def param_groups(self, meta_lr: float) -> list[dict]:
        """Adam groups: SS and batch norm (mode ft: every backbone weight) at `ss_lr`, the head's initialisation
        theta at the meta lr."""
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        ids = {id(p) for p in head}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest, "lr": self.ss_lr}, {"params": head, "lr": meta_lr}]

    # ---- inner loop: the head only, on features computed once ----------------------------------------
    def head_step(self, w: Tensor, b: Tensor, z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """One SGD step of the linear head on the cross-entropy of (z, y), its gradient written out."""
        p = torch.softmax(z @ w.t() + b, dim=1)
        d = (p - F.one_hot(y, w.shape[0]).to(p.dtype)) / len(y)
        return w - self.inner_lr * (d.t() @ z), b - self.inner_lr * d.sum(0)

    def adapt_trajectory(self, task: Task, steps: int, create_graph: bool) -> Iterator[ClosedFormLearner]:
        ctx = contextlib.nullcontext() if self.training else torch.no_grad()
        with ctx:
            zs, zq = self.embed_task(task, True)
        w, b = self.model.head.weight, self.model.head.bias
        zs_d = zs.detach()

        def learner(w: Tensor, b: Tensor, j: int) -> ClosedFormLearner:
            def predict(x: Tensor) -> Tensor:
                with ctx:
                    z = zq if x is task.x_query else self.embed(x)
                    return z @ w.t() + b
            return ClosedFormLearner(self, predict, j)
        yield learner(w, b, 0)
        for j in range(steps):
            # first order: each step's gradient is a constant, so theta' - theta does not depend on theta
            with torch.no_grad():
                w_new, b_new = self.head_step(w.detach(), b.detach(), zs_d, task.y_support)
                dw, db = w_new - w.detach(), b_new - b.detach()
            w, b = w + dw, b + db
            yield learner(w, b, j + 1)
