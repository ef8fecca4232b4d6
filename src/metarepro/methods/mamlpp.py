"""MAML++ (Antoniou, Edwards & Storkey 2019, "How to train your MAML", ICLR; arXiv:1810.09502).

MAML plus five fixes, each a constructor flag so the paper's ablation can be rerun:
- multi_step_loss (MSL): the outer loss is a weighted sum of the query losses after every inner step; the weights
  start uniform and are annealed towards the last step over `msl_epochs` epochs, then only the last step counts.
- per_step_bn (BNWB + BNRS): one copy of every batch-norm weight/bias (and of its running statistics, where the
  backbone keeps them: backbone_args bn_running_stats) per inner step, N slots for N steps. As in the official
  code (few_shot_learning_system.py), the support pass of inner step j uses slot j and so does the query pass
  after that step's update (num_step=j for both): the query after k updates uses slot k - 1 (slot 0 before any
  update); evaluation beyond N steps reuses the last slot. The official code tracks the per-step running
  statistics but normalises every pass with the batch's own (F.batch_norm(..., training=True)), which is what
  a backbone without running statistics (our default) computes; with bn_running_stats: true, evaluation
  normalises with the per-step running statistics instead, as the paper describes BNRS.
- lslr: a learned learning rate per parameter tensor ("layer") and per inner step, initialised to `inner_lr`.
- derivative_order_annealing (DA): first order for the first `first_order_epochs` epochs, then second order.
- cosine_annealing (CA): cosine schedule of the meta learning rate, from `make_scheduler`.
Schedules follow the official code (github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch,
few_shot_learning_system.py), which counts epochs of `iterations_per_epoch` (500) meta-iterations. The current
meta-iteration is a buffer (saved in state_dict, so resumed runs continue the schedules); `end_meta_step` advances
it and the training loop may also set it with `set_iteration(it)`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from .base import Learner, MetaLearner, Params, Task, TaskOutcome
from .metasgd import safe_key


def msl_weights(num_steps: int, epoch: int, msl_epochs: int) -> list[float]:
    """Weights of the query losses after inner steps 1..N at `epoch` (official get_per_step_loss_importance_vector).

    Uniform 1/N at epoch 0; every non-final weight decays by 1/(N * msl_epochs) per epoch down to 0.03/N and the
    final weight takes up the slack, capped at 1 - (N-1) * 0.03/N (the weights always sum to 1).
    """
    n = int(num_steps)
    decay = 1.0 / n / msl_epochs
    floor = 0.03 / n
    weights = [max(1.0 / n - epoch * decay, floor) for _ in range(n - 1)]
    weights.append(min(1.0 / n + epoch * (n - 1) * decay, 1.0 - (n - 1) * floor))
    return weights


class MAMLpp(MetaLearner):
    name = "mamlpp"
    task_batching = True

    def __init__(self, model: nn.Module, task_type: str = "classification", *, inner_lr: float,
                 inner_steps: int, eval_inner_steps: int | None, first_order: bool,
                 multi_step_loss: bool, msl_epochs: int, per_step_bn: bool, lslr: bool,
                 derivative_order_annealing: bool, first_order_epochs: int,
                 cosine_annealing: bool, min_meta_lr: float, iterations_per_epoch: int,
                 inner_bn: bool) -> None:
        # inner_lr: 0.1 Omniglot, 0.01 miniImageNet (official configs, init_inner_loop_learning_rate / task lr)
        # inner_steps: 5 for training and evaluation (Antoniou et al. 2019; official configs number_of_*_steps_per_iter)
        # msl_epochs: 10 Omniglot, 15 miniImageNet (official configs, multi_step_loss_num_epochs)
        # first_order_epochs: 50 ("first-order for the first 50 epochs", Sec. 4, DA)
        # min_meta_lr: 1e-5 (official configs, min_learning_rate; meta lr 0.001)
        # iterations_per_epoch: 500 (official configs, total_iter_per_epoch)
        # inner_bn: False, BN weights/biases are not adapted in the inner loop (official
        #   enable_inner_loop_optimizable_bn_params=false); only meaningful without per_step_bn
        super().__init__(model, task_type, inner_steps, eval_inner_steps, first_order)
        if self.inner_steps < 1:
            raise ValueError("MAML++ needs inner_steps >= 1")
        if per_step_bn and inner_bn:
            raise ValueError("inner_bn (adapting BN weights in the inner loop) needs per_step_bn=False")
        if iterations_per_epoch < 1 or msl_epochs < 0 or first_order_epochs < 0:
            raise ValueError("iterations_per_epoch must be >= 1, msl_epochs and first_order_epochs >= 0")
        self.inner_lr = float(inner_lr)
        self.multi_step_loss, self.msl_epochs = bool(multi_step_loss), int(msl_epochs)
        self.per_step_bn, self.use_lslr, self.inner_bn = bool(per_step_bn), bool(lslr), bool(inner_bn)
        self.derivative_order_annealing = bool(derivative_order_annealing)
        self.first_order_epochs = int(first_order_epochs)
        self.cosine_annealing, self.min_meta_lr = bool(cosine_annealing), float(min_meta_lr)
        self.iterations_per_epoch = int(iterations_per_epoch)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

        bn_layers = {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
        bn_params = {f"{n}.{p}" for n, m in bn_layers.items() if m.affine for p in ("weight", "bias")}
        # the parameters the inner loop adapts (and LSLR gives learning rates to)
        self.inner_names = [k for k, p in model.named_parameters()
                            if p.requires_grad and (k not in bn_params or self.inner_bn)]

        self.lslr = nn.ParameterDict()
        if self.use_lslr:
            for k in self.inner_names:
                p = model.get_parameter(k)
                self.lslr[safe_key(k)] = nn.Parameter(torch.full((self.inner_steps,), self.inner_lr,
                                                                 dtype=p.dtype, device=p.device))

        # per-step BN: slot s is used by forward_with(..., step=s): the support pass of inner step s and the query
        # pass after its update (query_slot); s >= inner_steps (longer evaluation) reuses the last slot
        self.bn_layers = list(bn_layers) if self.per_step_bn else []
        self.bn_weight, self.bn_bias = nn.ParameterDict(), nn.ParameterDict()
        self.bn_stats = nn.Module()  # per-step running statistics (BNRS) as buffers, where the backbone tracks them
        slots = self.inner_steps
        for n in self.bn_layers:
            m, k = bn_layers[n], safe_key(n)
            if m.affine:
                self.bn_weight[k] = nn.Parameter(m.weight.detach().clone().unsqueeze(0).repeat(slots, 1))  # (slots, C)
                self.bn_bias[k] = nn.Parameter(m.bias.detach().clone().unsqueeze(0).repeat(slots, 1))
                m.weight.requires_grad_(False)  # superseded by the per-step copies above
                m.bias.requires_grad_(False)
            if m.track_running_stats:
                for stat in ("mean", "var"):  # (slots, C)
                    buf = m.get_buffer(f"running_{stat}").detach().clone().unsqueeze(0).repeat(slots, 1)
                    self.bn_stats.register_buffer(f"{k}__{stat}", buf)

    # ---- model evaluation ---------------------------------------------------------------
    def replaced_parameters(self) -> set[str]:
        """With per-step batch norm the backbone's own BN weights and biases never run: forward_with swaps in the
        step's copies (bn_weight / bn_bias), so they are not counted as parameters."""
        return {f"{n}.{p}" for n in self.bn_layers if safe_key(n) in self.bn_weight for p in ("weight", "bias")}

    def init_params(self) -> Params:
        named = dict(self.model.named_parameters())
        return {k: named[k] for k in self.inner_names}

    def forward_with(self, params: Params, x: Tensor, step: int = 0) -> Tensor:
        if not self.bn_layers:
            return functional_call(self.model, params, (x,))
        s = min(int(step), self.inner_steps - 1)
        full = dict(params)
        for n in self.bn_layers:
            k = safe_key(n)
            if k in self.bn_weight:
                full[f"{n}.weight"], full[f"{n}.bias"] = self.bn_weight[k][s], self.bn_bias[k][s]
            if hasattr(self.bn_stats, f"{k}__mean"):
                # views into the (slots, C) buffers: batch_norm's in-place running-stat update writes slot s
                full[f"{n}.running_mean"] = getattr(self.bn_stats, f"{k}__mean")[s]
                full[f"{n}.running_var"] = getattr(self.bn_stats, f"{k}__var")[s]
        return functional_call(self.model, full, (x,))

    def query_slot(self, updates: int) -> int:
        """The official code's indexing: the query after k updates uses the slot of the step that made the k-th
        update (k - 1), so N steps use N slots."""
        return max(0, int(updates) - 1)

    # ---- inner loop ---------------------------------------------------------------------
    def step_lr(self, name: str, step: int) -> Tensor | float:
        """Learning rate of parameter `name` at inner step `step` (LSLR: learned; later steps reuse the last)."""
        if self.use_lslr:
            return self.lslr[safe_key(name)][min(int(step), self.inner_steps - 1)]
        return self.inner_lr

    def inner_update(self, params: Params, grads: Params, step: int) -> Params:
        return {k: (v - self.step_lr(k, step) * grads[k]) if k in grads else v for k, v in params.items()}

    def second_order_now(self) -> bool:
        """Second order unless first_order, or (DA) while epoch < first_order_epochs."""
        if self.first_order:
            return False
        return not (self.derivative_order_annealing and self.epoch < self.first_order_epochs)

    def adapt(self, task: Task, steps: int | None = None, create_graph: bool | None = None) -> Learner:
        if create_graph is None:
            create_graph = self.training and self.second_order_now()
        return super().adapt(task, steps, create_graph)

    # ---- outer loop ---------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return int(self.iteration) // self.iterations_per_epoch

    def current_msl_weights(self) -> list[float] | None:
        """Weights of the query losses after steps 1..N now, or None: last step only (MSL off, over, or eval)."""
        if not (self.multi_step_loss and self.training and self.epoch < self.msl_epochs):
            return None
        return msl_weights(self.inner_steps, self.epoch, self.msl_epochs)

    def outcome(self, task: Task) -> TaskOutcome:
        """MSL: the weighted sum of the query losses after every inner step (while annealing), else the last one's."""
        weights = self.current_msl_weights()
        loss: Tensor | None = None
        per_task: Tensor | None = None
        out = None
        for learner in self.adapt_trajectory(task, self.inner_steps, self.training and self.second_order_now()):
            j = learner.step
            if j == 0 or (weights is None and j < self.inner_steps):
                continue
            out = learner(task.x_query)
            t = self.task_losses(out, task.y_query)     # a stack's per-task losses (None for one task)
            term = t.sum() if t is not None else self.loss(out, task.y_query)   # = self.loss's ops
            term = term if weights is None else weights[j - 1] * term
            loss = term if loss is None else loss + term
            if t is not None:                           # weighted the same way, per task
                t = t if weights is None else weights[j - 1] * t
                per_task = t if per_task is None else per_task + t
        assert loss is not None and out is not None
        return TaskOutcome(loss, out, task, per_task)

    def end_meta_step(self) -> None:
        self.iteration += 1

    # ---- training-loop hooks --------------------------------------------------------------
    def set_iteration(self, iteration: int) -> None:
        """Current 0-based meta-iteration (drives MSL and DA); end_meta_step also advances it by one."""
        self.iteration.fill_(int(iteration))

    def make_scheduler(self, optimizer: torch.optim.Optimizer,
                       total_iterations: int) -> torch.optim.lr_scheduler.LRScheduler | None:
        """CA: cosine annealing of the meta lr to `min_meta_lr` over the run, stepped once per meta-iteration."""
        if not self.cosine_annealing:
            return None
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(total_iterations)),
                                                          eta_min=self.min_meta_lr)
