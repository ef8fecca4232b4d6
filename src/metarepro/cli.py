"""`python -m metarepro {download,prepare,pretrain,metatrain,evaluate,report}`: the one entry point every rule calls.

Each subcommand validates its inputs before doing any work, so a bad value fails fast with a message
naming it; outputs are written atomically.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from .numerics import apply_strict
from .utils import MetareproError


def _json_arg(text: str, what: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetareproError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise MetareproError(f"{what} must be a JSON object")
    return value


def _run_config(args: argparse.Namespace):
    from .config import RunConfig, load_config, resolve_run

    if args.run:
        return RunConfig.from_dict(_json_arg(args.run, "--run"))
    missing = [f"--{k}" for k in ("experiment", "method", "shots") if getattr(args, k) is None]
    if missing:
        raise MetareproError(f"give either --run JSON or --config with {', '.join(missing)}")
    cfg = load_config(*args.config)
    return resolve_run(cfg, args.experiment, args.method, args.shots, args.seed)


def cmd_download(args: argparse.Namespace) -> int:
    from . import data
    from .data.download import fetch, resolve_mirror

    spec = data.get(args.dataset)
    if spec.generated:
        raise MetareproError(f"dataset {args.dataset!r} is generated on the fly; nothing to download")
    fetch(args.dataset, Path(args.out), resolve_mirror(None if args.mirror in ("none", "") else args.mirror))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from . import data

    spec = data.get(args.dataset)
    if spec.generated:
        raise MetareproError(f"dataset {args.dataset!r} is generated on the fly; nothing to prepare")
    options = _json_arg(args.options, "--options")
    spec.prepare()(Path(args.raw), Path(args.out), options)
    return 0


def _pretrain_config(args: argparse.Namespace):
    from .config import PretrainConfig, load_config, resolve_pretrain

    if args.run:
        return PretrainConfig.from_dict(_json_arg(args.run, "--run"))
    missing = [f"--{k}" for k in ("dataset", "backbone") if getattr(args, k) is None]
    if missing:
        raise MetareproError(f"give either --run JSON or --config with {', '.join(missing)}")
    return resolve_pretrain(load_config(*args.config), args.dataset, args.backbone, args.seed)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .pretrain import pretrain

    pretrain(_pretrain_config(args), threads=args.threads, progress=not args.no_progress, device=_device(args))
    return 0


def cmd_metatrain(args: argparse.Namespace) -> int:
    from .train import metatrain

    run = _run_config(args)
    metatrain(run, threads=args.threads, progress=not args.no_progress, device=_device(args))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    options = _json_arg(args.target_options, "--target-options") if args.target_options else None
    if args.target is None and (args.target_data or options):
        raise MetareproError("--target-data and --target-options belong to a cross-domain evaluation: give --target")
    evaluate(args.run_dir, threads=args.threads, progress=not args.no_progress, device=_device(args), shots=args.shots,
             target=args.target, target_dir=args.target_data, target_options=options,
             drop_overlap=args.drop_overlap)
    return 0


GPUS_HELP = ("GPUs the scheduler gave this job (what the Snakemake rules pass): > 0 requires CUDA (the job fails at "
             "start without it), 0 runs on the CPU; overrides --device")


def _device(args: argparse.Namespace) -> str:
    if args.gpus is None:
        return args.device
    if args.gpus < 0:
        raise MetareproError(f"--gpus must be >= 0, got {args.gpus}")
    return "cuda" if args.gpus > 0 else "cpu"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m metarepro", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("download", help="fetch raw archives (official URLs or a mirror), checksum-verified")
    d.add_argument("--dataset", required=True)
    d.add_argument("--mirror", default=os.environ.get("METAREPRO_MIRROR", "none"),
                   help="mirror directory (env METAREPRO_MIRROR overrides); 'none' = official URLs")
    d.add_argument("--out", required=True, help="raw directory, e.g. resources/raw/omniglot")
    d.set_defaults(func=cmd_download)

    pr = sub.add_parser("prepare", help="convert raw archives into data/<dataset>/ (compact npz format)")
    pr.add_argument("--dataset", required=True)
    pr.add_argument("--options", default="{}", help="JSON of the dataset's config block")
    pr.add_argument("--raw", required=True)
    pr.add_argument("--out", required=True)
    pr.set_defaults(func=cmd_prepare)

    t = sub.add_parser("pretrain", help="train a classifier on all meta-train classes -> backbone.pt (resumes)")
    t.add_argument("--run", help="resolved pretrain config as JSON (what Snakemake passes)")
    t.add_argument("--config", nargs="+", default=["config/config.yaml"], help="config file(s), for by-hand use")
    t.add_argument("--dataset")
    t.add_argument("--backbone", help="backbone label of the output path, e.g. conv4-64")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--device", default="auto", help="auto (cuda if visible), cpu or cuda")
    t.add_argument("--gpus", type=int, default=None, help=GPUS_HELP)
    t.set_defaults(func=cmd_pretrain)

    for name, fn, helptext in (("metatrain", cmd_metatrain, "meta-train one run (resumes from its checkpoint)"),):
        m = sub.add_parser(name, help=helptext)
        m.add_argument("--run", help="resolved run config as JSON (what Snakemake passes)")
        m.add_argument("--config", nargs="+", default=["config/config.yaml"], help="config file(s), for by-hand use")
        m.add_argument("--experiment")
        m.add_argument("--method")
        m.add_argument("--shots", type=int)
        m.add_argument("--seed", type=int, default=0)
        m.add_argument("--threads", type=int, default=1)
        m.add_argument("--no-progress", action="store_true")
        m.add_argument("--device", default="auto", help="auto (cuda if visible), cpu or cuda")
        m.add_argument("--gpus", type=int, default=None, help=GPUS_HELP)
        m.set_defaults(func=fn)

    e = sub.add_parser("evaluate", help="evaluate a trained run on the fixed test episodes -> eval.json")
    e.add_argument("--run-dir", required=True)
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--device", default="auto", help="auto (cuda if visible), cpu or cuda")
    e.add_argument("--gpus", type=int, default=None, help=GPUS_HELP)
    e.add_argument("--shots", type=int, default=None,
                   help="test on the fixed SHOTS-shot episodes instead of the training shots -> eval_{SHOTS}shot.json")
    e.add_argument("--target", default=None,
                   help="cross-domain: test on this dataset's test classes instead -> eval_xdomain_{TARGET}.json")
    e.add_argument("--target-data", default=None, help="the target's prepared data folder, e.g. data/cifarfs")
    e.add_argument("--target-options", default=None, help="JSON of the target dataset's config block")
    e.add_argument("--drop-overlap", action="store_true",
                   help="cross-domain: also score episodes without the target test classes the source trained on")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("report", help="render tables / figures / the reports index (see `report -h`)",
                       add_help=False)
    r.add_argument("rest", nargs=argparse.REMAINDER)
    r.set_defaults(func=None)
    return p


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")


def stop_on_signals() -> None:
    """Stop on SIGINT and SIGTERM even when started with them ignored: a non-interactive shell starts background
    jobs with SIGINT ignored, and Python keeps an inherited "ignore" (it installs its KeyboardInterrupt handler only
    over the default), as do nohup and some batch systems. Both now raise KeyboardInterrupt, which unwinds the job
    without writing its outputs (every write is atomic) and leaves the last resume checkpoint in place."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    stop_on_signals()
    apply_strict()     # before torch runs anything: pins the CPU code paths when strict numerics are asked for
    if argv[:1] == ["report"]:
        from .report.cli import main as report_main
        try:
            return report_main(argv[1:])
        except MetareproError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc or 'SIGINT'}): nothing was written; a training job keeps its last checkpoint "
              "and resumes from it when rerun", file=sys.stderr)
        return 130
    except (MetareproError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
