#!/usr/bin/env bash
# Run fst-train on a Cloud TPU VM slice (single host or pod): create or reuse the slice, ship the
# code to every worker, install, start fst-train on all workers, stream logs, stop or delete.
#
# Every worker runs the same command; fst_jax.distributed.maybe_initialize() finds the pod's
# coordinator through the TPU metadata server, so no --coordinator_address is needed here.
#
# Usage (see launch/README.md):
#   launch/tpu_pod.sh --project=my-proj --zone=us-east5-a --accelerator_type=v5p-32 \
#       --name=fst-v5p32 --config=experiments/configs/paper_codeio.py --workdir=gs://my-bucket/fst/run1 \
#       [--action=up] [--runtime_version=v2-alpha-tpuv5] [--spot] [--repo=URL --branch=main] \
#       [--dry_run] [-- extra fst-train flags...]
#
# Actions: up (default: create/reuse + code + install + run + follow logs), create, code, install,
# run, logs, stop (kill fst-train on all workers), delete (delete the slice).
set -euo pipefail

PROG="launch/tpu_pod.sh"
PROJECT=""
ZONE=""
ACCELERATOR_TYPE=""
NAME=""
CONFIG=""
WORKDIR=""
ACTION="up"
RUNTIME_VERSION=""
SPOT=0
REPO=""
BRANCH="main"
REMOTE_DIR="fst_jax"
DRY_RUN=0
EXTRA_ARGS=()

usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
}

die() {
  echo "${PROG}: $*" >&2
  exit 2
}

while (($# > 0)); do
  case "$1" in
    --project=*) PROJECT="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator_type=*) ACCELERATOR_TYPE="${1#*=}" ;;
    --name=*) NAME="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --action=*) ACTION="${1#*=}" ;;
    --runtime_version=*) RUNTIME_VERSION="${1#*=}" ;;
    --repo=*) REPO="${1#*=}" ;;
    --branch=*) BRANCH="${1#*=}" ;;
    --remote_dir=*) REMOTE_DIR="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --dry_run) DRY_RUN=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    --)
      shift
      EXTRA_ARGS=("$@")
      break
      ;;
    *) die "unknown argument '$1' (flags use --name=value; fst-train flags go after '--'). Try --help." ;;
  esac
  shift
done

case "${ACTION}" in
  up | create | code | install | run | logs | stop | delete) ;;
  *) die "--action=${ACTION} is not one of: up create code install run logs stop delete." ;;
esac

# Which flags each action needs.
missing=()
[[ -n "${PROJECT}" ]] || missing+=("--project")
[[ -n "${ZONE}" ]] || missing+=("--zone")
[[ -n "${NAME}" ]] || missing+=("--name")
if [[ "${ACTION}" == "up" || "${ACTION}" == "create" ]]; then
  [[ -n "${ACCELERATOR_TYPE}" ]] || missing+=("--accelerator_type")
fi
if [[ "${ACTION}" == "up" || "${ACTION}" == "run" ]]; then
  [[ -n "${CONFIG}" ]] || missing+=("--config")
  [[ -n "${WORKDIR}" ]] || missing+=("--workdir")
fi
if ((${#missing[@]} > 0)); then
  die "missing required flag(s) for --action=${ACTION}: ${missing[*]}. Example: ${PROG} --project=my-proj --zone=us-east5-a --accelerator_type=v5p-32 --name=fst-v5p32 --config=experiments/configs/paper_codeio.py --workdir=gs://bucket/fst/run1 (add --dry_run to only print the plan)."
fi

# The config file must exist in the code the workers get (this checkout, unless --repo).
if [[ -n "${CONFIG}" && -z "${REPO}" ]] && [[ "${ACTION}" == "up" || "${ACTION}" == "run" ]]; then
  config_file="${CONFIG%%:*}"
  script_dir="${BASH_SOURCE[0]%/*}"
  [[ "${script_dir}" == "${BASH_SOURCE[0]}" ]] && script_dir="."
  if [[ ! -f "${script_dir}/../${config_file}" ]]; then
    die "--config=${CONFIG}: ${config_file} is not a file of this checkout (workers run fst-train from its root). Pick one of experiments/configs/*.py, e.g. --config=experiments/configs/paper_codeio.py."
  fi
fi

if [[ -z "${RUNTIME_VERSION}" ]]; then
  case "${ACCELERATOR_TYPE}" in
    v5p-*) RUNTIME_VERSION="v2-alpha-tpuv5" ;;
    v5litepod-*) RUNTIME_VERSION="v2-alpha-tpuv5-lite" ;;
    v6e-*) RUNTIME_VERSION="v2-alpha-tpuv6e" ;;
    *) RUNTIME_VERSION="tpu-ubuntu2204-base" ;;
  esac
