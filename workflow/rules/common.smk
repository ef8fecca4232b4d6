# Helpers shared by workflow/rules/*.smk: paths, the runs that a config asks for, CLI arguments.
#
# Every shell line runs `PYTHONPATH=src python -m metarepro ...` from the repository root: a conda env
# made from environment.yml cannot hold an editable install of this checkout (Snakemake creates it
# from a copy of the file in .snakemake/conda/, where `-e .` would point elsewhere), and with the
# package installed it is the same code. A person can paste a printed line into a shell as it is.
import functools
import glob
import json
import math
import os
import re

from metarepro.data.preflight import check_sources
from metarepro.config import (MethodName, dataset_args, experiment_gpus, find_experiment, iter_cross_domain,
                              iter_pretrains, iter_runs, resolve_pretrain, resolve_run, used_datasets)
from metarepro.cards import with_flag
from metarepro.dataset_cards import DATASET_CARDS, MEM_MB, ON_THE_FLY, REGRESSION, SYNTHESIZED
from metarepro.report_cards import FIGURE_CARDS, SIDE_TABLE_CARDS

# Every path comes from the config, so `--configfile config/paper.yaml` writes elsewhere.
RESULTS = config["results_dir"]
REPORTS = config["reports_dir"]
FIGURES = config["figures_dir"] or f"{REPORTS}/figures"
DATA = config["data"]["dir"]
RAW = config["data"]["raw_dir"]
LOGS = f"logs/{config['profile']}"
RUN = f"{RESULTS}/{{dataset}}/{{method}}/{{ways}}way{{shots}}shot/seed{{seed}}"
RUN_LOG = "{dataset}/{method}/{ways}way{shots}shot/seed{seed}.log"
RUN_BENCH = RUN_LOG[: -len(".log")] + ".tsv"   # Snakemake `benchmark:` files (wall, CPU time, RSS per job)
PRETRAIN = f"{RESULTS}/{{dataset}}/pretrain/{{backbone}}/seed{{seed}}"
# Where raw archives come from: METAREPRO_MIRROR overrides data.mirror; "none" = the official URLs.
MIRROR = os.environ.get("METAREPRO_MIRROR", config["data"]["mirror"]) or "none"
GENERATED = set(ON_THE_FLY)  # datasets sampled on the fly: no download, no prepare
SPLITS = ("train", "val", "test")
# Meta-training seconds per task and iteration by backbone on one CPU core (the peak memory of a job by dataset
# is its card's MEM_MB): scheduler hints only (cluster profiles, --resources).
SECONDS_PER_TASK = {"mlp": 0.005, "conv4": 0.1, "resnet12": 2.0, "gnn": 0.02}
# Pretraining seconds per image on one CPU core (forward + backward), by backbone: scheduler hints only.
SECONDS_PER_IMAGE = {"conv4": 0.003, "resnet12": 0.05}


def _alternatives(names):
    return "|".join(map(re.escape, sorted(names))) or "(?!)"  # (?!) matches nothing


wildcard_constraints:
    dataset=_alternatives(used_datasets(config)),
    method=_alternatives({m for exp in config["experiments"].values() for m in exp["methods"]}),
    ways=r"\d+",
    shots=r"\d+",
    seed=r"\d+",
    name=_alternatives(config["reports"]),


def runs(experiments=None):
    """Every (experiment, method, shots, seed) run of the config, or of the given experiments."""
    return iter_runs(config, experiments)


def run_files(runs_, *names):
    return [f"{r.run_dir}/{n}" for r in runs_ for n in names]


def run_evals(runs_):
    """Each run's eval.json, plus eval_{k}shot.json for its experiment's `test_shots` other than its own shots."""
    out = []
    for r in runs_:
        out.append(f"{r.run_dir}/eval.json")
        extra = config["experiments"][r.experiment].get("test_shots") or []
        out += [f"{r.run_dir}/eval_{k}shot.json" for k in extra if k != r.shots]
    return out


@functools.lru_cache(maxsize=None)
def _resolved(dataset, method, ways, shots, seed):
    """One run's RunConfig, resolved once per Snakemake process: the input, param, resource and priority functions
    of its jobs all ask for it (the config does not change while Snakemake plans)."""
    exp = find_experiment(config, dataset, method, ways, shots)
    return resolve_run(config, exp, method, shots, seed)


@functools.lru_cache(maxsize=None)
def _run_json(dataset, method, ways, shots, seed):
    return _resolved(dataset, method, ways, shots, seed).to_json()


def run_config(wildcards):
    """The resolved RunConfig (JSON) of one run: a param, so editing a method's hparams re-runs its jobs."""
    w = wildcards
    return _run_json(w.dataset, w.method, int(w.ways), int(w.shots), int(w.seed))


