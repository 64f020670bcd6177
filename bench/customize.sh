#!/usr/bin/env bash
# Customize jobs on an image of SIZE_MIB MiB already in the store (`ims serve`, local executor,
# release build), REPEAT jobs, medians:
#
# * login: from `POST /v3/jobs` until the first `ssh root@HOST -p PORT` into the job succeeds (the
#   script polls the job every 50 ms and tries SSH once the job is `waiting_on_user`), and the part
#   of it that was the rootfs download (the agent's "downloaded … in X s" line);
# * packaging: the agent's `packaging_artifacts` phase (its "packaged in X s" line: mksquashfs of
#   the image root, kernel/initrd lookup, upload with md5/sha256, manifest, registration), against
#   `mksquashfs` alone with the same compression and options, run (a) on a loop mount of the
#   same squashfs image read-only — the job's image root is an overlay over exactly that — and
#   (b) on the directory the image was imported from.
#
# Runs alternate (odd attempts: the job first) and each waits for the machine to be idle; a run
# during which other processes used more than 3 % of the CPU time is printed, not counted, and
# measured again (at most 3 × REPEAT attempts). Page cache warm.
#
# Usage: bench/customize.sh [SIZE_MIB] [REPEAT]      (defaults 1024 3)
# Environment: COMPRESSION (default zstd; the jobs' IMS_JOB_COMPRESSION and the baselines'), LEVEL
# (default none: mksquashfs's, as customize jobs; IMS_JOB_COMPRESSION_LEVEL and the baselines'),
# SESSION_SECS (default 30: how long the "user" works between login and `touch /tmp/complete`; the
# agent pre-reads the image meanwhile, at idle priority),
# PORT (default 19341, S3 on PORT+1), IMS_BENCH_BIN (an `ims` binary to use instead of
# building one), WORK_PARENT (default /var/tmp: must not be tmpfs), IDLE_WAIT.
# Needs root (jobs mount), ssh, mksquashfs, python3, curl.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
. bench/lib.sh
SIZE=${1:-1024}
REPEAT=${2:-3}
COMP=${COMPRESSION:-zstd}
LEVEL=${LEVEL:-}
level_args=()
[ -z "$LEVEL" ] || level_args=(-Xcompression-level "$LEVEL")
SESSION=${SESSION_SECS:-30}
if [ -n "${IMS_BENCH_BIN:-}" ]; then BIN=$(realpath "$IMS_BENCH_BIN"); else
  cargo build --release -q -p ims
  BIN=$(realpath "${CARGO_TARGET_DIR:-target}/release/ims")