fi

GCLOUD_TPU=(gcloud compute tpus tpu-vm)
WHERE=(--project="${PROJECT}" --zone="${ZONE}")
LOG_FILE="\$HOME/fst_logs/${NAME}.log"
PID_FILE="\$HOME/fst_logs/${NAME}.pid"

# Single-quote an argument for display when it has shell metacharacters (readable plans).
show_arg() {
  local a="$1" sq="'"
  if [[ "${a}" =~ ^[A-Za-z0-9_./:=@%+,-]*$ ]]; then
    printf '%s' "${a}"
  elif [[ "${a}" =~ ^(--[a-z_-]+=)(.*)$ ]]; then
    printf "%s'%s'" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]//${sq}/${sq}\\${sq}${sq}}"
  else
    printf "'%s'" "${a//${sq}/${sq}\\${sq}${sq}}"
  fi
}

# Print a command (copy-pasteable) and run it unless --dry_run.
step() {
  printf '+'
  local a
  for a in "$@"; do
    printf ' '
    show_arg "${a}"
  done
  printf '\n'
  if ((DRY_RUN == 0)); then
    "$@"
  fi
}

# Run a shell snippet on every worker of the slice.
on_all_workers() {
  step "${GCLOUD_TPU[@]}" ssh "${NAME}" "${WHERE[@]}" --worker=all --command="$1"
}

if ((DRY_RUN == 0)) && ! command -v gcloud > /dev/null 2>&1; then
  die "gcloud not found on PATH. Install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) and run 'gcloud auth login', or use --dry_run to print the plan."
fi

do_create() {
  echo "# 1. create the slice ${NAME} (${ACCELERATOR_TYPE}) or reuse it if it already exists"
  if ((DRY_RUN == 0)) && "${GCLOUD_TPU[@]}" describe "${NAME}" "${WHERE[@]}" --format='value(state)' > /dev/null 2>&1; then
    local state
    state="$("${GCLOUD_TPU[@]}" describe "${NAME}" "${WHERE[@]}" --format='value(state)')"
    echo "reusing existing TPU VM ${NAME} (state ${state})"
    if [[ "${state}" == "STOPPED" ]]; then
      step "${GCLOUD_TPU[@]}" start "${NAME}" "${WHERE[@]}"
    fi
    return 0
  fi
  local create=("${GCLOUD_TPU[@]}" create "${NAME}" "${WHERE[@]}"
    --accelerator-type="${ACCELERATOR_TYPE}" --version="${RUNTIME_VERSION}")
  if ((SPOT == 1)); then
    create+=(--spot)
  fi
  step "${create[@]}"
}

