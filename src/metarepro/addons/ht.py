"""MTL's hard-task (HT) meta-batch (Sun et al. 2019, "Meta-Transfer Learning for Few-Shot Learning", CVPR, Sec. 4.2;
journal version arXiv:1910.03648), as a task sampler that works with any method.

The official code never released HT. Our reading of the paper, step by step:
1. An ordinary meta-batch is sampled and trained on as usual.
2. From each of its tasks, the class with the lowest query accuracy after adaptation (the "failure class"; ties:
   the lowest label) joins a pool of failure classes.
3. As soon as the pool holds at least N (ways) distinct classes, the next meta-iteration trains on a hard
   meta-batch of `hard_tasks` tasks (default: the meta-batch size): each is N classes drawn from the pool without
   replacement, with fresh support and query images, i.e. "re-sampled from the failure classes". The pool is then
   emptied and the cycle starts again. (With meta-batch >= N every other iteration is hard; with meta-batch 4 and
   5 ways, two ordinary batches fill the pool first.)
Hard meta-batches count as meta-iterations of the budget, and their own results are not mined. Every draw is a
pure function of (seed, iteration), and the pool is saved in the checkpoint, so resumed runs see the same tasks.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..data.sampling import ImageEpisodes, TaskSampler
from ..methods.base import Task, TaskResult

HARD_KEY = 7_919     # separates the hard tasks' random streams from the ordinary episodes' (seed, index)


def failure_class(result: TaskResult) -> int:
    """The global class id of the task's class with the lowest query accuracy (ties: the lowest label)."""
    if result.class_accuracy is None or not result.classes:
        raise ValueError("the hard-task sampler needs per-class accuracies of classification tasks")
    return int(result.classes[int(np.argmin(result.class_accuracy))])


class HardTaskSampler(TaskSampler):
    name = "ht"

    def __init__(self, episodes: ImageEpisodes, hard_tasks: int | None) -> None:
        # hard_tasks: tasks per hard meta-batch; None = the ordinary meta-batch size (the card's default)
        if not isinstance(episodes, ImageEpisodes):
            raise ValueError("the hard-task meta-batch needs a classification dataset (it re-samples classes)")
        super().__init__(episodes)
        self.hard_tasks = hard_tasks
        self.pool: list[int] = []          # failure classes since the last hard meta-batch, in order
        self.hard_next = False             # the next meta-batch is a hard one
        self.hard_iterations: list[int] = []   # which meta-iterations were hard (logged, checkpointed)

    def sample(self, iteration: int, batch: int) -> list[Task]:
        if not self.hard_next:
            return super().sample(iteration, batch)
        eps: ImageEpisodes = self.episodes      # type: ignore[assignment]
        pool = np.array(sorted(set(self.pool)), dtype=np.int64)
        tasks = []
        for b in range(self.hard_tasks or batch):
            rng = np.random.default_rng([eps.seed, HARD_KEY, iteration, b])
            tasks.append(eps.episode_of(rng.choice(pool, size=eps.ways, replace=False), (HARD_KEY, iteration, b, 1)))
        self.hard_iterations.append(iteration)
        return tasks

    def feedback(self, tasks: list[Task], results: Sequence[TaskResult]) -> None:
        if self.hard_next:                  # the hard batch just trained: start a new pool
            self.hard_next, self.pool = False, []
            return
        self.pool += [failure_class(r) for r in results]
        self.hard_next = len(set(self.pool)) >= self.episodes.ways

    def state_dict(self) -> dict:
        return {"pool": list(self.pool), "hard_next": self.hard_next, "hard_iterations": list(self.hard_iterations)}

    def load_state_dict(self, state: dict) -> None:
        self.pool, self.hard_next = [int(c) for c in state["pool"]], bool(state["hard_next"])
        self.hard_iterations = [int(i) for i in state.get("hard_iterations", [])]
