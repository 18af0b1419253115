#!/usr/bin/env bash
# Run one stage from cron: in the project folder, with the project's virtual environment, under a per-stage
# flock (a run still going when the next one is due makes the next one skip, logged), appending to logs/etl.log.
# Usage: cron/run_stage.sh SCRIPT.py [ARGS...]     PYTHON overrides the interpreter (default .venv/bin/python),
# LOG_DIR the folder of etl.log and the lock files (default logs/).
set -uo pipefail
umask 077  # logs/etl.log and the lock files may name clients: readable by their owner only
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root" || exit 1
logs="${LOG_DIR:-$root/logs}"
mkdir -p "$logs"
script="${1:?usage: cron/run_stage.sh SCRIPT.py [ARGS...]}"
shift
python="${PYTHON:-$root/.venv/bin/python}"
log="$logs/etl.log"
stamp() { date '+%Y-%m-%d %H:%M:%S'; }

exec 9>"$logs/${script%.py}.lock"
if ! flock -n 9; then
  echo "$(stamp) $script: the previous run still holds the lock; skipped" >> "$log"
  exit 0
fi
echo "$(stamp) $script: start" >> "$log"
# The lock stays with this shell, which waits for the stage: the stage itself gets no fd 9 (9>&-). Otherwise the
# stage, and any worker it forks, would hold the lock too, and a worker outliving a killed stage would make
# every later run skip.
"$python" "$script" --quiet "$@" >> "$log" 2>&1 9>&-
status=$?
echo "$(stamp) $script: exit $status" >> "$log"
exit "$status"
