#!/usr/bin/env bash
# Create jobs building the Debian example recipe (recipes/debian-12-compute) from the host's Debian
# mirror (`ims serve`, local executor, release build), REPEAT jobs one after the other, medians:
#
# * total: from `POST /v3/jobs` until the job is `success` (polled every 0.5 s);
# * kiwi: kiwi-ng's own run (the agent's "kiwi-ng finished in X s" line: bootstrap, packages,
#   config.sh, kiwi's clean-up);
# * IMS overhead: total − kiwi — everything IMS does: starting the agent, fetching and unpacking
#   the recipe, templates, the repository wait, removing kiwi's leftovers, the CA, packaging
#   (mksquashfs, kernel/initrd, upload with md5/sha256, manifest, registration), status updates;
#   and its parts from the agent's log (squash, upload+registration).
#
# The first job fills kiwi's shared package cache (<data>/kiwi-cache) and is reported on its own
# ("cold"); the medians are over the REPEAT jobs after it ("warm", the steady state of a build host).
#
# Usage: bench/create.sh [REPEAT]      (default 3)
# Environment: MIRROR, SECURITY_MIRROR (default: the host's apt sources, else deb.debian.org),
# IMS_JOB_COMPRESSION_LEVEL (and any other IMS_JOB_* setting) passed to the server,
# PORT (default 19351, S3 on PORT+1), IMS_BENCH_BIN (an `ims` binary to use instead of building one),
# WORK_PARENT (default /var/tmp: must not be tmpfs), IDLE_WAIT.
# Needs root (kiwi-ng, mounts), kiwi, rsync, debootstrap, mksquashfs, python3, curl.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
. bench/lib.sh
REPEAT=${1:-3}
if [ -n "${IMS_BENCH_BIN:-}" ]; then BIN=$(realpath "$IMS_BENCH_BIN"); else
  cargo build --release -q -p ims
  BIN=$(realpath "${CARGO_TARGET_DIR:-target}/release/ims")
fi
work=$(mktemp -d "${WORK_PARENT:-/var/tmp}/ims-bench-create.XXXXXX")
pid=
cleanup() {
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
not_tmpfs "$work"
# Room: per job the build root (~0.7 GiB), its squashfs and its upload, kiwi's cache.
need_room "$work" $((2048 * (REPEAT + 1) + 1024))

# The host's Debian mirrors (deb822 sources first, then sources.list).
host_mirror() {
  local suite=$1
  awk -v s="$suite" 'BEGIN {RS=""} /Suites:/ {
      u=""; ok=0
      n=split($0, l, "\n")
      for (i = 1; i <= n; i++) {
        if (l[i] ~ /^URIs:/) { split(l[i], w, " "); u=w[2] }
        if (l[i] ~ /^Suites:/) { m=split(l[i], w, " "); for (k = 2; k <= m; k++) if (w[k] == s) ok=1 }
      }
      if (ok && u != "") { print u; exit }
    }' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1
}
MIRROR=${MIRROR:-$(host_mirror bookworm)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-$(host_mirror bookworm-security)}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}

PORT=${PORT:-19351}
mkdir -p "$work/data"
IMS_JOB_EXECUTOR=local start_server "$work/data"
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
api() { curl -sf -H 'Content-Type: application/json' "$@"; }

recipe=$("$BIN" recipes import debian-12-compute recipes/debian-12-compute --linux-distribution debian12 \
  --arch x86_64 --template-dictionary-key debian_mirror,debian_security_mirror \
  --template-dictionary-value "${MIRROR%/},${SECURITY_MIRROR%/}" --format json 2>/dev/null | json 'd["id"]')
ssh-keygen -q -t ed25519 -N '' -f "$work/key"
key=$(api -X POST "$IMS_URL/v3/public-keys" \
  -d "{\"name\": \"bench\", \"public_key\": \"$(cat "$work/key.pub")\"}" | json 'd["id"]')

# Seconds in a log line like "… in 3.41 s" after PATTERN.
log_secs() { grep -m1 "$2" <<<"$1" | sed -n "s/.*$2[^0-9]*\([0-9.]*\) s.*/\1/p"; }

# One job: prints "total kiwi overhead squash upload_register".
job_run() {
  local n=$1 s e id j log
  s=$EPOCHREALTIME
  id=$(api -X POST "$IMS_URL/v3/jobs" -d "{\"job_type\": \"create\", \"image_root_archive_name\": \"bench-$n\",
        \"artifact_id\": \"$recipe\", \"public_key_id\": \"$key\"}" | json 'd["id"]')
  while :; do
    j=$(curl -sf "$IMS_URL/v3/jobs/$id" || true)
    [[ $j =~ \"status\":\ *\"success\" ]] && break
    if [[ $j =~ \"status\":\ *\"error\" ]]; then
      echo "job $id failed:" >&2; curl -s "$IMS_URL/v3/jobs/$id/log" | tail -60 >&2; exit 1
    fi
    sleep 0.5
  done
  e=$EPOCHREALTIME
  log=$(curl -sf "$IMS_URL/v3/jobs/$id/log")
  local total kiwi sq up
  total=$(echo "$e - $s" | bc)
  kiwi=$(log_secs "$log" "kiwi-ng finished in")
  sq=$(log_secs "$log" "squashed in")
  up=$(log_secs "$log" "upload, hashing and registration")
  echo "$total $kiwi $(echo "$total - $kiwi" | bc) $sq $up"
  # The image is not needed; its room is.
  local img; img=$(curl -sf "$IMS_URL/v3/jobs/$id" | json 'd["resultant_image_id"]')
  curl -sf -X DELETE "$IMS_URL/v2/images/$img?cascade=true" >/dev/null || true
}

col() { local c=$1; shift; printf '%s\n' "$@" | awk -v c="$c" '{print $c}'; }
runs() { local c=$1; shift; printf ' %s' $(col "$c" "$@"); }
line() {
  local what=$1; shift
  local t k o
  t=$(col 1 "$@" | median); k=$(col 2 "$@" | median); o=$(col 3 "$@" | median)
  printf '%s: total %.1f s, kiwi-ng %.1f s, IMS overhead %.1f s = %.1f %% (squash %.1f s, upload+register %.1f s)\n' \
    "$what" "$t" "$k" "$o" "$(echo "100 * $o / $t" | bc -l)" "$(col 4 "$@" | median)" "$(col 5 "$@" | median)"
  echo "  runs (total kiwi overhead squash upload):"
  printf '    %s\n' "$@"
}

wait_idle
echo "cold job (fills kiwi's package cache) ..." >&2
cold=$(job_run 0)
warm=()
for n in $(seq "$REPEAT"); do
  wait_idle
  echo "warm job $n of $REPEAT ..." >&2
  warm+=("$(job_run "$n")")
done
machine
echo "recipe: recipes/debian-12-compute from $MIRROR and $SECURITY_MIRROR; job images ${IMS_JOB_COMPRESSION:-zstd} level ${IMS_JOB_COMPRESSION_LEVEL:-6 (default)}"
line "cold (1 job)" "$cold"
line "warm (median of $REPEAT)" "${warm[@]}"
