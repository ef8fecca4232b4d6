"""Meta-LSTM (Ravi & Larochelle 2017, "Optimization as a Model for Few-Shot Learning", ICLR).

A two-layer coordinate-wise LSTM writes the learner's updates; its second layer's cell state IS the learner's
flattened parameter vector. Every coordinate (parameter entry) is one row of a batch that shares the LSTM
weights. At inner step t (theta_{t-1} = c_{t-1}, grad g_t and loss L_t of the support set at theta_{t-1}):

    x_t        = [pre(L_t), pre(g_t)]                          (n, 4)  preprocessing of Andrychowicz et al. 2016
    h_t, s_t   = LSTMCell(x_t, (h_{t-1}, s_{t-1}))              (n, hidden)   first layer, standard LSTM (stored (hidden, n))
    f_t        = W_F . [h_t, c_{t-1}, f_{t-1}] + b_F            (n,)  learned shrinkage (forget gate)
    i_t        = W_I . [h_t, c_{t-1}, i_{t-1}] + b_I            (n,)  learned learning rate (input gate)
    c_t        = sigmoid(f_t) * c_{t-1} - sigmoid(i_t) * g_t    (n,)  = theta_t

c_0 is the learned initialisation: the model's own parameters, flattened in named_parameters() order, so the
meta-parameters are the LSTM weights plus the model. Details taken from the official code
(twitter/meta-learning-lstm, model/lstm/meta-learner-lstm.lua and lstm-helper.lua):
- g_t and L_t are computed at a detached copy of theta_{t-1}: no gradient flows through the learner's
  gradient computation (the paper's Sec. 3.2 simplification); the meta-gradient flows through the c_t chain
  and the gates only.
- The recurrent f_{t-1}, i_{t-1} fed back into the gates are the pre-sigmoid values (as the code does; the
  paper's equations write the gate values), starting at 0.
- Input order [loss(2), grad(2)]; all weights uniform(-0.01, 0.01); b_F ~ U(4, 5) so sigmoid(f) ~ 1 and
  b_I ~ U(-5, -4) so sigmoid(i) ~ 0.01: the meta-learner starts as plain gradient descent.
- Each inner step uses the whole support set (the code's batch size equals ways * shots).
Batch norm: the Conv4 here keeps no running statistics, so the query is normalised with its own batch
(transductive). The paper instead collects running averages over one episode's support updates and uses
them on that episode's query at meta-test time; we match the MAML-family convention used by all methods.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from .base import Learner, MetaLearner, Params, Task


def preprocess(x: Tensor, p: float = 10.0) -> Tensor:
    """Andrychowicz et al. 2016 (App. A): x -> (log|x|/p, sign x) if |x| >= e^-p else (-1, e^p x). (...,) -> (..., 2)."""
    big = x.abs() >= math.exp(-p)
    first = torch.where(big, torch.log(x.abs().clamp_min(math.exp(-p))) / p, torch.full_like(x, -1.0))
    second = torch.where(big, torch.sign(x), math.exp(p) * x)
    return torch.stack([first, second], dim=-1)


class MetaLSTMCell(nn.Module):
    """The second layer: gates from [h_t, c_{t-1}, gate_{t-1}], cell update c_t = sig(f) c_{t-1} - sig(i) g_t."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.w_f = nn.Parameter(torch.empty(hidden_size + 2))   # [h (hidden), c_{t-1}, f_{t-1}]
        self.w_i = nn.Parameter(torch.empty(hidden_size + 2))   # [h (hidden), c_{t-1}, i_{t-1}]
        self.b_f = nn.Parameter(torch.empty(()))
        self.b_i = nn.Parameter(torch.empty(()))

    def forward(self, h: Tensor, grad: Tensor, c_prev: Tensor, f_prev: Tensor,
                i_prev: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # h: (hidden, n) (coordinates last, see MetaLSTM.lstm_step); grad, c_prev, f_prev, i_prev: (n,)
        # -> c, f, i pre-activations: (n,)
        f, i = torch.stack([self.w_f[:-2], self.w_i[:-2]]) @ h    # (2, hidden) @ (hidden, n) -> (n,), (n,)
        f = f + c_prev * self.w_f[-2] + f_prev * self.w_f[-1] + self.b_f
        i = i + c_prev * self.w_i[-2] + i_prev * self.w_i[-1] + self.b_i
        c = torch.sigmoid(f) * c_prev - torch.sigmoid(i) * grad
        return c, f, i


class MetaLSTM(MetaLearner):
    name = "metalstm"

    def __init__(self, model: nn.Module, task_type: str = "classification", *, inner_steps: int,
                 eval_inner_steps: int | None, hidden_size: int, preprocess_p: float,
                 weight_init: float, forget_bias_init: tuple[float, float],
                 input_bias_init: tuple[float, float]) -> None:
        # defaults and their sources (official configs, Andrychowicz et al. 2016): the card in method_cards.yaml
        super().__init__(model, task_type, inner_steps, eval_inner_steps, first_order=False)
        self.preprocess_p = float(preprocess_p)
        ref = next(model.parameters())
        self.lstm = nn.LSTMCell(4, hidden_size).to(ref)        # input: [pre(loss) (2), pre(grad) (2)]
        self.cell = MetaLSTMCell(hidden_size).to(ref)
        with torch.no_grad():
            for p in (*self.lstm.parameters(), *self.cell.parameters()):
                p.uniform_(-weight_init, weight_init)
            self.cell.b_f.uniform_(*forget_bias_init)
            self.cell.b_i.uniform_(*input_bias_init)
        self._trace: dict[str, list[Tensor]] | None = None

    # ---- flat <-> dict ------------------------------------------------------------------
    def flat_init(self) -> Tensor:
        """c_0: the model's parameters flattened in named_parameters() order, (n,)."""
        return torch.cat([p.reshape(-1) for p in self.init_params().values()])

    def unflatten(self, flat: Tensor) -> Params:
        out, i = {}, 0
        for k, p in self.model.named_parameters():
            out[k] = flat[i:i + p.numel()].view_as(p)   # (n,) slice -> parameter shape
            i += p.numel()
        return out

    # ---- one LSTM-written update ----------------------------------------------------------
    def lstm_step(self, c: Tensor, grad: Tensor, loss: Tensor,
                  state: tuple[Tensor, Tensor, Tensor, Tensor]) -> tuple[Tensor, tuple, Tensor, Tensor]:
        """c_{t-1}, g_t (n,), L_t () and state (h, s, f, i) -> c_t, new state, sig(f_t), sig(i_t).

        The first layer is nn.LSTMCell(4, hidden)'s computation (its weights, gate order i, f, g, o) written out
        with the coordinates LAST: h, s are (hidden, n) and the gate pre-activations (4 hidden, n), so each gate
        is a contiguous block of rows and the input and recurrent products are one GEMM. nn.LSTMCell's
        (n, 4 hidden) layout makes every gate a strided column slice, which is slower on Conv-4-64's 113k
        coordinates (benchmarks/metalstm_step.py has the measurement). The loss inputs are the same for
        every coordinate, so their part of the product folds into the bias."""
        h, s, f_prev, i_prev = state
        lstm, hid = self.lstm, self.lstm.hidden_size
        pre_loss = preprocess(loss.reshape(()), self.preprocess_p)                     # (2,)
        pre_grad = preprocess(grad, self.preprocess_p).T                               # (2, n)
        bias = lstm.bias_ih + lstm.bias_hh + lstm.weight_ih[:, :2] @ pre_loss          # (4 hidden,)
        weight = torch.cat([lstm.weight_ih[:, 2:], lstm.weight_hh], dim=1)              # (4 hidden, 2 + hidden)
        z = torch.addmm(bias.unsqueeze(1), weight, torch.cat([pre_grad, h]))           # (4 hidden, n), one pass
        i_f = torch.sigmoid(z[:2 * hid])                                               # input, forget gates
        s = i_f[hid:] * s + i_f[:hid] * torch.tanh(z[2 * hid:3 * hid])
        h = torch.sigmoid(z[3 * hid:]) * torch.tanh(s)
        c, f, i = self.cell(h, grad, c, f_prev, i_prev)
        return c, (h, s, f, i), torch.sigmoid(f), torch.sigmoid(i)

    def initial_state(self, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(h_0, s_0, f_0, i_0) = 0 for the flat parameters c (n,): h, s (hidden, n); f, i (n,)."""
        n, zeros = c.numel(), c.detach().new_zeros
        return zeros(self.lstm.hidden_size, n), zeros(self.lstm.hidden_size, n), zeros(n), zeros(n)

    def adapt_trajectory(self, task: Task, steps: int, create_graph: bool) -> Iterator[Learner]:
        """The LSTM writes every update. `create_graph`: keep the graph from theta_t back to the
        meta-parameters (training); the learner's gradients are detached inputs either way."""
        track = create_graph and torch.is_grad_enabled()
        ctx = contextlib.nullcontext() if track else torch.no_grad()
        with ctx:
            c = self.flat_init()
        state = self.initial_state(c)
        if self._trace is not None:   # record_diagnostics / gate_trace keep the last trajectory only
            for series in self._trace.values():
                series.clear()
        yield Learner(self, self.unflatten(c), 0)
        for t in range(steps):
            with torch.enable_grad():
                theta = c.detach().requires_grad_(True)   # break the graph: g_t, L_t are constants
                loss = self.loss(self.forward_with(self.unflatten(theta), task.x_support, t), task.y_support)
                (grad,) = torch.autograd.grad(loss, theta)
            with ctx:
                c, state, f_gate, i_gate = self.lstm_step(c, grad, loss.detach(), state)
            if self._trace is not None:
                self._record(f_gate.detach(), i_gate.detach())
            yield Learner(self, self.unflatten(c), t + 1)

    # ---- gate values (the paper's Fig. 2) ------------------------------------------------------
    def _record(self, f_gate: Tensor, i_gate: Tensor) -> None:
        assert self._trace is not None
        self._trace["forget"].append(f_gate.mean())
        self._trace["input"].append(i_gate.mean())
        sizes = [p.numel() for p in self.model.parameters()]
        self._trace["forget_by_param"].append(torch.stack([v.mean() for v in f_gate.split(sizes)]))
        self._trace["input_by_param"].append(torch.stack([v.mean() for v in i_gate.split(sizes)]))

    @contextlib.contextmanager
    def _tracing(self) -> Iterator[None]:
        self._trace = {"forget": [], "input": [], "forget_by_param": [], "input_by_param": []}
        try:
            yield
        finally:
            self._trace = None

    def _stacked_trace(self) -> dict[str, object]:
        assert self._trace is not None
        empty = torch.zeros(0, len(list(self.model.parameters())))
        out: dict[str, object] = {k: torch.stack(v) if v else (empty if "by" in k else torch.zeros(0))
                                  for k, v in self._trace.items()}
        out["param_names"] = [k for k, _ in self.model.named_parameters()]
        return out

    def gate_trace(self, task: Task, steps: int | None = None) -> dict[str, object]:
        """sigmoid of the input gate i_t and forget gate f_t over `steps` inner steps on `task`.

        Returns {"input": (steps,), "forget": (steps,)} means over all coordinates, plus
        "input_by_param"/"forget_by_param": (steps, n_param_tensors) means per parameter tensor (the paper
        plots one coordinate per layer) and "param_names" in that column order.
        """
        steps = self.eval_inner_steps if steps is None else steps
        with self._tracing():
            for _ in self.adapt_trajectory(task, steps, create_graph=False):
                pass
            return self._stacked_trace()

    @contextlib.contextmanager
    def record_diagnostics(self) -> Iterator[dict[str, dict[str, Any]]]:
        """The gate_trace of the last adaptation inside the block (e.g. the one evaluate_task scores), as
        {"gates": {"input", "forget": [per step], "input_by_param", "forget_by_param": {name: [per step]}}}."""
        out: dict[str, dict[str, Any]] = {}
        with self._tracing():
            yield out
            tr = self._stacked_trace()
        gates: dict[str, Any] = {k: tr[k].tolist() for k in ("input", "forget")}
        for k in ("input_by_param", "forget_by_param"):
            gates[k] = {name: tr[k][:, j].tolist() for j, name in enumerate(tr["param_names"])}   # (steps,)
        out["gates"] = gates