def dataset_options(dataset):
    """The dataset's resolved options block (JSON), as the runs on it (and cross-domain tests on it) see it."""
    return json.dumps(dataset_args(config, dataset), sort_keys=True)


def planned_downloads():
    """The datasets whose download job this invocation will run (the planned jobs, as `onstart` sees them)."""
    try:
        return {job.wildcards.dataset for job in workflow.dag.needrun_jobs() if job.rule.name == "download"}
    except AttributeError:  # another Snakemake's internals: every dataset the config downloads
        return set(used_datasets(config)) - GENERATED - SYNTHESIZED


def prepared(dataset):
    """The files of a prepared dataset (none for generated ones)."""
    if dataset in GENERATED:
        return []
    return [f"{DATA}/{dataset}/meta.json"] + [f"{DATA}/{dataset}/{s}.npz" for s in SPLITS]


def run_gpus(wildcards):
    """GPUs of a run's training / evaluation job (its experiment's `gpu`, else the top-level one for images)."""
    w = wildcards
    return experiment_gpus(config, find_experiment(config, w.dataset, w.method, int(w.ways), int(w.shots)))


def xdomain_flags(wildcards):
    """`--drop-overlap` when the run's experiment asks its cross-domain target to be scored without the test
    classes the source trained on (`cross_domain: [{dataset: ..., drop_overlap: true}]`)."""
    w = wildcards
    exp = config["experiments"][find_experiment(config, w.dataset, w.method, int(w.ways), int(w.shots))]
    drop = any(t["dataset"] == w.target and t.get("drop_overlap") for t in exp.get("cross_domain") or [])
    return "--drop-overlap" if drop else ""


def pretrain_gpus(wildcards):
    return int(config.get("gpu", 0))


# The conda environment of a job: the CUDA build of torch for jobs given a GPU, else the CPU build.
CPU_ENV, CUDA_ENV = "../../environment.yml", "../../environment.cuda.yml"
# Whether any job of this config asks for a GPU. Where none does (a CPU run), every job's conda env and `gpu`
# resource are constants, which Snakemake does not evaluate job by job (about a tenth of a second of the paper
# grid's dry run, benchmarks/README.md).
ANY_GPU = int(config.get("gpu", 0)) > 0 or any(experiment_gpus(config, e) for e in config["experiments"])


def job_gpus(gpus):
    """A rule's `gpu` resource: the function `gpus` of a job's wildcards, or 0 where no job asks for a GPU."""
    return gpus if ANY_GPU else 0


def job_env(gpus):
    """A rule's conda env: the CUDA one for jobs that `gpus` gives a GPU, else the CPU one."""
    return (lambda w: CUDA_ENV if gpus(w) else CPU_ENV) if ANY_GPU else CPU_ENV


def train_runtime(wildcards):
    """Minutes a meta-training job may take (a generous estimate from the run's resolved train settings)."""
    w = wildcards
    run = _resolved(w.dataset, w.method, int(w.ways), int(w.shots), int(w.seed))
    per_task = SECONDS_PER_TASK.get(run.backbone, 1.0)
    return 10 + math.ceil(run.train["iterations"] * run.train["meta_batch"] * per_task / 60)


def train_priority(wildcards):
    """Longest trainings first (their estimated minutes), so the longest job does not start last and stretch the
    wall time of a run on few cores; data preparation comes before any training (DATA_PRIORITY)."""
    return train_runtime(wildcards)


DATA_PRIORITY = 1000


def pretrains():
    """Every (dataset, backbone, seed) pretraining that the config's methods need."""
    return iter_pretrains(config)


def pretrain_config(wildcards):
    """The resolved PretrainConfig (JSON): a param, so editing a dataset's `pretrain:` block re-runs it."""
    return resolve_pretrain(config, wildcards.dataset, wildcards.backbone, int(wildcards.seed)).to_json()


def pretrained_input(wildcards):
    """The pretrain stage's backbone.pt for methods that start from it (none for the others)."""
    w = wildcards
    path = _resolved(w.dataset, w.method, int(w.ways), int(w.shots), int(w.seed)).pretrained
    return [path] if path else []


def pretrain_runtime(wildcards):
    """Minutes a pretraining job may take (a generous estimate from the config and meta.json's image count)."""
    pc = json.loads(pretrain_config(wildcards))
    meta = f"{DATA}/{wildcards.dataset}/meta.json"
    images = json.load(open(meta))["splits"]["train"]["images"] if os.path.exists(meta) else 50000
    images *= 4 if pc["dataset_args"].get("rotations") else 1
    seconds = pc["pretrain"]["epochs"] * images * SECONDS_PER_IMAGE.get(pc["backbone"], 0.05)
    return 10 + math.ceil(seconds / 60)


