#!/usr/bin/env bash
# `ims images import NAME DIR` (directory → squashfs zstd → upload → register) against `mksquashfs`
# alone on the same image root, REPEAT runs each (alternating), medians; the split of the import
# into conversion and upload+register (from the timestamps of its "Building…"/"Uploading…" lines
# on stderr); peak RSS of the CLI process (VmHWM, sampled) and of `ims serve` (VmHWM, reset before
# each run).
# Then, with BIG_MIB > 0, one import of a squashfs image file of about BIG_MIB MiB (random data,
# uncompressed), for the memory bound.
#
# Usage: bench/import.sh [SIZE_MIB] [REPEAT] [BIG_MIB]     (defaults 1024 3 4096; BIG_MIB=0 skips)
# Environment: DROP_CACHES=1 drops the page cache before every timed run (default: warm cache, the
# image root read once before the first run); IDLE_WAIT (default 1800): each timed run waits (at
# most that many seconds) for the machine to be idle, and every run prints the CPU time other
# processes used meanwhile ("others"), which should be ~0; PORT (default 19331, S3 on PORT+1); WORK_PARENT
# (default /var/tmp: must not be tmpfs).
#
# The image root is real files copied from this machine until it holds SIZE_MIB MiB (apparent
# size), with stand-ins for a Debian kernel and initrd: `make_root` in bench/lib.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SIZE=${1:-1024}
REPEAT=${2:-3}
BIG=${3:-4096}
DROP=${DROP_CACHES:-0}
cargo build --release -q -p ims
BIN=$(realpath "${CARGO_TARGET_DIR:-target}/release/ims")
work=$(mktemp -d "${WORK_PARENT:-/var/tmp}/ims-bench-import.XXXXXX")
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
not_tmpfs "$work"
# Room: the image root and its squashfs (plus the server's copy, twice while a multipart upload
# completes); for the big step, the squashfs file, its parts on the server and the assembled object.
need=$(( (2 * SIZE > 3 * BIG ? 2 * SIZE : 3 * BIG) + 1024 ))
need_room "$work" "$need" "BIG_MIB=0 skips the big step"

# --- the image root -------------------------------------------------------------------------
root=$work/root
make_root "$root" "$SIZE"
have() { du -sb "$root" | cut -f1; }
tree_bytes=$(have)
tree_files=$(find "$root" -xdev | wc -l)
tree_disk=$(du -sh "$root" | cut -f1)

# --- the server -----------------------------------------------------------------------------
PORT=${PORT:-19331}
mkdir -p "$work/data"
start_server "$work/data"
mkdir -p "$work/tmp"

