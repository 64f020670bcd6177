#!/usr/bin/env bash
# Records-service benchmark: 10,000 images + 10,000 public keys, `ims serve` (release build, SQLite)
# on 127.0.0.1, loaded by wrk from a second process. Prints medians of REPEAT runs per scenario and the
# server's peak RSS. Usage: bench/run.sh [REPEAT]   (installs wrk and python3 if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
REPEAT=${1:-5}
DURATION=${DURATION:-10s}
command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; }
cargo build --release -q -p ims
BIN=${CARGO_TARGET_DIR:-target}/release/ims
work=$(mktemp -d /tmp/ims-bench.XXXXXX)
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
IMAGE_ID=$(python3 bench/seed.py "$work/seed" 10000)
"$BIN" migrate import "$work/seed" --data-dir "$work/data" >/dev/null
PORT=${PORT:-19123}
"$BIN" serve --listen 127.0.0.1:$PORT --s3-listen 127.0.0.1:0 --data-dir "$work/data" 2>"$work/serve.log" &
pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/healthz/live" >/dev/null && break; sleep 0.1; done
URL=http://127.0.0.1:$PORT

# wrk latency like "1.23ms" / "850.00us" / "1.02s" -> ms
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v} else {sub(/s$/,"",v); print v*1000}}'; }

scenario() { # name, wrk args...
  local name=$1; shift
  local rps=() p99=()
  for _ in $(seq "$REPEAT"); do
    out=$(wrk --latency -d "$DURATION" "$@")
    rps+=("$(echo "$out" | awk '/Requests\/sec/ {print $2}')")
    p99+=("$(echo "$out" | awk '$1=="99%" {print $2}' | to_ms)")
    errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}')
    [ -z "$errs" ] || echo "  ($name: $errs)" >&2
  done
  printf '%-44s %10s req/s   p99 %7s ms\n' "$name" \
    "$(printf '%s\n' "${rps[@]}" | median)" "$(printf '%s\n' "${p99[@]}" | median)"
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "ims: $("$BIN" --version); records: 10000 images + 10000 public keys (SQLite, WAL, synchronous=FULL)"
scenario "GET /v3/images/{id} keep-alive (16 conn)" -t 2 -c 16 "$URL/v3/images/$IMAGE_ID"
scenario "GET /v3/images/{id} Connection: close (16)" -t 2 -c 16 -H "Connection: close" "$URL/v3/images/$IMAGE_ID"
scenario "GET /v3/images (10,000 records, 1 conn)" -t 1 -c 1 "$URL/v3/images"
scenario "POST /v3/public-keys durable (16 conn)" -t 2 -c 16 -s bench/post_key.lua "$URL/v3/public-keys"
scenario "POST /v3/public-keys durable (1 conn)" -t 1 -c 1 -s bench/post_key.lua "$URL/v3/public-keys"
# One GET of all images, timed by curl (server-side latency for a single client).
t=()
for _ in $(seq 21); do t+=("$(curl -s -o /dev/null -w '%{time_total}' "$URL/v3/images" | awk '{print $1*1000}')"); done
printf '%-44s %10s ms (median of 21, curl)\n' "GET /v3/images single request" "$(printf '%s\n' "${t[@]}" | median)"
# The same right after a write to the table (the embedded store's cached array is invalidated, so
# this is the database read): PATCH one image's metadata, then GET the collection.
t=()
for i in $(seq 21); do
  curl -s -o /dev/null -X PATCH -H 'Content-Type: application/json' \
    -d "{\"metadata\": {\"operation\": \"set\", \"key\": \"n\", \"value\": \"$i\"}}" "$URL/v3/images/$IMAGE_ID"
  t+=("$(curl -s -o /dev/null -w '%{time_total}' "$URL/v3/images" | awk '{print $1*1000}')")
done
printf '%-44s %10s ms (median of 21, curl)\n' "GET /v3/images right after a write" "$(printf '%s\n' "${t[@]}" | median)"
echo "server peak RSS: $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' /proc/$pid/status); now $(awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' /proc/$pid/status)"
