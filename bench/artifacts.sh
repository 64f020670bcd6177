#!/usr/bin/env bash
# Upload/download of a large artifact through the built-in S3 endpoint: `ims artifacts create/get`
# versus the AWS CLI (`aws s3 cp`) with the same STS credentials, REPEAT runs each, medians; peak RSS
# of `ims serve` and of the CLI. Usage: bench/artifacts.sh [SIZE_MIB] [REPEAT]
# Needs the test venv (scripts/test.sh creates it) for the AWS CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-1024}
REPEAT=${2:-3}
AWS=${IMS_TEST_AWS:-/var/tmp/ims-test-venv/bin/aws}
PY=${IMS_TEST_PYTHON:-/var/tmp/ims-test-venv/bin/python}
cargo build --release -q -p ims
BIN=${CARGO_TARGET_DIR:-target}/release/ims
work=$(mktemp -d /var/tmp/ims-bench-art.XXXXXX)
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
head -c $((SIZE * 1024 * 1024)) /dev/urandom > "$work/blob"
PORT=${PORT:-19321}; S3PORT=$((PORT + 1))
"$BIN" serve --listen 127.0.0.1:$PORT --s3-listen 127.0.0.1:$S3PORT --data-dir "$work/data" 2>"$work/serve.log" &
pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/healthz/live" >/dev/null && break; sleep 0.1; done
export IMS_URL=http://127.0.0.1:$PORT
creds=$(curl -s -X PUT "$IMS_URL/apis/sts/token")
export AWS_ACCESS_KEY_ID=$(echo "$creds" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["Credentials"]["AccessKeyId"])')
export AWS_SECRET_ACCESS_KEY=$(echo "$creds" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["Credentials"]["SecretAccessKey"])')
export AWS_SESSION_TOKEN=$(echo "$creds" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["Credentials"]["SessionToken"])')
export AWS_DEFAULT_REGION=us-east-1
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
declare -a up_ims up_aws down_ims down_aws rss_cli
for i in $(seq "$REPEAT"); do
  up_ims+=("$(t /usr/bin/time -f '%M' -o "$work/rss.$i" "$BIN" artifacts create boot-images "b/ims$i" "$work/blob")")
  rss_cli+=("$(cat "$work/rss.$i")")
  up_aws+=("$(t "$AWS" --endpoint-url "http://127.0.0.1:$S3PORT" s3 cp "$work/blob" "s3://boot-images/b/aws$i")")
  down_ims+=("$(t "$BIN" artifacts get boot-images "b/ims$i" "$work/down")")
  cmp "$work/blob" "$work/down"
  down_aws+=("$(t "$AWS" --endpoint-url "http://127.0.0.1:$S3PORT" s3 cp "s3://boot-images/b/aws$i" "$work/down")")
  rm -f "$work/down"
done
echo "machine: $(nproc) cores, $(uname -sr); object: $SIZE MiB random; medians of $REPEAT"
printf 'upload   ims artifacts create  %6.2f s    aws s3 cp  %6.2f s\n' "$(printf '%s\n' "${up_ims[@]}" | median)" "$(printf '%s\n' "${up_aws[@]}" | median)"
printf 'download ims artifacts get     %6.2f s    aws s3 cp  %6.2f s\n' "$(printf '%s\n' "${down_ims[@]}" | median)" "$(printf '%s\n' "${down_aws[@]}" | median)"
echo "peak RSS: ims serve $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' /proc/$pid/status); ims artifacts create $(printf '%s\n' "${rss_cli[@]}" | sort -g | tail -1 | awk '{printf "%.1f MiB", $1/1024}')"