fi
work=$(mktemp -d "${WORK_PARENT:-/var/tmp}/ims-bench-cust.XXXXXX")
pid=
mnt=$work/mnt
cleanup() {
  mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
not_tmpfs "$work"
# Room: the image root, its import, per job the download and the new squashfs and its upload
# (parts and the assembled object), the baseline's output.
need=$((6 * SIZE + 1024))
need_room "$work" "$need"

root=$work/root
make_root "$root" "$SIZE"
PORT=${PORT:-19341}
mkdir -p "$work/data" "$work/tmp" "$mnt"
[ -z "$LEVEL" ] || export IMS_JOB_COMPRESSION_LEVEL=$LEVEL
IMS_JOB_EXECUTOR=local IMS_JOB_SSH_HOST=127.0.0.1 IMS_JOB_COMPRESSION=$COMP start_server "$work/data"

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
api() { curl -sf -H 'Content-Type: application/json' "$@"; }

echo "importing the ${SIZE} MiB image root ..." >&2
img=$("$BIN" images import bench "$root" --compression "$COMP" --work-dir "$work/tmp" --format json 2>/dev/null | json 'd["id"]')
sqsh=$work/source.sqsh
"$BIN" artifacts get boot-images "$img/rootfs" "$sqsh" 2>/dev/null
mount -o loop,ro -t squashfs "$sqsh" "$mnt"
ssh-keygen -q -t ed25519 -N '' -f "$work/key"
key=$(api -X POST "$IMS_URL/v3/public-keys" \
  -d "{\"name\": \"bench\", \"public_key\": \"$(cat "$work/key.pub")\"}" | json 'd["id"]')
SSH=(ssh -i "$work/key" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
     -o LogLevel=ERROR -o ConnectTimeout=5)

# Waits until the job's status is $2, polling every $3 s with one curl and bash's own matching (no
# other processes: polling competes with the agent for the two cores; the packaging phase is timed
# by the agent itself, so it is polled once a second). Only the job's own status can be
# `waiting_on_user`, `success` or `error` (its SSH containers' are pending/establishing/running/
# stopped), so any "status" key will do.
wait_for() {
  local id=$1 want=$2 every=$3 j
  while :; do
    j=$(curl -sf "$IMS_URL/v3/jobs/$id" || true)
    [[ $j =~ \"status\":\ *\"$want\" ]] && return 0
    if [[ $j =~ \"status\":\ *\"(error|success)\" ]]; then
      echo "job $id ended, expected $want:" >&2; curl -s "$IMS_URL/v3/jobs/$id/log" >&2; exit 1
    fi
    sleep "$every"
  done
}
# Seconds in a log line like "… in 3.41 s" after PATTERN.
log_secs() { grep -m1 "$2" <<<"$1" | sed -n "s/.*$2[^0-9]*\([0-9.]*\) s.*/\1/p"; }

# One job: appends "login download packaging squash upload_register outside" to $work/job.runs.
job_run() {
  local n=$1 s e id host port log
  s=$EPOCHREALTIME
  id=$(api -X POST "$IMS_URL/v3/jobs" -d "{\"job_type\": \"customize\", \"image_root_archive_name\": \"bench-$n\",
        \"artifact_id\": \"$img\", \"public_key_id\": \"$key\", \"ssh_containers\": [{\"name\": \"bench\", \"jail\": true}]}" \
     | json 'd["id"]')
  wait_for "$id" waiting_on_user 0.05
  read -r host port < <(curl -sf "$IMS_URL/v3/jobs/$id" | json 'd["ssh_containers"][0]["connection_info"]["customer_access"]["host"] + " " + str(d["ssh_containers"][0]["connection_info"]["customer_access"]["port"])')
  "${SSH[@]}" -p "$port" "root@$host" true
  e=$EPOCHREALTIME
  local login; login=$(echo "$e - $s" | bc)
  # The session: change a file, work for SESSION_SECS, finish.
  "${SSH[@]}" -p "$port" "root@$host" "echo bench-$n > /etc/bench-marker"
  sleep "$SESSION"
  "${SSH[@]}" -p "$port" "root@$host" "touch /tmp/complete"
  local ps pe
  ps=$EPOCHREALTIME
  wait_for "$id" success 1
  pe=$EPOCHREALTIME
  log=$(curl -sf "$IMS_URL/v3/jobs/$id/log")
  local dl pk sq up new
  grep -m1 "pre-read\|after pre-reading" <<<"$log" | sed 's/^[^ ]* /  agent: /' >&2 || true
  dl=$(log_secs "$log" "downloaded [0-9]* bytes in")
  pk=$(log_secs "$log" "packaged in")
  sq=$(log_secs "$log" "squashed in")
  up=$(log_secs "$log" "upload, hashing and registration")
  new=$(curl -sf "$IMS_URL/v3/jobs/$id" | json 'd["resultant_image_id"]')
  echo "$login $dl $pk $sq $up $(echo "$pe - $ps" | bc)" >> "$work/job.runs"
  "$BIN" artifacts get boot-images "$new/rootfs" "$work/tmp/new.sqsh" 2>/dev/null
  unsquashfs -cat "$work/tmp/new.sqsh" etc/bench-marker | grep -qx "bench-$n" || { echo "the change is not in the new image" >&2; exit 1; }
  rm -f "$work/tmp/new.sqsh"
  local k
  for k in rootfs kernel initrd manifest.json; do "$BIN" artifacts delete boot-images "$new/$k" >/dev/null 2>&1 || true; done
  api -X DELETE "$IMS_URL/v3/jobs/$id" >/dev/null || true
}
# mksquashfs alone: appends "seconds others_cpu" to $work/$1.runs.
mk_run() {
  local name=$1 src=$2 s e b0 b1 _x us sy
  read -r b0 _x < <(ticks); s=$EPOCHREALTIME
  /usr/bin/time -f '%U %S' -o "$work/mkcpu" mksquashfs "$src" "$work/tmp/out.sqsh" -noappend -xattrs -quiet -no-progress -comp "$COMP" "${level_args[@]}"
  e=$EPOCHREALTIME; read -r b1 _x < <(ticks)
  read -r us sy < "$work/mkcpu"
  echo "$(echo "$e - $s" | bc) $(echo "scale=1; ($b1 - $b0) / $hz - $us - $sy" | bc)" >> "$work/$name.runs"
  rm -f "$work/tmp/out.sqsh"
}
settle() { sync; wait_idle; }
disturbed() { echo "$1 > 0.03 * $(nproc) * $2" | bc; }

# Warm: the baselines read a warm page cache, as the job does after its session. (Through a
# pipe: GNU tar does not read file contents when it writes to /dev/null.)
tar cf - -C "$mnt" . | cat > /dev/null
tar cf - -C "$root" . | cat > /dev/null
declare -a login dl pk sq up ext mka mkb
i=0; attempt=0
while [ "$i" -lt "$REPEAT" ] && [ "$attempt" -lt $((3 * REPEAT)) ]; do
  attempt=$((attempt + 1))
  if [ $((attempt % 2)) = 1 ]; then settle; job_run "$attempt"; fi
  settle; mk_run mount "$mnt"
  settle; mk_run dir "$root"
  if [ $((attempt % 2)) = 0 ]; then settle; job_run "$attempt"; fi
  read -r l d p q u x < <(tail -1 "$work/job.runs")
  read -r ma mao < <(tail -1 "$work/mount.runs")
  read -r mb mbo < <(tail -1 "$work/dir.runs")
  note=
  if [ "$(disturbed "$mao" "$ma")" = 1 ] || [ "$(disturbed "$mbo" "$mb")" = 1 ]; then
    note=' — disturbed, not counted'
  else
    i=$((i + 1))
    login+=("$l"); dl+=("$d"); pk+=("$p"); sq+=("$q"); up+=("$u"); ext+=("$x"); mka+=("$ma"); mkb+=("$mb")
  fi
  printf 'attempt %d: login %.2f s (download %.2f s); packaging %.2f s (mksquashfs %.2f s, upload+register %.2f s; seen from outside %.2f s); mksquashfs alone: mounted image %.2f s (others %.1f s), directory %.2f s (others %.1f s)%s\n' \
    "$attempt" "$l" "$d" "$p" "$q" "$u" "$x" "$ma" "$mao" "$mb" "$mbo" "$note"
done
[ "$i" -gt 0 ] || { echo "customize.sh: every run was disturbed by other processes" >&2; exit 1; }
REPEAT=$i
med() { printf '%s\n' "$@" | median; }
machine
echo "image: $(( $(stat -c %s "$sqsh") / 1048576 )) MiB squashfs ($COMP) of a $((SIZE)) MiB image root, $(find "$root" -xdev | wc -l) entries; page cache warm; medians of $REPEAT"
m_login=$(med "${login[@]}"); m_dl=$(med "${dl[@]}")
printf 'POST /v3/jobs → SSH login   %7.2f s   (runs: %s)\n' "$m_login" "${login[*]}"
printf '  rootfs download           %7.2f s   (runs: %s)\n' "$m_dl" "${dl[*]}"
printf '  login less download       %7.2f s\n' "$(echo "$m_login - $m_dl" | bc)"
m_pk=$(med "${pk[@]}"); m_a=$(med "${mka[@]}"); m_b=$(med "${mkb[@]}")
printf 'packaging (agent)           %7.2f s   (runs: %s)\n' "$m_pk" "${pk[*]}"
printf '  mksquashfs in the job     %7.2f s   (runs: %s)\n' "$(med "${sq[@]}")" "${sq[*]}"
printf '  upload + register         %7.2f s   (runs: %s)\n' "$(med "${up[@]}")" "${up[*]}"
printf '  flag → success (outside)  %7.2f s   (runs: %s; includes the agent noticing the flag and this script polling, ≤ 1 s each)\n' "$(med "${ext[@]}")" "${ext[*]}"
printf 'mksquashfs alone, mounted   %7.2f s   (runs: %s)   packaging ratio %.3f\n' "$m_a" "${mka[*]}" "$(echo "$m_pk / $m_a" | bc -l)"
printf 'mksquashfs alone, directory %7.2f s   (runs: %s)   packaging ratio %.3f\n' "$m_b" "${mkb[*]}" "$(echo "$m_pk / $m_b" | bc -l)"
