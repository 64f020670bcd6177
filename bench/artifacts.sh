#!/usr/bin/env bash
# Upload/download of a large artifact through the built-in S3 endpoint: `ims artifacts create/get`
# versus the AWS CLI (`aws s3 cp`) with the same STS credentials, REPEAT runs each, medians (every
# run printed too); peak RSS of the client (/usr/bin/time) and of `ims serve` (VmHWM, reset before
# every command, so each figure belongs to one command and one direction). Page cache warm. Each
# timed command first waits for the machine to be idle (IDLE_WAIT, default 1800 s) and is measured
# again when other processes took more than 3 % of the CPU time meanwhile (shared machine).
#
# Usage: bench/artifacts.sh [SIZE_MIB] [REPEAT]          (defaults 1024 3)
# Environment: AWS_COMPARE=0 leaves the AWS CLI out (the memory run: `AWS_COMPARE=0
# bench/artifacts.sh 4096 3`); PORT (default 19321, S3 on PORT+1); WORK_PARENT (default /var/tmp:
# the server's data and the downloads); BLOB_DIR (default: the work directory) for the file to
# upload, e.g. /dev/shm when the disk is short. Needs the test venv (scripts/test.sh creates it)
# for the AWS CLI. Disk: 2 × SIZE_MIB in WORK_PARENT (a completing multipart upload holds its parts
# and the assembled object; later the object and the download) plus the file; objects are deleted
# after every run.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
. bench/lib.sh
SIZE=${1:-1024}
REPEAT=${2:-3}
COMPARE=${AWS_COMPARE:-1}
AWS=${IMS_TEST_AWS:-/var/tmp/ims-test-venv/bin/aws}
PY=${IMS_TEST_PYTHON:-/var/tmp/ims-test-venv/bin/python}
[ "$COMPARE" = 0 ] || [ -x "$AWS" ] || { echo "artifacts.sh: $AWS missing (run scripts/test.sh, or AWS_COMPARE=0)" >&2; exit 1; }
cargo build --release -q -p ims
BIN=${CARGO_TARGET_DIR:-target}/release/ims
work=$(mktemp -d "${WORK_PARENT:-/var/tmp}/ims-bench-art.XXXXXX")
blobdir=$(mktemp -d "${BLOB_DIR:-$work}/ims-bench-blob.XXXXXX")
blob=$blobdir/blob
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work" "$blobdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Room: the file; while a multipart upload completes, its parts and the assembled object (the
# built-in endpoint concatenates the parts into a new file); then the object and the download.
same=$([ "$(stat -c %d "$work")" = "$(stat -c %d "$blobdir")" ] && echo 1 || echo 0)
need=$(( (2 + same) * SIZE + 512 ))
need_room "$work" "$need" "BLOB_DIR=/dev/shm saves $SIZE MiB"
head -c $((SIZE * 1024 * 1024)) /dev/urandom > "$blob"
PORT=${PORT:-19321}
mkdir -p "$work/data"
start_server "$work/data"
if [ "$COMPARE" != 0 ]; then
  creds=$(curl -s -X PUT "$IMS_URL/apis/sts/token")
  export AWS_ACCESS_KEY_ID=$(echo "$creds" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["Credentials"]["AccessKeyId"])')
  export AWS_SECRET_ACCESS_KEY=$(echo "$creds" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["Credentials"]["SecretAccessKey"])')
  export AWS_SESSION_TOKEN=$(echo "$creds" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["Credentials"]["SessionToken"])')
  export AWS_DEFAULT_REGION=us-east-1
fi
srv_cpu() { local f; read -r -a f < "/proc/$pid/stat"; echo "$((f[13] + f[14]))"; }
# Times one command: prints "seconds cli_peak_rss_kib server_peak_rss_kib others_cpu_s". The
# server's VmHWM is reset first, so its figure belongs to this command. "others" is the CPU time
# other processes used meanwhile (the machine's busy time less the command's and the server's);
# a run where it exceeds 3 % of the machine's CPU time (and 0.2 s) is measured again (at most 3 times), after
# the command $1 (which removes what the run left).
t() {
  local undo=$1; shift
  local s e b0 b1 c0 c1 x wall rss us sy other n=0
  while :; do
    sync; wait_idle
    echo 5 > "/proc/$pid/clear_refs"
    read -r b0 x < <(ticks); c0=$(srv_cpu)
    s=$EPOCHREALTIME
    /usr/bin/time -f '%M %U %S' -o "$work/rss" "$@" >/dev/null || { echo "failed: $*" >&2; return 1; }
    e=$EPOCHREALTIME
    read -r b1 x < <(ticks); c1=$(srv_cpu)
    read -r rss us sy < "$work/rss"
    wall=$(echo "$e - $s" | bc)
    other=$(echo "scale=2; ($b1 - $b0 - $c1 + $c0) / $hz - $us - $sy" | bc)
    n=$((n + 1))
    if [ "$(echo "$other > 0.2 && $other > 0.03 * $(nproc) * $wall" | bc)" = 0 ] || [ "$n" -ge 3 ]; then break; fi
    echo "  disturbed ($other CPU-s by others in $wall s): measured again: $*" >&2
    $undo
  done
  echo "$wall $rss $(awk '/VmHWM/ {print $2}' "/proc/$pid/status") $other"
}
S3=("$AWS" --endpoint-url "http://127.0.0.1:$((PORT + 1))" s3)
rm_ims() { "$BIN" artifacts delete boot-images "b/ims$1" >/dev/null; }
rm_aws() { "${S3[@]}" rm "s3://boot-images/b/aws$1" >/dev/null; }
rm_down() { rm -f "$work/down"; }
col() { local k=$1; shift; printf '%s\n' "$@" | awk -v k="$k" '{print $k}'; }
runs() { local x; for x in $(col 1 "$@"); do printf ' %.2f' "$x"; done; }
declare -a up_ims up_aws down_ims down_aws
for i in $(seq "$REPEAT"); do
  up_ims+=("$(t "rm_ims $i" "$BIN" artifacts create boot-images "b/ims$i" "$blob")")
  down_ims+=("$(t rm_down "$BIN" artifacts get boot-images "b/ims$i" "$work/down")")
  cmp "$blob" "$work/down"
  rm -f "$work/down"
  rm_ims "$i"
  line="run $i: ims create$(runs "${up_ims[-1]}") s, get$(runs "${down_ims[-1]}") s"
  if [ "$COMPARE" != 0 ]; then
    up_aws+=("$(t "rm_aws $i" "${S3[@]}" cp "$blob" "s3://boot-images/b/aws$i")")
    down_aws+=("$(t rm_down "${S3[@]}" cp "s3://boot-images/b/aws$i" "$work/down")")
    cmp "$blob" "$work/down"
    rm -f "$work/down"
    rm_aws "$i"
    line+="; aws s3 cp up$(runs "${up_aws[-1]}") s, down$(runs "${down_aws[-1]}") s"
  fi
  echo "$line; CPU-s used by others: $(col 4 "${up_ims[-1]}" "${down_ims[-1]}" ${up_aws[@]+"${up_aws[-1]}"} ${down_aws[@]+"${down_aws[-1]}"} | tr '\n' ' ')"
done
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); object: $SIZE MiB random; page cache warm; medians of $REPEAT"
printf 'upload   ims artifacts create  %6.2f s (runs:%s)' "$(col 1 "${up_ims[@]}" | median)" "$(runs "${up_ims[@]}")"
[ "$COMPARE" = 0 ] || printf '    aws s3 cp  %6.2f s (runs:%s)' "$(col 1 "${up_aws[@]}" | median)" "$(runs "${up_aws[@]}")"
echo
printf 'download ims artifacts get     %6.2f s (runs:%s)' "$(col 1 "${down_ims[@]}" | median)" "$(runs "${down_ims[@]}")"
[ "$COMPARE" = 0 ] || printf '    aws s3 cp  %6.2f s (runs:%s)' "$(col 1 "${down_aws[@]}" | median)" "$(runs "${down_aws[@]}")"
echo
echo "peak RSS (max of $REPEAT): ims artifacts create $(col 2 "${up_ims[@]}" | maxof | mib) MiB, ims serve meanwhile $(col 3 "${up_ims[@]}" | maxof | mib) MiB; ims artifacts get $(col 2 "${down_ims[@]}" | maxof | mib) MiB, ims serve meanwhile $(col 3 "${down_ims[@]}" | maxof | mib) MiB"
[ "$COMPARE" = 0 ] || echo "peak RSS (max of $REPEAT): aws s3 cp upload $(col 2 "${up_aws[@]}" | maxof | mib) MiB, ims serve meanwhile $(col 3 "${up_aws[@]}" | maxof | mib) MiB; download $(col 2 "${down_aws[@]}" | maxof | mib) MiB, ims serve meanwhile $(col 3 "${down_aws[@]}" | maxof | mib) MiB"
