# Shared by the bench/*.sh scripts (sourced): statistics, idle detection, the server, image roots.

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
maxof() { sort -g | tail -1; }
# KiB → MiB with one decimal.
mib() { awk '{printf "%.1f", $1/1024}'; }
hz=$(getconf CLK_TCK)
# CPU ticks of the whole machine: "busy idle" (steal not counted).
ticks() { local _c u n sy i w q sq _r; read -r _c u n sy i w q sq _r < /proc/stat; echo "$((u + n + sy + q + sq)) $((i + w))"; }
# Waits until the machine is idle (≤ 10 % busy over 2 s), at most IDLE_WAIT s (default 1800): other
# processes on the cores would be measured too.
wait_idle() {
  local waited=0 b0 i0 b1 i1
  while :; do
    read -r b0 i0 < <(ticks); sleep 2; read -r b1 i1 < <(ticks)
    (( (b1 - b0) * 10 <= (b1 - b0) + (i1 - i0) )) && return
    (( waited == 0 )) && echo "waiting for the machine to be idle ..." >&2
    waited=$((waited + 2))
    if (( waited >= ${IDLE_WAIT:-1800} )); then echo "still busy after ${waited} s; measuring anyway" >&2; return; fi
  done
}
# Prints the machine line of a result.
machine() {
  echo "machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); mksquashfs $(mksquashfs -version | awk 'NR==1 {print $3}')"
}

# Exits with a message unless directory $1 has $2 MiB free; $3 is added to the message (a hint).
need_room() {
  local free; free=$(df -Pk "$1" | awk 'NR==2 {print $4}')
  if [ "$free" -lt $(($2 * 1024)) ]; then
    echo "$(basename "$0"): $((free / 1024)) MiB free on $1, about $2 MiB needed${3:+ ($3)}" >&2; exit 1
  fi
}
# Exits with a message when directory $1 is on tmpfs (timings would not include the disk).
not_tmpfs() {
  if [ "$(stat -f -c %T "$1")" = tmpfs ]; then echo "$(basename "$0"): $1 is on tmpfs; set WORK_PARENT" >&2; exit 1; fi
}

# Starts `$BIN serve` on 127.0.0.1:$PORT (S3 on PORT+1) with its data in $1, more arguments after;
# sets $pid and IMS_URL; waits until it answers.
start_server() {
  local data=$1; shift
  "$BIN" serve --listen "127.0.0.1:$PORT" --s3-listen "127.0.0.1:$((PORT + 1))" --data-dir "$data" "$@" 2>"$data.serve.log" &
  pid=$!
  local _i
  for _i in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz/live" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$PORT/healthz/live" >/dev/null || { cat "$data.serve.log" >&2; return 1; }
  export IMS_URL=http://127.0.0.1:$PORT
}

# Deletes the jobs of the server started by start_server, then stops it (jobs first: a stopped
# server leaves its agents running, for a restart to take them over).
stop_server() {
  [ -n "${pid:-}" ] || return 0
  local j
  for j in $(curl -sf "$IMS_URL/v3/jobs" | grep -o '"id": *"[0-9a-f-]*"' | grep -o '[0-9a-f-]\{36\}' || true); do
    curl -sf -X DELETE "$IMS_URL/v3/jobs/$j" >/dev/null || true
  done
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
}

# Fills image root $1 with real files copied from this machine until it holds $2 MiB (apparent
# size): /etc, /usr/bin, /usr/sbin, /usr/libexec, /usr/lib64, /usr/lib/x86_64-linux-gnu, … in that order,
# then, if /usr is too small, further copies of /usr/lib; plus stand-ins for a Debian kernel and
# initrd (random bytes, 8 and 40 MiB, as compressed files are) with the /vmlinuz and /initrd.img
# links, the merged-/usr links /bin, /sbin, /lib, /lib64, and /tmp, /root, /proc, … .
make_root() {
  local root=$1 want=$(($2 * 1024 * 1024)) d n=0
  mkdir -p "$root/boot"
  for d in /etc /usr/bin /usr/sbin /usr/libexec /usr/lib64 /usr/lib/x86_64-linux-gnu /usr/lib/python3* /usr/lib/gcc \
           /usr/share /usr/include /usr/lib /usr/local; do
    [ "$(du -sb "$root" | cut -f1)" -ge "$want" ] && break
    [ -d "$d" ] && cp -a --parents "$d" "$root/" 2>/dev/null || true
  done
  while [ "$(du -sb "$root" | cut -f1)" -lt "$want" ]; do
    n=$((n + 1)); cp -a /usr/lib "$root/usr/lib-copy$n"
  done
  head -c $((8 * 1024 * 1024)) /dev/urandom > "$root/boot/vmlinuz-6.1.0-1-amd64"
  head -c $((40 * 1024 * 1024)) /dev/urandom > "$root/boot/initrd.img-6.1.0-1-amd64"
  # Merged /usr, as Debian has it (a login shell at /bin/sh for jailed SSH sessions), and the
  # directories every image root has.
  mkdir -p "$root/tmp" "$root/var/tmp" "$root/root" "$root/proc" "$root/sys" "$root/dev" "$root/run"
  chmod 1777 "$root/tmp" "$root/var/tmp"
  for d in bin sbin lib lib64; do [ -e "$root/$d" ] || ln -s "usr/$d" "$root/$d"; done
  ln -s boot/vmlinuz-6.1.0-1-amd64 "$root/vmlinuz"
  ln -s boot/initrd.img-6.1.0-1-amd64 "$root/initrd.img"
}