hwm_reset() { echo 5 > "/proc/$pid/clear_refs"; }
hwm() { awk '/VmHWM/ {print $2}' "/proc/$pid/status"; }
# CPU seconds of the server so far.
srv_cpu() { local f; read -r -a f < "/proc/$pid/stat"; echo "scale=2; (${f[13]} + ${f[14]}) / $hz" | bc; }
settle() {
  sync
  if [ "$DROP" = 1 ]; then echo 3 > /proc/sys/vm/drop_caches; fi
  wait_idle
}
# Prefixes each line of stdin with the time (seconds since the epoch).
stamp() { while IFS= read -r l; do printf '%s %s\n' "$EPOCHREALTIME" "$l"; done; }
# Deletes what an import uploaded (the image record stays; only the bytes matter here).
forget() {
  local id=$1 k
  for k in rootfs kernel initrd manifest.json; do
    "$BIN" artifacts delete boot-images "$id/$k" >/dev/null 2>&1 || true
  done
}
# Peak RSS (VmHWM, KiB) of process $1 until it exits, sampled every 0.1 s with shell builtins only
# (no forks that would compete with mksquashfs for the CPUs); the mark only rises, so only the last
# 0.1 s can be missed. (/usr/bin/time's %M is no use here: it reports the largest of the process
# and its children, i.e. mksquashfs.)
exec {tick}<> <(:)
peak_of() {
  local p=$1 k v rest peak=0
  while [ -r "/proc/$p/status" ]; do
    while read -r k v rest; do
      case $k in
        State:) [ "$v" = Z ] && break 2 ;;
        VmHWM:) peak=$v ;;
      esac
    done < "/proc/$p/status" 2>/dev/null || break
    read -r -t 0.1 -u "$tick" _ || true
  done
  echo "$peak"
}
# One import: appends "total conversion upload_register cli_rss_kib server_hwm_kib cpu_s
# other_cpu_s" to $work/NAME.runs.
import_run() {
  local name=$1 src=$2; shift 2
  local s e log=$work/import.log out=$work/import.json sub tpid= ipid= rss cpu b0 b1 c0 c1 _x
  hwm_reset
  read -r b0 _x < <(ticks); c0=$(srv_cpu)
  s=$EPOCHREALTIME
  ( /usr/bin/time -f '%U %S' -o "$work/cpu" "$BIN" images import "$name" "$src" --work-dir "$work/tmp" \
      --format json "$@" 2>&1 >"$out" | stamp > "$log" ) &
  sub=$!
  while [ -z "$tpid" ] && kill -0 "$sub" 2>/dev/null; do tpid=$(pgrep -P "$sub" -x time || true); done
  while [ -z "$ipid" ] && kill -0 "$tpid" 2>/dev/null; do ipid=$(pgrep -P "$tpid" -x ims || true); done
  rss=$(peak_of "$ipid")
  wait "$sub" || { cat "$log" "$out" >&2; exit 1; }
  e=$EPOCHREALTIME
  read -r b1 _x < <(ticks); c1=$(srv_cpu)
  cpu=$(awk '{print $1 + $2}' "$work/cpu")
  local id b u
  id=$(sed -n 's/^ *"id": *"\([^"]*\)".*/\1/p' "$out" | head -1)
  [ -n "$id" ] || { echo "import failed:" >&2; cat "$log" "$out" >&2; exit 1; }
  b=$(awk '/ (Building|Converting) / {print $1; exit}' "$log")
  u=$(awk '/ Uploading / {print $1; exit}' "$log")
  [ -n "$b" ] || b=$s
  # CPU time of other processes during the run: the machine's busy time less the CLI's (with
  # mksquashfs) and the server's.
  other=$(echo "scale=1; ($b1 - $b0) / $hz - $cpu - ($c1 - $c0)" | bc)
  echo "$(echo "$e - $s" | bc) $(echo "$u - $b" | bc) $(echo "$e - $u" | bc) $rss $(hwm) $cpu $other" >> "$work/$name.runs"
  forget "$id"
}

# Warm the cache (and the server) once, untimed, unless every run starts cold.
# (Through a pipe: GNU tar does not read file contents when it writes to /dev/null.)
[ "$DROP" = 1 ] || tar cf - -C "$root" . | cat > /dev/null

# A run is "disturbed" when other processes used more than 3 % of the machine's CPU time meanwhile
# (this is a shared machine); a pair with a disturbed run is printed but not counted, and measured
# again, until REPEAT undisturbed pairs (at most 3 × REPEAT attempts).
disturbed() { echo "$1 > 0.03 * $(nproc) * $2" | bc; }
declare -a mk ims conv upl rss_cli rss_srv mk_rss mk_cpu ims_cpu
i=0; attempt=0
while [ "$i" -lt "$REPEAT" ] && [ "$attempt" -lt $((3 * REPEAT)) ]; do
  attempt=$((attempt + 1))
  # The two are run in alternating order (odd attempts mksquashfs first), so that neither gains
  # from its place.
  if [ $((attempt % 2)) = 0 ]; then settle; import_run "bench-$attempt" "$root"; fi
  settle
  read -r b0 _x < <(ticks)
  s=$EPOCHREALTIME
  /usr/bin/time -f '%M %U %S' -o "$work/mkrss" mksquashfs "$root" "$work/tmp/out.sqsh" -noappend -comp zstd -xattrs -quiet -no-progress
  e=$EPOCHREALTIME
  read -r b1 _x < <(ticks)
  m=$(echo "$e - $s" | bc)
  read -r mr us sy < "$work/mkrss"; mc=$(echo "$us + $sy" | bc)
  mo=$(echo "scale=1; ($b1 - $b0) / $hz - $mc" | bc)
  sqsh_bytes=$(stat -c %s "$work/tmp/out.sqsh")
  rm -f "$work/tmp/out.sqsh"
  if [ $((attempt % 2)) = 1 ]; then settle; import_run "bench-$attempt" "$root"; fi
  read -r t c u r h cp o < <(tail -1 "$work/bench-$attempt.runs")
  note=
  if [ "$(disturbed "$mo" "$m")" = 1 ] || [ "$(disturbed "$o" "$t")" = 1 ]; then
    note=' — disturbed, not counted'
  else
    i=$((i + 1))
    mk+=("$m"); mk_rss+=("$mr"); mk_cpu+=("$mc")
    ims+=("$t"); conv+=("$c"); upl+=("$u"); rss_cli+=("$r"); rss_srv+=("$h"); ims_cpu+=("$cp")
  fi
  printf 'attempt %d: mksquashfs %.2f s (CPU %.2f s, others %.1f s); ims images import %.2f s (CPU %.2f s, others %.1f s; conversion %.2f s, upload+register %.2f s); CLI %s MiB, server %s MiB%s\n' \
    "$attempt" "$m" "$mc" "$mo" "$t" "$cp" "$o" "$c" "$u" "$(echo "$r" | mib)" "$(echo "$h" | mib)" "$note"
