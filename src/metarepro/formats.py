"""The files a run leaves behind, described once: the torch side (metatrain, pretrain, evaluate) writes them and the
torch-free report side reads them, both from these names. Importing this module imports neither torch nor pandas.

- ``train_log.csv`` (metatrain): one row per meta-iteration, TRAIN_LOG_FIELDS in order, then one ``<term>_loss``
  column per outer-loss add-on term (e.g. ``cml_loss``), then the gradient diagnostics' columns when the run's
  ``train.diagnostics_every`` is set (e.g. ``grad_norm_features``, ``cml_cos_features``); validation columns are
  filled on validation iterations only. The report figures read TRAIN_LOG_PLOTTED.
- ``train_log.csv`` (pretrain): one row per LOG_EVERY steps, PRETRAIN_LOG_FIELDS.
- ``model.pt`` (metatrain): a dict with at least MODEL_KEYS.
- ``eval.json`` (evaluate): an object with at least EVAL_REQUIRED, whose ``run`` has at least EVAL_RUN_REQUIRED.
"""
from __future__ import annotations

TRAIN_LOG = "train_log.csv"
# val_inner_loss(_var): mean and variance over the validation episodes of the support loss after adaptation
# skipped: 1 where the meta-step was skipped because a gradient was inf/NaN (a diverging inner loop)
TRAIN_LOG_FIELDS: tuple[str, ...] = ("iteration", "meta_loss", "meta_metric", "val_mean", "val_ci95", "val_inner_loss",
                                     "val_inner_loss_var", "lr", "skipped", "elapsed_s")
TRAIN_LOG_PLOTTED: tuple[str, ...] = TRAIN_LOG_FIELDS[:5]   # what the training-curve figures need

PRETRAIN_LOG_FIELDS: tuple[str, ...] = ("step", "epoch", "loss", "accuracy", "val_mean", "val_ci95", "lr", "elapsed_s")

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.yaml"       # a finished job's config with its provenance (every training stage)
MODEL_KEYS: tuple[str, ...] = ("run", "state", "best_iteration", "val_mean", "val_ci95", "wall_time_s")

EVAL_FILE = "eval.json"
EVAL_REQUIRED: tuple[str, ...] = ("run", "metric", "mean", "ci95")
EVAL_RUN_REQUIRED: tuple[str, ...] = ("dataset", "method", "ways", "shots", "seed")
# the score of an outer-loss term's test-time hook (e.g. CML's co-learner predicting: CML's dagger), when the run has
# one, sits under the key its add-on card names (`eval_key`): {mean, ci95, std, per_episode, wall_time_s}
