#!/usr/bin/env bash
# Publish the prepared data and every run's results to the DVC remote (.dvc/config), in one command:
#   workflow/scripts/publish.sh && git commit -m "Publish results" && git push
# 1. records the current data/ and results/ in their pointers, data.dvc and reports/results.dvc
#    (`dvc commit`: hashes the files into the local DVC cache; checkpoints/ and results/test/ are
#    left out by .dvcignore),
# 2. uploads what the remote lacks (`dvc push`),
# 3. stages the pointers and the reports built from these results for the git commit, so that one
#    commit pins config, code, reports and the exact data and results behind them.
# Run it after `snakemake` has finished; fetch everything elsewhere with workflow/scripts/pull.sh.
#
# The remote is `storage` in .dvc/config: by default the folder ../metarepro-dvc-storage beside the
# checkout. To publish elsewhere, once, then commit .dvc/config:
#   dvc remote add -d -f storage s3://my-bucket/metarepro        (pip install 'dvc[s3]')
#   dvc remote add -d -f storage ssh://user@host/srv/metarepro   (pip install 'dvc[ssh]')
#   dvc remote add -d -f storage gdrive://<folder-id>            (pip install 'dvc[gdrive]')
# with credentials kept out of git: dvc remote modify --local storage <key> <value>.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

pointers=()
[ -d data ] && pointers+=(data.dvc)
[ -d results ] && pointers+=(reports/results.dvc)
if [ ${#pointers[@]} -eq 0 ]; then
    echo "publish.sh: nothing to publish: no data/ or results/ yet (run snakemake first)" >&2
    exit 1
fi
dvc commit --force "${pointers[@]}"
dvc push "${pointers[@]}"
git add data.dvc reports
echo "publish.sh: pushed ${pointers[*]}; staged them and reports/ -- now git commit and git push"
