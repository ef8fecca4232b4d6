"""`python -m metarepro report {table,<side table>,figure,index}`: the report stage's command line (torch-free).

The side-table subcommands (complexity, xdomain) and the figure kinds come from the report cards
(metarepro.report_cards); the index's figure captions from the figure cards."""
from __future__ import annotations

import argparse
import csv
import importlib
import io
import logging
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from ..report_cards import FIGURE_CARDS, SIDE_TABLE_CARDS, SIDE_TABLE_INPUTS
from ..report_cards import RENDERERS as FIGURE_KINDS  # the renderers, one per figure card
from ..utils import MetareproError, write_text_atomic

# the index's caption of a figure whose file name ends in its card's kind or renderer (e.g. maml_omniglot_curves)
FIGURE_CAPTIONS = {name: c.index for c in FIGURE_CARDS.values() if c.index for name in (c.kind, c.renderer)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metarepro report", description="Render report tables, figures and the index.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("table", help="ours-vs-paper table: writes NAME.md and NAME.csv")
    t.add_argument("--name", required=True, help="table name (the output's file stem)")
    t.add_argument("--title", help="heading of the Markdown table (default: NAME)")
    t.add_argument("--paper", default="config/paper_results.csv",
                   help="published numbers CSV (default: %(default)s); 'none' for no paper columns")
    t.add_argument("--out", help="output .md (default: reports/tables/NAME.md); the .csv goes beside it")
    t.add_argument("--wall-time", action="store_true", help="a column of each row's training + test wall time")
    t.add_argument("evals", nargs="+", metavar="EVAL_JSON")

    # one subcommand per side-table card (report_cards.SIDE_TABLE_CARDS): it reads what its card's `reads` says
    # and writes NAME_<kind>.md/.csv, so its rule reruns on its own
    for kind, card in SIDE_TABLE_CARDS.items():
        metavar, what = SIDE_TABLE_INPUTS[card.reads]
        x = sub.add_parser(kind, help=f"{card.title}: writes NAME_{kind}.md/.csv")
        x.add_argument("--name", required=True, help=f"report name; the output's file stem is NAME_{kind}")
        x.add_argument("--title", help=f"heading of the Markdown table (default: NAME: {card.title})")
        x.add_argument("--out", help=f"output .md (default: reports/tables/NAME_{kind}.md); the .csv goes beside it")
        x.add_argument("inputs", nargs="+", metavar=metavar, help=what)

    f = sub.add_parser("figure", help="a PNG figure")
    f.add_argument("--kind", required=True, choices=FIGURE_KINDS)
    f.add_argument("--out", required=True, help="output .png")
    f.add_argument("--paper", help="curves: config/paper_results.csv, to draw each run's published number")
    f.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="run directories (curves, loss_variance and the CML analyses) or eval.json files "
                        "(inner_steps, sinusoid_fits, gates)")

    i = sub.add_parser("index", help="reports/README.md listing tables and figures")
    i.add_argument("--out", required=True, help="output README.md")
    i.add_argument("--profiles", nargs="*", default=[], metavar="CONFIG",
                   help="the config files of the other profiles (config/*.yaml): their report folders and the "
                        "tables and figures in them are listed too, as they are on disk")
    i.add_argument("files", nargs="+", metavar="FILE", help="table .md/.csv and figure .png files")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:   # tolerate being handed the subcommand name too
        argv = argv[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:    # --help or a usage error (argparse has printed it)
        return int(exc.code or 0)
    # the job's log (stderr) gets the notes figures make, e.g. which runs a figure skipped
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.command == "table":
            out = Path(args.out or f"reports/tables/{args.name}.md")
            if out.stem != args.name:
                raise MetareproError(f"--out {out} does not match --name {args.name} (expected .../{args.name}.md)")
            from .tables import make_table

            paper = None if str(args.paper).lower() == "none" else args.paper
            md, csv_path = make_table(args.evals, out, args.title or args.name, paper, args.wall_time)
            print(f"wrote {md} and {csv_path}")
        elif args.command in SIDE_TABLE_CARDS:
            card, kind = SIDE_TABLE_CARDS[args.command], args.command
            out = Path(args.out or f"reports/tables/{args.name}_{kind}.md")
            if out.stem != f"{args.name}_{kind}":
                raise MetareproError(f"--out {out} does not match --name {args.name} "
                                     f"(expected .../{args.name}_{kind}.md)")
            module, function = card.renderer.split(":")
            render = getattr(importlib.import_module(f"{__package__}.{module}"), function)
            md, csv_path = render(args.inputs, out, args.title or f"{args.name}: {card.title}")
            print(f"wrote {md} and {csv_path}")
        elif args.command == "figure":
            from .analysis import ANALYSIS_FIGURES
            from .figures import FIGURES

            extra = {"paper": args.paper} if args.kind == "curves" and args.paper else {}
            render = {**FIGURES, **ANALYSIS_FIGURES}[args.kind]
            print(f"wrote {render(args.inputs, args.out, **extra)}")
        else:
            print(f"wrote {write_index(args.files, args.out, args.profiles)}")
    except MetareproError as exc:
        print(f"metarepro report {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- index

def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def _md_title(md: Path) -> str:
    for line in md.read_text().splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return md.stem


def _table_profile(md: Path) -> str:
    """Profile(s) from the sibling CSV's `profile` column, else from the Notes' "profile(s) **X**"."""
    csv_path = md.with_suffix(".csv")
    if csv_path.exists():
        rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
        vals = [v.strip() for r in rows for v in (r.get("profile") or "").split(",") if v.strip()]
        if vals:
            return ", ".join(dict.fromkeys(vals))
    if md.suffix == ".md":
        m = re.search(r"profile\(s\) \*\*([^*]+)\*\*", md.read_text())
        if m:
            return m.group(1)
    return "unknown"


def figure_caption(stem: str) -> str:
    """`maml_omniglot_inner_steps` -> "maml omniglot: test score ... vs number of inner gradient steps"."""
    for kind, text in sorted(FIGURE_CAPTIONS.items(), key=lambda kv: -len(kv[0])):   # the longest name first
        if stem == kind or stem.endswith("_" + kind) or stem.endswith("-" + kind):
            prefix = _humanize(stem[: -len(kind)].strip("_-"))
            return f"{prefix}: {text}" if prefix else text[0].upper() + text[1:]
    return _humanize(stem)


def _humanize(stem: str) -> str:
    """`maml_omniglot` -> "MAML Omniglot" (method and dataset names get their paper spelling)."""
    from .tables import DATASET_LABELS, method_label

    words = [w for w in re.split(r"[_\-\s]+", stem) if w]
    return " ".join(DATASET_LABELS.get(w, method_label(w)) for w in words)


def _profile_dirs(config: Path) -> tuple[str, Path, Path]:
    """(profile, reports folder, figures folder) of a config file; unset keys as config/config.yaml's defaults."""
    from .. import yaml_io

    cfg = yaml_io.safe_load(config.read_text()) or {}
    reports = Path(cfg.get("reports_dir") or "reports")
    return str(cfg.get("profile") or config.stem), reports, Path(cfg.get("figures_dir") or reports / "figures")


def _other_profiles(configs: Sequence[str | os.PathLike], base: Path) -> list[str]:
    """Markdown listing, per profile, its report folder and the tables, figures and notes in it on disk (sorted)."""
    lines: list[str] = []
    for config in sorted(map(Path, configs)):
        profile, reports, figs = _profile_dirs(config)
        if reports.resolve() == base.resolve():
            continue                                  # this index's own profile: listed above
        tables = sorted(reports.glob("tables/*.md"))
        pngs = sorted(figs.glob("*.png"))
        notes = sorted(p for p in reports.glob("*.md"))
        if not (tables or pngs or notes):             # no link: the folder is not there
            lines += [f"### {profile} (`{config.as_posix()}`): `{reports.as_posix()}/`", "",
                      f"Not rendered here: `snakemake --cores N --configfile {config.as_posix()}` writes it.", ""]
            continue
        lines += [f"### {profile} (`{config.as_posix()}`): [{reports.as_posix()}/]({_rel(reports, base)}/)", ""]
        lines += [f"- [{p.name}]({_rel(p, base)})" for p in notes]
        for md in tables:
            csv_path = md.with_suffix(".csv")
            extra = f" ([csv]({_rel(csv_path, base)}))" if csv_path.is_file() else ""
            lines.append(f"- table [{_md_title(md)}]({_rel(md, base)}){extra}")
        lines += [f"- figure [{p.stem}]({_rel(p, base)})" for p in pngs]
        lines.append("")
    return lines


def write_index(files: Sequence[str | os.PathLike], out: str | os.PathLike,
                profiles: Sequence[str | os.PathLike] = ()) -> Path:
    """The index of this profile's report files, then (from `profiles`, the other config files) every other
    profile's report folder with what it holds on disk."""
    from .figures import read_png_profile

    out = Path(out)
    base = out.parent if str(out.parent) else Path(".")
    tables: dict[Path, dict] = {}     # keyed by the .md path, so NAME.md and NAME.csv share one line
    figures, others = [], []
    by_profile: dict[str, list[str]] = {}
    for f in map(Path, files):
        if not f.is_file():
            raise MetareproError(f"report index: {f} does not exist or is not a file")
        ext = f.suffix.lower()
        if ext in (".md", ".csv"):
            entry = tables.setdefault(f.with_suffix(".md"), {"md": None, "csv": None})
            entry["md" if ext == ".md" else "csv"] = f
        elif ext == ".png":
            figures.append(f)
        else:
            others.append(f)

    lines = ["# Reports", "",
             "Generated by `python -m metarepro report index`; every table sets our numbers beside the "
             "published ones (see each table's Notes for protocol, budget and sources).", ""]
    if tables:
        lines += ["## Tables", "", "| Table | Profile | Files |", "|---|---|---|"]
        for key, e in tables.items():
            md, csv_path = e["md"], e["csv"]
            main_file = md or csv_path
            title = _md_title(md) if md else main_file.stem
            profile = _table_profile(md or csv_path)
            links = [f"[{p.suffix[1:]}]({_rel(p, base)})" for p in (md, csv_path) if p]
            lines.append(f"| [{title}]({_rel(main_file, base)}) | {profile} | {', '.join(links)} |")
            for prof in profile.split(", "):
                by_profile.setdefault(prof, []).append(f"table `{main_file.stem}`")
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        for f in figures:
            profile = read_png_profile(f) or "unknown"
            caption = figure_caption(f.stem)
            lines += [f"### {f.stem}", "", f"![{caption}]({_rel(f, base)})", "",
                      f"*{caption[0].upper() + caption[1:]}.* Config profile: {profile}.", ""]
            for prof in profile.split(", "):
                by_profile.setdefault(prof, []).append(f"figure `{f.stem}`")
    if others:
        lines += ["## Other files", ""] + [f"- [{f.name}]({_rel(f, base)})" for f in others] + [""]
    others_lines = _other_profiles(profiles, base)
    if others_lines:
        lines += ["## Other profiles", "",
                  "Each profile's reports, as they are in this checkout (a profile's own index, where it has one, "
                  "describes them):", ""] + others_lines
    lines += ["## Which config profile produced what", ""]
    if by_profile:
        lines += [f"- **{prof}**: {', '.join(items)}" for prof, items in by_profile.items()]
    else:
        lines.append("- (nothing indexed)")
    lines += ["", "Profiles: `default` = config/config.yaml (the quick laptop-CPU reproduction); other "
              "profiles are named by the config file's `profile` key (e.g. config/paper.yaml for the "
              "published protocols).", ""]
    write_text_atomic(out, "\n".join(lines))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