def report_runs(name, datasets=None, bases=None):
    """The runs behind report `name` (only those on one of `datasets`, and of one of the registered methods `bases`
    or their variants `method@tag`, if given)."""
    found = runs(config["reports"][name]["experiments"])
    methods, shots = config["reports"][name].get("methods"), config["reports"][name].get("shots")
    return [r for r in found if (datasets is None or r.dataset in datasets)
            and (methods is None or r.method in methods) and (shots is None or r.shots in shots)
            and (bases is None or MethodName.parse(r.method).base in bases)]


PAPER_RESULTS = "config/paper_results.csv"


def _figure_runs(wildcards):
    """The runs a figure of report `name` reads: all of the report's, or those its card restricts it to (the
    gates figure: the runs of methods whose card sets `records_gates`, which alone record gate values)."""
    card = FIGURE_CARDS[wildcards.kind]
    datasets = {d for d, c in DATASET_CARDS.items() if c.kind == card.only_kind} if card.only_kind else None
    bases = sorted(with_flag(card.only_flag)) if card.only_flag else None
    found = report_runs(wildcards.name, datasets, bases)
    if not found and bases is not None:
        raise ValueError(f"report {wildcards.name!r} asks for the {card.kind} figure but has no {' / '.join(bases)} "
                         f"run: drop `{card.kind}` from its figures or add an experiment with {' or '.join(bases)}")
    return found


def figure_inputs(wildcards):
    files = run_files(_figure_runs(wildcards), *FIGURE_CARDS[wildcards.kind].reads)
    return files + ([PAPER_RESULTS] if FIGURE_CARDS[wildcards.kind].paper else [])


def figure_args(wildcards):
    """The renderer's positional arguments: the runs' directories, or the files it reads."""
    card = FIGURE_CARDS[wildcards.kind]
    runs_ = _figure_runs(wildcards)
    return [r.run_dir for r in runs_] if card.run_dirs else run_files(runs_, *card.reads)


def report_figures(name):
    """The figure kinds of report `name`: its `figures` list, else curves + inner_steps (+ fits with regression runs,
    the sinusoid's)."""
    figures = config["reports"][name].get("figures")
    if figures is None:
        figures = ["curves", "inner_steps"] + (["fits"] if report_runs(name, REGRESSION) else [])
    return figures


def xdomain_evals(wildcards):
    """Report `name`'s cross-domain evaluations (eval_xdomain_<target>.json) and the in-domain eval.json files set
    beside them: the tested runs' own, and those of the report's runs trained on a target."""
    name = wildcards.name
    pairs = [(r, t) for r, t in iter_cross_domain(config, config["reports"][name]["experiments"])
             if r in report_runs(name)]
    targets = {t for _, t in pairs}
    tested = {r for r, _ in pairs} | {r for r in report_runs(name) if r.dataset in targets}
    return [f"{r.run_dir}/eval_xdomain_{t}.json" for r, t in pairs] + run_files(sorted(tested, key=str), "eval.json")


def side_table_inputs(wildcards):
    """What a side table reads, as its card says (`reads`): the report's runs, or their cross-domain evaluations."""
    if SIDE_TABLE_CARDS[wildcards.kind].reads == "cross_domain_evals":
        return xdomain_evals(wildcards)
    return run_files(report_runs(wildcards.name), "eval.json", "config.yaml")


def side_table_args(wildcards):
    """The side table's arguments: the run directories, or the evaluation files themselves (its card's `reads`)."""
    if SIDE_TABLE_CARDS[wildcards.kind].reads == "cross_domain_evals":
        return xdomain_evals(wildcards)
    return [r.run_dir for r in report_runs(wildcards.name)]


def report_outputs(name):
    """What one report produces: its table (md + csv), its complexity and cross-domain tables if asked for, and
    its figures."""
    out = [f"{REPORTS}/tables/{name}.md", f"{REPORTS}/tables/{name}.csv"]
    for kind, card in SIDE_TABLE_CARDS.items():
        if config["reports"][name].get(card.flag):
            out += [f"{REPORTS}/tables/{name}_{kind}.md", f"{REPORTS}/tables/{name}_{kind}.csv"]
    return out + [f"{FIGURES}/{name}_{kind}.png" for kind in report_figures(name)]


def final_outputs():
    """What `snakemake` builds by default: every report's table and figures, the reports index, and every configured
    run's evaluations (its own shots, `test_shots`, cross-domain targets), so that an experiment no report lists is
    still trained and tested instead of silently left out."""
    evals = run_evals(runs()) + [f"{r.run_dir}/eval_xdomain_{t}.json" for r, t in iter_cross_domain(config)]
    reports = [f for name in config["reports"] for f in report_outputs(name)] + [f"{REPORTS}/README.md"]
    listed = set(reports)
    return reports + [f for f in dict.fromkeys(evals) if f not in listed]
