"""CML's co-learner (Shin et al., "Cooperative Meta-Learning with Gradient Augmentation", UAI 2024).

A head phi on the shared feature extractor reads the feature map before the backbone's last pooling (the model's
`feature_map` submodule), computed with the task-adapted parameters on the query set. It gets no inner-loop
update; the outer objective of task i becomes L(f(psi'_i, theta'_i); Q_i) + gamma * L(phi(psi'_i); Q_i), and
phi learns with its own learning rate. Architecture (official code, JJongyn/CML): conv3x3 + BN + ReLU, conv3x3 +
BN + ReLU + max-pool, linear to N ways. On a vector feature (the sinusoid MLP's last hidden layer) the head is a
small MLP, hidden -> hidden -> output. Batch norm normalises with the current batch, as the backbones do.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import MetaLearner, OuterTerm, TaskOutcome


class CoLearner(OuterTerm):
    name = "cml"
    predicts_at_test = True     # CML†: the co-learner classifying the adapted learner's query features

    def __init__(self, learner: MetaLearner, in_shape: tuple[int, ...], out_dim: int, weight: float,
                 lr: float, control: str = "none") -> None:
        # weight, lr: defaults and their sources in the card (metarepro.addon_cards); control has no default there
        #   (runs without a control keep the config they had before it existed): none unless asked
        super().__init__(weight, lr)
        if control not in ("none", "noise"):
            raise ValueError(f"cml: control must be 'none' or 'noise', got {control!r}")
        # "noise": the noise-matched control (see OuterTerm.noise_control)
        self.noise_control = control == "noise"
        self.meta = [learner]               # a list, so the learner is not registered as a submodule of the term
        self.tap = getattr(learner.model, "feature_map", "features")
        shape = self._tap_shape(learner, in_shape)      # (C, h, w) or (d,)
        if len(shape) == 3:
            c, h, w = shape
            self.head = nn.Sequential(
                nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c, track_running_stats=False), nn.ReLU(),
                nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c, track_running_stats=False), nn.ReLU(),
                nn.MaxPool2d(2) if min(h, w) >= 2 else nn.Identity(), nn.Flatten(),
                nn.Linear(c * max(1, h // 2) * max(1, w // 2), out_dim))
        elif len(shape) == 1:
            d = shape[0]
            self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, out_dim))
        else:
            raise ValueError(f"cml: cannot put a co-learner on features of shape {shape} ({self.tap})")

    def _tap_shape(self, learner: MetaLearner, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The tapped module's output shape per example, from one dry forward (eval mode, no grad)."""
        from ..methods.base import tap_outputs
        was = learner.model.training
        learner.model.eval()
        try:
            with torch.no_grad(), tap_outputs(learner.model, [self.tap]) as found:
                p = next(learner.parameters())
                learner.model(torch.zeros(2, *in_shape, device=p.device, dtype=p.dtype))
        finally:
            learner.model.train(was)
        return tuple(found[self.tap].shape[1:])

    @staticmethod
    def query_rows(features: Tensor, task) -> Tensor:
        """The co-learner's input: the query rows of the tapped feature map. Gradient-based methods tap their query
        pass alone; methods that embed support and query in one forward pass (ProtoNet, Matching Networks, AMFS,
        MTL: support first, as MetaLearner.embed_task) tap S + Q rows, of which the co-learner reads the last Q,
        the same query examples the learner's loss scores."""
        n_s, n_q = len(task.x_support), len(task.x_query)
        if features.shape[0] == n_s + n_q and features.shape[0] != n_q:
            return features[n_s:]
        return features

    def predict(self, features: Tensor, task) -> Tensor:
        """Query logits from the tapped features of a scored pass (the test-time hook)."""
        return self.head(self.query_rows(features, task))

    def forward(self, outcome: TaskOutcome) -> Tensor:
        feats = self.query_rows(outcome.features[self.tap], outcome.task)
        logits = self.head(feats)                        # (N, ways), or a stack of MLP tasks (T, N, 1)
        return self.meta[0].loss(logits, outcome.task.y_query)