done
[ "$i" -gt 0 ] || { echo "import.sh: every run was disturbed by other processes" >&2; exit 1; }
REPEAT=$i

machine
echo "image root: $((tree_bytes / 1048576)) MiB apparent ($tree_disk on disk), $tree_files entries; squashfs (zstd): $((sqsh_bytes / 1048576)) MiB; page cache: $([ "$DROP" = 1 ] && echo 'dropped before every run' || echo warm); medians of $REPEAT"
m_mk=$(printf '%s\n' "${mk[@]}" | median); m_ims=$(printf '%s\n' "${ims[@]}" | median)
printf 'mksquashfs alone        %7.2f s   (runs: %s)\n' "$m_mk" "${mk[*]}"
printf 'ims images import       %7.2f s   (runs: %s)   ratio %.3f\n' "$m_ims" "${ims[*]}" "$(echo "$m_ims / $m_mk" | bc -l)"
printf '  CPU time (user+sys, with children): mksquashfs %.2f s, ims images import %.2f s (medians)\n' "$(printf '%s\n' "${mk_cpu[@]}" | median)" "$(printf '%s\n' "${ims_cpu[@]}" | median)"
printf '  conversion            %7.2f s   (runs: %s)\n' "$(printf '%s\n' "${conv[@]}" | median)" "${conv[*]}"
printf '  upload + register     %7.2f s   (runs: %s)\n' "$(printf '%s\n' "${upl[@]}" | median)" "${upl[*]}"
echo "peak RSS: ims images import $(printf '%s\n' "${rss_cli[@]}" | maxof | mib) MiB; ims serve $(printf '%s\n' "${rss_srv[@]}" | maxof | mib) MiB; mksquashfs $(printf '%s\n' "${mk_rss[@]}" | maxof | mib) MiB"

# --- a big squashfs image as input: memory must not grow with the size ---------------------------
if [ "$BIG" -gt 0 ]; then
  rm -rf "$root"
  big=$work/big; mkdir -p "$big/boot"
  head -c $((BIG * 1024 * 1024)) /dev/urandom > "$big/blob"
  head -c $((8 * 1024 * 1024)) /dev/urandom > "$big/boot/vmlinuz-6.1.0-1-amd64"
  head -c $((40 * 1024 * 1024)) /dev/urandom > "$big/boot/initrd.img-6.1.0-1-amd64"
  mksquashfs "$big" "$work/big.sqsh" -noappend -comp lz4 -noD -noF -quiet -no-progress
  rm -rf "$big"
  settle
  import_run big "$work/big.sqsh"
  read -r t c u r h cp o < "$work/big.runs"
  printf 'squashfs input %d MiB: ims images import %.2f s (others %.1f s); peak RSS: CLI %s MiB, ims serve %s MiB\n' \
    "$(( $(stat -c %s "$work/big.sqsh") / 1048576 ))" "$t" "$o" "$(echo "$r" | mib)" "$(echo "$h" | mib)"
fi
