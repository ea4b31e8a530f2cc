#!/usr/bin/env bash
# One sitting: today's code with a cold, then a warm, compile cache and the old code (58c3b67),
# one after the other, on the old default's work. Run under the machine's heavy-job lock:
#   flock /tmp/fst_heavy.lock nice -n 0 bash experiments/results/main_job_vs_old/sitting.sh \
#       <old checkout> <new checkout> <out dir> [deadline as 'HH:MM' UTC]
# Each run is skipped if it could not finish before the deadline (estimates below). The new
# checkout may be a `git archive` copy (its commit then in a file COMMIT at its root).
set -uo pipefail
OLD=$(cd "$1" && pwd)
NEW=$(cd "$2" && pwd)
OUT=$(mkdir -p "$3" && cd "$3" && pwd)
DEADLINE=${4:-}
HERE=$NEW/experiments/results/main_job_vs_old
CACHE=/tmp/main_job_cmp_xla_cache
export JAX_PLATFORMS=cpu
unset JAX_COMPILATION_CACHE_DIR
lscpu | grep 'Model name' >"$OUT/cpu.txt"
echo "old $(git -C "$OLD" rev-parse HEAD)" \
    "new $(git -C "$NEW" rev-parse HEAD 2>/dev/null || cat "$NEW/COMMIT")" >"$OUT/commits.txt"

fits() {  # fits <seconds>: the run would end before the deadline
    [ -z "$DEADLINE" ] && return 0
    local end
    end=$(date -u -d "today $DEADLINE" +%s)
    [ $(($(date -u +%s) + $1)) -le "$end" ]
}

one() {  # one <name> <est seconds> <checkout> <flags...>
    local name=$1 est=$2 repo=$3
    shift 3
    if ! fits "$est"; then
        echo "$(date -u +%T) skip $name (deadline $DEADLINE)" | tee -a "$OUT/log.txt"
        return
    fi
    rm -rf "/tmp/main_job_cmp_$name"
    echo "$(date -u +%T) start $name" | tee -a "$OUT/log.txt"
    (cd "$repo" && COMPILE_PROBE_OUT="$OUT/${name}_compile.json" PYTHONPATH=$repo \
        /usr/bin/time -v -o "$OUT/${name}_time.txt" python "$HERE/compile_probe.py" \
        --workdir="/tmp/main_job_cmp_$name" "$@" --config.progress=False \
        >"$OUT/${name}_log.txt" 2>&1)
    echo "$(date -u +%T) end $name rc=$?" | tee -a "$OUT/log.txt"
    cp "/tmp/main_job_cmp_$name/metrics.jsonl" "$OUT/${name}_metrics.jsonl" 2>/dev/null
}

# Today's cold then warm cache first (the new comparison), then the old code, then extras; each
# run only if it fits before the deadline (estimates from the last sitting's 262-280 s).
rm -rf "$CACHE"
one new_cold 290 "$NEW" --config="$HERE/old_default_work.py" --config.compile_cache_dir=$CACHE
du -sb "$CACHE" >"$OUT/cache_size.txt"
one new_warm 240 "$NEW" --config="$HERE/old_default_work.py" --config.compile_cache_dir=$CACHE
one old 300 "$OLD" --config=experiments/configs/default.py
one new_warm2 240 "$NEW" --config="$HERE/old_default_work.py" --config.compile_cache_dir=$CACHE
one new_nocache 290 "$NEW" --config="$HERE/old_default_work.py" --config.compile_cache_dir=
