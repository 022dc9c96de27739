#!/usr/bin/env bash
# How long a new user waits: a fresh clone, the README's install, the quickstart run.
#
#   bash bench/quickstart_time.sh [REV] [DEST]     # REV defaults to HEAD, DEST to a temp folder
#   BUSY=1 bash bench/quickstart_time.sh           # the same with one other CPU-bound process
#
# Prints the install and pipeline times and the machine's load while it ran (1-minute load
# average, sampled every 5 s: near 0 is a quiet machine, near the core count a busy one), and
# keeps the logs in DEST (install.log, run.log, load.log). The README's figures come from here.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
rev=${1:-HEAD}
dest=${2:-$(mktemp -d /tmp/llmpipe-quickstart-XXXXXX)}
rm -rf "$dest" && git clone -q "$repo" "$dest" && git -C "$dest" checkout -q "$rev" || exit 1
cd "$dest" || exit 1
export PREFECT_HOME="$dest/.prefect"     # a new user's Prefect home: empty
export PIP_NO_CACHE_DIR=1                # and an empty pip cache

(while true; do cut -d' ' -f1 /proc/loadavg; sleep 5; done) >load.log &
sampler=$!
busy=
if [ "${BUSY:-0}" = 1 ]; then
  python3 -c 'while True: pass' &        # one other busy process, on one core
  busy=$!
fi
start=$(date +%s.%N)
python3 -m venv --upgrade-deps .venv && .venv/bin/pip install -e ".[dev]" >install.log 2>&1
installed=$(date +%s.%N)
.venv/bin/llmpipe run configs/quickstart.yaml >run.log 2>&1
status=$?
done_at=$(date +%s.%N)
kill "$sampler" ${busy:+"$busy"} 2>/dev/null
load=$(sort -n load.log | awk '{a[NR]=$1} END {printf "min %s, median %s, max %s", a[1], a[int((NR+1)/2)], a[NR]}')
printf 'quickstart %s (exit %s): install %.0f s, pipeline %.0f s, total %.0f s; load average %s%s\n' \
  "$(git rev-parse --short HEAD)" "$status" \
  "$(echo "$installed - $start" | bc)" "$(echo "$done_at - $installed" | bc)" \
  "$(echo "$done_at - $start" | bc)" "$load" "${busy:+ (with one busy process)}"
grep -E "Pipeline finished|val_bpb" run.log | tail -3
echo "logs: $dest/{install,run,load}.log"
