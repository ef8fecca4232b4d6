"""The report figures, one card per kind (torch-free, no plotting imports): what a figure reads from each run of its
report, which runs it takes, and its caption. The config schema's `reports.*.figures` names, the report CLI's
`figure --kind` choices and the workflow's one figure rule are all derived from these cards; the renderers live in
metarepro.report.figures (FIGURES) and metarepro.report.analysis (ANALYSIS_FIGURES), keyed by `renderer`."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FigureCard:
    kind: str                    # the config's name and the file's suffix: {reports_dir figures}/{report}_{kind}.png
    renderer: str                # `python -m metarepro report figure --kind <renderer>`
    reads: tuple[str, ...]       # the files of each run the figure reads
    run_dirs: bool               # the renderer takes run directories (else the `reads` files themselves)
    caption: str                 # the Snakemake report's caption, after "Report <name>:"
    only_dataset: str = ""       # only the report's runs on this dataset
    only_method: str = ""        # only the report's runs of this registered method (its variants included)
    paper: bool = False          # also reads the published numbers (config/paper_results.csv)


_CML = ("One of CML's analyses (Shin et al. 2024): ``cml_noise`` (CML against Gaussian noise of the same norm on the "
        "meta-gradient), ``cml_cosine`` (cosine similarity of the learner's and the co-learner's meta-gradients on "
        "the feature extractor), ``grad_norms`` (the feature extractor's meta-gradient norm), ``cka`` (linear CKA of "
        "the query features before and after adaptation) or ``tsne`` (t-SNE of adapted query features). This one: ")
_TRAIN = ("train_log.csv", "config.yaml")

FIGURE_CARDS: dict[str, FigureCard] = {c.kind: c for c in (
    FigureCard("curves", "curves", _TRAIN, True, paper=True,
               caption="meta-training curves of every run in the report (meta-training loss, and validation accuracy "
                       "or MSE at each validation step), read from each run's ``train_log.csv``."),
    FigureCard("inner_steps", "inner_steps", ("eval.json",), False,
               caption="test accuracy (or MSE) as a function of the number of inner-loop adaptation steps at test "
                       "time, per method and setting, with 95% confidence intervals over the fixed evaluation "
                       "episodes."),
    FigureCard("fits", "sinusoid_fits", ("eval.json",), False, only_dataset="sinusoid",
               caption="sinusoid regression after adapting on K support points (Finn et al. 2017, Fig. 2): the true "
                       "function, the support points, and each method's prediction before and after its inner-loop "
                       "steps."),
    FigureCard("gates", "gates", ("eval.json",), False, only_method="metalstm",
               caption="Meta-LSTM's input gate (the learned learning rate) and forget gate (the learned shrinkage) "
                       "at each inner step, averaged over all learner parameters, with 95% confidence intervals over "
                       "the first ``curve_episodes`` test episodes; one line per run, e.g. 1-shot vs 5-shot (cf. "
                       "Ravi & Larochelle 2017, Fig. 2)."),
    FigureCard("loss_variance", "loss_variance", _TRAIN, True,
               caption="at each validation step of meta-training, the variance across the validation episodes of "
                       "the support-set loss after the inner loop (left, log scale when positive) and the validation "
                       "accuracy or MSE (right), one line per run, read from each run's ``train_log.csv`` (columns "
                       "``val_inner_loss_var`` and ``val_mean``). Runs with no meta-training iterations (baselines) "
                       "are left out."),
    *(FigureCard(k, k, _TRAIN + ("eval.json",), True, caption=_CML + k + ".")
      for k in ("cml_noise", "cml_cosine", "grad_norms", "cka", "tsne")),
)}
RENDERERS: tuple[str, ...] = tuple(c.renderer for c in FIGURE_CARDS.values())
