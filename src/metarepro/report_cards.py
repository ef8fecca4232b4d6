"""What a report renders, one card per kind (torch-free, no plotting imports).

Figures: what a figure reads from each run of its report, which runs it takes, and its caption. The config schema's
`reports.*.figures` names, the report CLI's `figure --kind` choices and the workflow's one figure rule are derived
from these cards; the renderers live in metarepro.report.figures (FIGURES) and metarepro.report.analysis
(ANALYSIS_FIGURES), keyed by `renderer`.

Side tables: the tables a report adds beside its main one when its config sets their flag (`complexity: true`,
`cross_domain: true`): {report}_{kind}.md/.csv, rendered by `python -m metarepro report <kind>`, with one workflow
rule for all of them."""
from __future__ import annotations

from dataclasses import dataclass

from .formats import CONFIG_FILE, EVAL_FILE, TRAIN_LOG


@dataclass(frozen=True)
class FigureCard:
    kind: str                    # the config's name and the file's suffix: {reports_dir figures}/{report}_{kind}.png
    renderer: str                # `python -m metarepro report figure --kind <renderer>`
    reads: tuple[str, ...]       # the files of each run the figure reads
    run_dirs: bool               # the renderer takes run directories (else the `reads` files themselves)
    caption: str                 # the Snakemake report's caption, after "Report <name>:"
    only_kind: str = ""          # only the report's runs on datasets of this kind (the dataset cards' `kind`)
    only_flag: str = ""          # only the report's runs of methods whose card sets this flag (variants included)
    paper: bool = False          # also reads the published numbers (config/paper_results.csv)
    index: str = ""              # its line in the reports' index (reports/README.md), after the report's name


_CML = ("One of CML's analyses (Shin et al. 2024): ``cml_noise`` (CML against Gaussian noise of the same norm on the "
        "meta-gradient), ``cml_cosine`` (cosine similarity of the learner's and the co-learner's meta-gradients on "
        "the feature extractor), ``grad_norms`` (the feature extractor's meta-gradient norm), ``cka`` (linear CKA of "
        "the query features before and after adaptation) or ``tsne`` (t-SNE of adapted query features). This one: ")
_TRAIN = (TRAIN_LOG, CONFIG_FILE)

FIGURE_CARDS: dict[str, FigureCard] = {c.kind: c for c in (
    FigureCard("curves", "curves", _TRAIN, True, paper=True,
               index="meta-training loss and validation score vs iteration",
               caption="meta-training curves of every run in the report (meta-training loss, and validation accuracy "
                       "or MSE at each validation step), read from each run's ``train_log.csv``."),
    FigureCard("inner_steps", "inner_steps", (EVAL_FILE,), False,
               index="test score (mean ± 95% CI) vs number of inner gradient steps",
               caption="test accuracy (or MSE) as a function of the number of inner-loop adaptation steps at test "
                       "time, per method and setting, with 95% confidence intervals over the fixed evaluation "
                       "episodes."),
    FigureCard("fits", "sinusoid_fits", (EVAL_FILE,), False, only_kind="regression",
               index="sinusoid fits before and after inner steps (cf. Finn et al. 2017, Fig. 2)",
               caption="sinusoid regression after adapting on K support points (Finn et al. 2017, Fig. 2): the true "
                       "function, the support points, and each method's prediction before and after its inner-loop "
                       "steps."),
    FigureCard("gates", "gates", (EVAL_FILE,), False, only_flag="records_gates",
               index="input and forget gate values vs inner step (Meta-LSTM; cf. Ravi & Larochelle 2017, Fig. 2)",
               caption="Meta-LSTM's input gate (the learned learning rate) and forget gate (the learned shrinkage) "
                       "at each inner step, averaged over all learner parameters, with 95% confidence intervals over "
                       "the first ``curve_episodes`` test episodes; one line per run, e.g. 1-shot vs 5-shot (cf. "
                       "Ravi & Larochelle 2017, Fig. 2)."),
    FigureCard("loss_variance", "loss_variance", _TRAIN, True,
               index="variance of the inner-loop loss across validation tasks and validation score vs iteration "
                     "(cf. Rajasegaran et al. 2020, PAMELA vs MAML)",
               caption="at each validation step of meta-training, the variance across the validation episodes of "
                       "the support-set loss after the inner loop (left, log scale when positive) and the validation "
                       "accuracy or MSE (right), one line per run, read from each run's ``train_log.csv`` (columns "
                       "``val_inner_loss_var`` and ``val_mean``). Runs with no meta-training iterations (baselines) "
                       "are left out."),
    *(FigureCard(k, k, _TRAIN + (EVAL_FILE,), True, caption=_CML + k + ".")
      for k in ("cml_noise", "cml_cosine", "grad_norms", "cka", "tsne")),
)}
RENDERERS: tuple[str, ...] = tuple(c.renderer for c in FIGURE_CARDS.values())


@dataclass(frozen=True)
class SideTableCard:
    kind: str                    # the CLI subcommand and the file's suffix: {reports_dir}/tables/{report}_{kind}.md
    flag: str                    # the report's config flag that asks for it
    title: str                   # its heading, before the report's title
    caption: str                 # the Snakemake report's caption, after "Report <name>:"
    # what `report <kind>` reads: "run_dirs" (each run of the report: its folder, whose eval.json and config.yaml
    # are the job's inputs) or "cross_domain_evals" (the eval_xdomain_<target>.json files of the report's runs
    # and the in-domain eval.json files beside them, given as the files themselves)
    reads: str = "run_dirs"
    # the function that renders it, `<module of metarepro.report>:<function>`, called as f(inputs, out_md, title)
    # -> (md, csv): `python -m metarepro report <kind>` is generated from this card
    renderer: str = ""


SIDE_TABLE_CARDS: dict[str, SideTableCard] = {c.kind: c for c in (
    SideTableCard("complexity", "complexity", "Complexity (parameters, time, memory)",
                  renderer="complexity:make_complexity_table",
                  caption="for each method and setting, the number of parameters (and its difference to MAML's in "
                          "the same setting), the meta-training wall time per iteration, the test-time adaptation "
                          "time per task and the peak memory of training and evaluation, read from each run's "
                          "``eval.json`` and ``config.yaml``. Times and memory depend on the machine that ran the "
                          "jobs (``eval_device`` column); the Markdown table has notes on what each number "
                          "includes."),
    SideTableCard("xdomain", "cross_domain", "Cross-domain", reads="cross_domain_evals",
                  renderer="xdomain:make_xdomain_table",
                  caption="for each method, its accuracy on its own dataset's test classes beside its accuracy on "
                          "another dataset's test classes (the target's fixed test episodes, images converted to the "
                          "source model's input and normalised with the source's training statistics), the same "
                          "method trained on the target where the report has it, and paired tests between methods "
                          "on the same target episodes."),
)}
SIDE_TABLE_INPUTS = {"run_dirs": ("RUN_DIR", "run directories holding eval.json and config.yaml"),
                     "cross_domain_evals": ("EVAL_JSON", "eval_xdomain_<target>.json files and the in-domain "
                                                         "eval.json files to set beside them")}
SIDE_TABLE_READS = tuple(SIDE_TABLE_INPUTS)      # what a side-table card's `reads` may say
