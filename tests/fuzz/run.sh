#!/usr/bin/env bash
# Runs one libFuzzer target for a short, fixed time on a copy of its seed
# corpus and reports it as one TAP test. usage: run.sh FUZZER CORPUS SECONDS
set -u
fuzzer=$1 corpus=$2 secs=${3:-20}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$corpus"/. "$work"/
name=$(basename "$fuzzer")
echo "1..1"
if "$fuzzer" -max_total_time="$secs" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 "$work" >"$work.log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work.log")
    echo "ok 1 - $name ran ${runs:-?} inputs for ${secs}s without a crash, leak or timeout"
else
    echo "not ok 1 - $name found a problem"
    tail -n 40 "$work.log" | sed 's/^/# /'
    exit 1
fi
