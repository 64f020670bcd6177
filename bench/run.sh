#!/usr/bin/env bash
# Records-service benchmark: RECORDS images + RECORDS public keys (default 10,000; `100000` for the
# scale run), `ims serve` (release build, SQLite) on 127.0.0.1, loaded by wrk from a second process.
# Prints medians of REPEAT runs per scenario, the server's CPU time per request (from
# /proc/PID/stat, utime+stime over the scenario's runs divided by the requests wrk counted), the
# server's peak RSS, and the import's time and peak RSS.
# Usage: bench/run.sh [REPEAT] [RECORDS]   (installs wrk and python3 if missing)
#   IMS_BIN=path/to/ims  benchmarks that binary instead of building the release one.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
REPEAT=${1:-5}
RECORDS=${2:-10000}
DURATION=${DURATION:-10s}
command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; }
if [ -n "${IMS_BIN:-}" ]; then
  BIN=$IMS_BIN
else
  cargo build --release -q -p ims
  BIN=${CARGO_TARGET_DIR:-target}/release/ims
fi
work=$(mktemp -d "${WORK_PARENT:-/tmp}/ims-bench.XXXXXX")
pid=
trap '[ -z "$pid" ] || { kill $pid 2>/dev/null; wait $pid 2>/dev/null; }; rm -rf "$work"' EXIT
IMAGE_ID=$(python3 bench/seed.py "$work/seed" "$RECORDS")
t0=$(date +%s.%N)
/usr/bin/time -f '%M' -o "$work/import.rss" "$BIN" migrate import "$work/seed" --data-dir "$work/data" >/dev/null
t1=$(date +%s.%N)
PORT=${PORT:-19123}
"$BIN" serve --listen 127.0.0.1:$PORT --s3-listen 127.0.0.1:0 --data-dir "$work/data" 2>"$work/serve.log" &
pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/healthz/live" >/dev/null && break; sleep 0.1; done
URL=http://127.0.0.1:$PORT

# wrk latency like "1.23ms" / "850.00us" / "1.02s" -> ms
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v} else {sub(/s$/,"",v); print v*1000}}'; }
# The server's CPU time so far (ticks of user + system time).
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }

scenario() { # name, wrk args...
  local name=$1; shift
  local rps=() p99=() c0 c1 reqs=0 out errs
  c0=$(cpu)
  for _ in $(seq "$REPEAT"); do
    out=$(wrk --latency -d "$DURATION" "$@")
    rps+=("$(echo "$out" | awk '/Requests\/sec/ {print $2}')")
    p99+=("$(echo "$out" | awk '$1=="99%" {print $2}' | to_ms)")
    reqs=$((reqs + $(echo "$out" | awk '/requests in/ {print $1}')))
    errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}')
    [ -z "$errs" ] || echo "  ($name: $errs)" >&2
  done
  c1=$(cpu)
  printf '%-46s %10s req/s   p99 %8s ms   server CPU %7s ms/req\n' "$name" \
    "$(printf '%s\n' "${rps[@]}" | median)" "$(printf '%s\n' "${p99[@]}" | median)" \
    "$(awk -v t=$((c1 - c0)) -v n="$reqs" -v hz="$hz" 'BEGIN {printf "%.4f", t * 1000 / hz / n}')"
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "ims: $("$BIN" --version); records: $RECORDS images + $RECORDS public keys (SQLite, WAL, synchronous=FULL)"
printf '%-46s %10s s, peak RSS %s MiB\n' "ims migrate import" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')" "$(mib < "$work/import.rss")"
# One GET of all images, timed by curl (server-side latency for a single client); the first loads the table.
curl -s -o /dev/null "$URL/v3/images"
t=()
for _ in $(seq 21); do t+=("$(curl -s -o /dev/null -w '%{time_total}' "$URL/v3/images" | awk '{print $1*1000}')"); done
printf '%-46s %10s ms (median of 21, curl)\n' "GET /v3/images single request" "$(printf '%s\n' "${t[@]}" | median)"
scenario "GET /v3/images/{id} keep-alive (16 conn)" -t 2 -c 16 "$URL/v3/images/$IMAGE_ID"
scenario "GET /v3/images/{id} Connection: close (16)" -t 2 -c 16 -H "Connection: close" "$URL/v3/images/$IMAGE_ID"
scenario "GET /v3/images ($RECORDS records, 1 conn)" -t 1 -c 1 "$URL/v3/images"
scenario "GET /v3/images ($RECORDS records, 16 conn)" -t 2 -c 16 "$URL/v3/images"
# GET one while 8 connections list the collection: single reads must not wait behind lists.
wrk -d "$((REPEAT * ${DURATION%s}))s" -t 1 -c 8 "$URL/v3/images" >/dev/null &
lister=$!
scenario "GET /v3/images/{id} (8 conn) during 8 lists" -t 1 -c 8 "$URL/v3/images/$IMAGE_ID"
wait $lister
scenario "POST /v3/public-keys durable (16 conn)" -t 2 -c 16 -s bench/post_key.lua "$URL/v3/public-keys"
scenario "POST /v3/public-keys durable (1 conn)" -t 1 -c 1 -s bench/post_key.lua "$URL/v3/public-keys"
# The list right after a write to the table (the cached array is rendered again): PATCH one image's
# metadata, then GET the collection.
t=()
for i in $(seq 21); do
  curl -s -o /dev/null -X PATCH -H 'Content-Type: application/json' \
    -d "{\"metadata\": {\"operation\": \"set\", \"key\": \"n\", \"value\": \"$i\"}}" "$URL/v3/images/$IMAGE_ID"
  t+=("$(curl -s -o /dev/null -w '%{time_total}' "$URL/v3/images" | awk '{print $1*1000}')")
done
printf '%-46s %10s ms (median of 21, curl)\n' "GET /v3/images right after a write" "$(printf '%s\n' "${t[@]}" | median)"
echo "server peak RSS: $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' /proc/$pid/status); now $(awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' /proc/$pid/status); load after: $(cut -d' ' -f1-3 /proc/loadavg)"
