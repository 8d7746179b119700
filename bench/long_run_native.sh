#!/usr/bin/env bash
# Many captions in one process: does the native CLI's memory stay flat? (issue 14's long runs)
#   bench/long_run_native.sh MODEL [N=1000] [IMAGE=tests/images/chelsea.png]
# Captions IMAGE N times in one `gitcap caption --json` process and samples its resident set
# (VmRSS) after every caption; prints the RSS after caption 20 and after the last, and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1
N=${2:-1000}
IMAGE=${3:-tests/images/chelsea.png}
BIN=${GITCAP_BIN:-target/release/gitcap}
[ -x "$BIN" ] || cargo build --release --features native -q
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; model $MODEL; $N captions of $IMAGE"

args=()
for _ in $(seq 1 "$N"); do args+=("$IMAGE"); done
out=$(mktemp)
"$BIN" caption --json --model "$MODEL" "${args[@]}" >"$out" &
pid=$!
declare -A rss
done_count=0
started=$SECONDS
while kill -0 "$pid" 2>/dev/null; do
    n=$(wc -l <"$out")
    if [ "$n" -gt "$done_count" ]; then
        done_count=$n
        rss[$n]=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    fi
    sleep 0.05
done
wait "$pid"
total=$(wc -l <"$out")
distinct=$(sort -u "$out" | wc -l)
rm -f "$out"
first=20
last=$done_count
# the nearest sampled counts at or after 20 and at the end
for ((i = first; i <= last; i++)); do [ -n "${rss[$i]:-}" ] && { first=$i; break; }; done
for ((i = last; i >= first; i--)); do [ -n "${rss[$i]:-}" ] && { last=$i; break; }; done
echo "captions: $total in $((SECONDS - started)) s; distinct outputs: $distinct (1 expected); RSS sampled up to caption $done_count"
echo "VmRSS after caption $first: ${rss[$first]} kB; after caption $last: ${rss[$last]} kB"
awk -v a="${rss[$first]}" -v b="${rss[$last]}" 'BEGIN { printf "ratio: %.3f\n", b / a }'