do_code() {
  echo "# 2. put the code on every worker at ~/${REMOTE_DIR}"
  if [[ -n "${REPO}" ]]; then
    on_all_workers "set -e; if [ -d ~/${REMOTE_DIR}/.git ]; then git -C ~/${REMOTE_DIR} fetch --quiet origin && git -C ~/${REMOTE_DIR} checkout --quiet ${BRANCH} && git -C ~/${REMOTE_DIR} pull --quiet --ff-only origin ${BRANCH}; else git clone --quiet --branch ${BRANCH} ${REPO} ~/${REMOTE_DIR}; fi"
  else
    local repo_root tarball
    repo_root="$(cd "$(dirname "$0")/.." && pwd)"
    tarball="/tmp/${NAME}-code.tar.gz"
    # The committed tree (HEAD), so every worker runs exactly the same code.
    step git -C "${repo_root}" archive --format=tar.gz --output="${tarball}" HEAD
    step "${GCLOUD_TPU[@]}" scp "${tarball}" "${NAME}:~/fst_code.tar.gz" "${WHERE[@]}" --worker=all
    on_all_workers "set -e; mkdir -p ~/${REMOTE_DIR} && tar -xzf ~/fst_code.tar.gz -C ~/${REMOTE_DIR}"
  fi
}

do_install() {
  echo "# 3. install fst_jax with jax[tpu] into ~/${REMOTE_DIR}/.venv on every worker"
  on_all_workers "set -e; cd ~/${REMOTE_DIR} && python3 -m venv .venv && .venv/bin/pip install --quiet --upgrade pip && .venv/bin/pip install --quiet -e '.[tpu]'"
}

do_run() {
  echo "# 4. start fst-train on every worker (detached; logs in ~/fst_logs/${NAME}.log per worker)"
  local flags
  flags="--config=$(printf '%q' "${CONFIG}") --workdir=$(printf '%q' "${WORKDIR}")"
  if ((${#EXTRA_ARGS[@]} > 0)); then
    flags+="$(printf ' %q' "${EXTRA_ARGS[@]}")"
  fi
  on_all_workers "set -e; mkdir -p ~/fst_logs; cd ~/${REMOTE_DIR}; if [ -f ${PID_FILE} ] && kill -0 \$(cat ${PID_FILE}) 2>/dev/null; then echo \"fst-train already running on \$(hostname) (pid \$(cat ${PID_FILE})); use --action=stop first\" >&2; exit 1; fi; nohup .venv/bin/fst-train ${flags} > ${LOG_FILE} 2>&1 < /dev/null & echo \$! > ${PID_FILE}; echo \"started fst-train on \$(hostname) pid \$(cat ${PID_FILE})\""
}

do_logs() {
  echo "# 5. stream every worker's log (prefixed by host) until fst-train exits there; Ctrl-C detaches, the job keeps running"
  on_all_workers "h=\$(hostname); pid=\$(cat ${PID_FILE} 2>/dev/null || true); tail -n +1 -F \${pid:+--pid=\$pid} ${LOG_FILE} 2>/dev/null | sed -u \"s/^/[\$h] /\"; if [ -f ${LOG_FILE} ]; then echo \"[\$h] fst-train finished (pid \$pid)\"; else echo \"[\$h] no log at ${LOG_FILE}\"; fi"
}

do_stop() {
  echo "# stop fst-train on every worker (by its pid file)"
  on_all_workers "if [ -f ${PID_FILE} ] && kill -0 \$(cat ${PID_FILE}) 2>/dev/null; then kill \$(cat ${PID_FILE}) && echo \"stopped pid \$(cat ${PID_FILE}) on \$(hostname)\"; else echo \"fst-train not running on \$(hostname)\"; fi"
}

do_delete() {
  echo "# delete the slice ${NAME}"
  step "${GCLOUD_TPU[@]}" delete "${NAME}" "${WHERE[@]}" --quiet
}

if ((DRY_RUN == 1)); then
  echo "# plan for --action=${ACTION} (dry run: nothing is executed)"
  echo "# slice=${NAME} accelerator=${ACCELERATOR_TYPE:-n/a} runtime=${RUNTIME_VERSION} project=${PROJECT} zone=${ZONE}"
fi

case "${ACTION}" in
  up)
    do_create
    do_code
    do_install
    do_run
    do_logs
    ;;
  create) do_create ;;
  code) do_code ;;
  install) do_install ;;
  run) do_run ;;
  logs) do_logs ;;
  stop) do_stop ;;
  delete) do_delete ;;
esac
