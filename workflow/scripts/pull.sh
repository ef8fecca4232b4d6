#!/usr/bin/env bash
# Fetch the published data and results from the DVC remote, so that Snakemake re-runs nothing:
#   workflow/scripts/pull.sh [EXTRA_CONFIG.yaml ...]
# after `git clone` (with the remote of .dvc/config reachable). Afterwards `snakemake -n` schedules
# no prepare, training or evaluation job for what was published.
#
# Why more than `dvc pull`: Snakemake re-runs a job whose input is newer than its output, and DVC
# writes the files in no set order with fresh modification times (and a fresh clone has no
# .snakemake/ records). So for config/config.yaml, config/paper.yaml and any EXTRA_CONFIG whose
# results_dir exists, `snakemake --touch --forceall` then walks the jobs in dependency order: it runs
# nothing, touches each existing output after its inputs, and records every job's params, so that
# editing a method's hyperparameters afterwards re-runs that method's jobs, as it would have where the
# results were made. Before that, each run's saved config.yaml is compared with the run config that
# the config file asks for now. Runs that differ (a config change committed without re-running and
# re-publishing, which Snakemake cannot see here) are listed with the command that re-runs them, and
# pull.sh exits with status 3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

pointers=()
for f in data.dvc reports/results.dvc; do
    if grep -qE '^ +md5:' "$f"; then pointers+=("$f"); fi  # a pointer never published has no hash
done
if [ ${#pointers[@]} -eq 0 ]; then
    echo "pull.sh: nothing has been published yet (data.dvc and reports/results.dvc have no hash)"
    exit 0
fi
dvc pull "${pointers[@]}"

configs=(config/config.yaml)
[ -f config/paper.yaml ] && configs+=(config/paper.yaml)
configs+=("$@")
status=0
for cfg in "${configs[@]}"; do
    # torch-free; prints "published" if cfg's results_dir exists and "stale" if some run is stale
    found=$(PYTHONPATH=src python - "$cfg" <<'PY'
import sys
from pathlib import Path

import yaml
from metarepro.config import iter_runs, load_config, resolve_run

cfg_file = sys.argv[1]
cfg = load_config(*dict.fromkeys(["config/config.yaml", cfg_file]))
if Path(cfg["results_dir"]).is_dir():
    print("published")
    stale = []
    for run in iter_runs(cfg):
        saved = Path(run.run_dir, "config.yaml")
        if saved.exists():
            was = yaml.safe_load(saved.read_text()) or {}
            was.pop("provenance", None)
            if was != resolve_run(cfg, run.experiment, run.method, run.shots, run.seed).to_dict():
                stale.append(f"{run.run_dir}/model.pt")
    if stale:
        print("stale")
        opt = "" if cfg_file == "config/config.yaml" else f" --configfile {cfg_file}"
        print(f"pull.sh: {len(stale)} published run(s) were made with other settings than {cfg_file} asks "
              f"for now; re-run them with:\n  snakemake{opt} --forcerun {' '.join(stale)}", file=sys.stderr)
PY
)
    if [[ $found == *published* ]]; then
        opt=()
        [ "$cfg" != config/config.yaml ] && opt=(--configfile "$cfg")
        snakemake "${opt[@]}" --touch --forceall --cores 1 --quiet
        echo "pull.sh: $cfg: published outputs marked up to date"
    fi
    [[ $found == *stale* ]] && status=3
done
exit $status
