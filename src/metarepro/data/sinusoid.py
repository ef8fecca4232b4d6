"""Sinusoid regression tasks (Finn et al. 2017, Sec. 5.1).

y = A sin(w x - phi), A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5], w = 1; K support and Q query points per task.
Li et al. 2017 (Meta-SGD, Sec. 4.1) also draw the frequency, w ~ U[0.8, 1.2] (`frequency: [0.8, 1.2]`); a fixed
frequency draws nothing, so MAML's task stream is the same as before the option existed.
Generated on the fly: no download, no prepare.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..task import Task


class SinusoidTasks:
    def __init__(self, amplitude: Sequence[float] = (0.1, 5.0), phase: Sequence[float] = (0.0, math.pi),
                 x_range: Sequence[float] = (-5.0, 5.0), frequency: Sequence[float] = (1.0, 1.0)) -> None:
        self.amplitude, self.phase, self.x_range = tuple(amplitude), tuple(phase), tuple(x_range)
        self.frequency = tuple(frequency)

    def task(self, rng: np.random.Generator, shots: int, queries: int) -> Task:
        amp = rng.uniform(*self.amplitude)
        phase = rng.uniform(*self.phase)
        lo, hi = self.frequency
        freq = float(lo) if lo == hi else rng.uniform(lo, hi)    # a fixed frequency leaves the stream unchanged
        x = rng.uniform(*self.x_range, size=(shots + queries, 1))
        y = amp * np.sin(freq * x - phase)
        xt = torch.as_tensor(x, dtype=torch.float32)
        yt = torch.as_tensor(y, dtype=torch.float32)
        return Task(xt[:shots], yt[:shots], xt[shots:], yt[shots:],
                    info={"amplitude": amp, "phase": phase, "frequency": freq})

    def curve(self, amp: float, phase: float, n: int = 200, frequency: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        x = np.linspace(*self.x_range, n)
        return x, amp * np.sin(frequency * x - phase)
