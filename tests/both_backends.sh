#!/usr/bin/env bash
# `make test`: the whole suite on the first backend and, side by side, the backend-dependent
# tests (marker `backends`) on the second.
#
#   tests/both_backends.sh PYTHON FIRST_BACKEND SECOND_BACKEND WORKERS
#
# The two passes share nothing, so they run at once: the first with WORKERS processes (its
# progress shows), the second in one process beside it (its report follows the first's).
# Run one after the other, each pass ended on one busy core while the other idled; side by
# side they keep both cores of the CI machine busy (measured in tests/README.md).
# Exit status: non-zero when either pass fails.
set -u
python=$1 first=$2 second=$3 workers=$4

log=$(mktemp "${TMPDIR:-/tmp}/keras-bidir-$second-pass.XXXXXX")
KERAS_BACKEND=$second "$python" -m pytest -m "backends and not slow" -q >"$log" 2>&1 &
second_pid=$!
trap 'kill "$second_pid" 2>/dev/null; rm -f "$log"' EXIT
trap 'exit 130' INT TERM

echo "== 1/2: the whole suite on $first; beside it (2/2, report below) the backend-dependent tests on $second =="
KERAS_BACKEND=$first "$python" -m pytest -m "not slow" -n "$workers" --dist worksteal
first_status=$?

echo "== 2/2: the backend-dependent tests (-m backends) on $second =="
tail -n +1 -f --pid="$second_pid" "$log"
wait "$second_pid"
second_status=$?
[ "$first_status" -eq 0 ] && [ "$second_status" -eq 0 ]
