"""Stacked second-order MAML: the per-task convolution as a grouped convolution (ours) vs two alternatives.

Conv-4-64 on random Omniglot-shaped tasks (5-way 1-shot, Q queries per class), a meta-batch of T tasks run as one
stack (`train.stack_tasks`), one thread. Alternatives: `unfold` (explicit im2col with F.unfold, then one batched
matmul per task, whose double backward is plain matmuls) and, with VARIANT=cl, the same grouped convolution in
channels-last. Prints the largest meta-gradient difference to the grouped convolution's, then the paired
per-meta-step time ratio grouped/alternative (> 1: the alternative is faster), median and range over 10 steps.

    PYTHONPATH=src python benchmarks/stacked_conv_variants.py 32 1          # Finn's protocol: 32 tasks, 1 query
    VARIANT=cl PYTHONPATH=src python benchmarks/stacked_conv_variants.py 32 1
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from metarepro import methods, models
from metarepro.models import task_layers
from metarepro.addons.outer import meta_step
from metarepro.methods.base import Task
torch.set_num_threads(1)
T, Q = int(sys.argv[1]), int(sys.argv[2])
orig = task_layers.TaskConv2d.forward

def unfold_forward(self, x):
    if self.weight.dim() != 5:
        return orig(self, x)
    t, o, c, k, _ = self.weight.shape
    if x.dim() == 5:
        x = x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:])
    n, _, h, w = x.shape
    cols = F.unfold(x, k, padding=self.padding)                       # (N, T*C*k*k, L)
    L = cols.shape[-1]
    cols = cols.view(n, t, c * k * k, L).permute(1, 2, 0, 3).reshape(t, c * k * k, n * L)
    y = torch.baddbmm(self.bias.unsqueeze(-1), self.weight.reshape(t, o, c * k * k), cols)   # (T, O, N*L)
    ho = (h + 2 * self.padding[0] - k) // self.stride[0] + 1
    wo = (w + 2 * self.padding[1] - k) // self.stride[1] + 1
    return y.view(t, o, n, ho, wo).permute(2, 0, 1, 3, 4).reshape(n, t * o, ho, wo)

def cl_forward(self, x):
    if self.weight.dim() != 5:
        return orig(self, x)
    t = self.weight.shape[0]
    if x.dim() == 5:
        x = x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:])
    w = self.weight.reshape(-1, *self.weight.shape[2:]).contiguous(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    return F.conv2d(x, w, self.bias.reshape(-1), self.stride, self.padding, self.dilation, self.groups * t)

import os  # noqa: E402
if os.environ.get("VARIANT") == "cl":
    unfold_forward = cl_forward

def tasks(seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(T):
        x = torch.rand(5, 1 + Q, 1, 28, 28, generator=g)
        y = torch.arange(5).view(-1, 1).expand(-1, 1 + Q)
        out.append(Task(x[:, :1].reshape(-1, 1, 28, 28).contiguous(), y[:, :1].reshape(-1).contiguous(),
                        x[:, 1:].reshape(-1, 1, 28, 28).contiguous(), y[:, 1:].reshape(-1).contiguous()))
    return out

def make():
    torch.manual_seed(0)
    m = models.build("conv4", (1, 28, 28), 5, filters=64)
    l = methods.build("maml", m, "classification", inner_lr=0.4, inner_steps=1, eval_inner_steps=1)
    l.model.stack_tasks = True
    return l

lg, lu = make(), make()
opt_g = torch.optim.SGD(lg.parameters(), lr=0.0)
opt_u = torch.optim.SGD(lu.parameters(), lr=0.0)
# check gradients agree
b = tasks(0)
task_layers.TaskConv2d.forward = orig; meta_step(lg, b, opt_g)
task_layers.TaskConv2d.forward = unfold_forward; meta_step(lu, b, opt_u)
d = max(float((p.grad - q.grad).abs().max()) for p, q in zip(lg.parameters(), lu.parameters()))
mg = max(float(p.grad.abs().max()) for p in lg.parameters())
print(f"T={T} Q={Q} max|grad diff| {d:.2e} of max|grad| {mg:.2e}")
ratios = []
for it in range(12):
    b = tasks(it + 1)
    times = {}
    for name in (("g", "u") if it % 2 else ("u", "g")):
        task_layers.TaskConv2d.forward = orig if name == "g" else unfold_forward
        l, o = (lg, opt_g) if name == "g" else (lu, opt_u)
        t0 = time.perf_counter(); meta_step(l, b, o); times[name] = time.perf_counter() - t0
    if it >= 2:
        ratios.append(times["g"] / times["u"])
print("grouped/unfold time ratio median", round(statistics.median(ratios), 3), "range", round(min(ratios), 3), round(max(ratios), 3))
