#!/usr/bin/env bash
# Runs the whole test suite on a Debian machine: installs what the tests need, starts a throw-away
# PostgreSQL cluster on loopback, runs every test (SQLite and PostgreSQL), stops the cluster.
# Usage: scripts/test.sh [extra cargo test/nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# System packages the tests use: PostgreSQL (store suite), the OpenSSH client (node probes), curl, Python (moto),
# squashfs-tools, tar, xz-utils, zstd, attr, libcap2-bin (crates/rootfs: real mksquashfs, xattrs, capabilities),
# and what job agents run: bubblewrap + openssh-server + slirp4netns (per-job sshd sandbox and its network), gcc + libc6-dev
# (the static login shell of jailed sessions is built with the agent), util-linux (mount, setpriv, nsenter),
# kiwi + rsync + gpg + debootstrap + debian-archive-keyring (create jobs build the Debian example recipe), and for the
# tests themselves qemu-system-x86 (the built image boots), openssl (a site CA), gzip and iproute2 (a test network
# namespace that sessions must reach; the remote build node rig's namespaces, bridge and veths, with openssh-server's
# sshd per node and util-linux's unshare/nsenter), qemu-user-static + binfmt-support (aarch64 jobs under
# emulation), buildah + podman + runc (the container image of IMS-rs: scripts/build-image.sh builds it, the tests run
# it with podman; runc because crun refuses a v1/v2 hybrid cgroup setup).
packages=(postgresql openssh-client openssh-server bubblewrap slirp4netns gcc libc6-dev iproute2 busybox-static util-linux mount curl ca-certificates python3 python3-venv squashfs-tools tar xz-utils zstd attr libcap2-bin kiwi rsync debootstrap debian-archive-keyring gpg gpg-agent gpgconf qemu-system-x86 openssl gzip qemu-user-static binfmt-support buildah podman runc)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}" >&2
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# aarch64 jobs under emulation (crates/ims/tests/it/jobs_aarch64.rs): binfmt_misc mounted with qemu-aarch64 registered
# (binfmt-support registers qemu-user-static's entries, with the F flag, where binfmt_misc is mounted), and a tiny aarch64
# image root: Debian's arm64 busybox-static package, downloaded once into a cache outside the clone (apt needs the
# arm64 architecture for that; it is removed again if it was added here).
if [ "$(uname -m)" = x86_64 ]; then
  binfmt=/proc/sys/fs/binfmt_misc
  if [ ! -e "$binfmt/status" ]; then $SUDO mount -t binfmt_misc binfmt_misc "$binfmt"; fi
  if [ ! -e "$binfmt/qemu-aarch64" ]; then $SUDO update-binfmts --enable qemu-aarch64; fi
  cache=${IMS_TEST_CACHE:-/var/tmp/ims-test-cache}
  deb=$(ls "$cache"/busybox-static_*_arm64.deb 2>/dev/null | head -n 1 || true)
  if [ -z "$deb" ]; then
    echo "test.sh: downloading busybox-static:arm64 into $cache" >&2
    added=""
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
      $SUDO dpkg --add-architecture arm64
      added=yes
    fi
    $SUDO apt-get update -q
    mkdir -p "$cache"
    dl=$(mktemp -d)
    (cd "$dl" && apt-get download -q busybox-static:arm64)
    mv "$dl"/busybox-static_*_arm64.deb "$cache"/
    rmdir "$dl"
    if [ -n "$added" ]; then $SUDO dpkg --remove-architecture arm64; fi
    deb=$(ls "$cache"/busybox-static_*_arm64.deb | head -n 1)
  fi
  export IMS_TEST_BUSYBOX_ARM64_DEB="$deb"
fi

# Python tools the tests drive (moto's S3 server for the external-S3 configuration; boto3 and the AWS
# CLI as clients of the built-in S3 endpoint; schemathesis against the OpenAPI document), in a virtual
# environment outside the clone so that it is reused between runs.
# kubernetes-validate bundles the Kubernetes schemas (no network); 1.37.* still bundles 1.25's.
venv=${IMS_TEST_VENV:-/var/tmp/ims-test-venv}
if [ ! -x "$venv/bin/moto_server" ] || [ ! -x "$venv/bin/aws" ] || [ ! -x "$venv/bin/ansible-playbook" ] || [ ! -x "$venv/bin/st" ] || [ ! -x "$venv/bin/kubernetes-validate" ] || ! "$venv/bin/python" -c "import boto3" 2>/dev/null; then
  echo "test.sh: installing moto[server], boto3, awscli, ansible-core, schemathesis and kubernetes-validate into $venv" >&2
  python3 -m venv "$venv" 2>/dev/null || {
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends python3-venv
    python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]==5.*" boto3 awscli "ansible-core==2.19.*" "schemathesis==4.*" "kubernetes-validate==1.37.*"
fi
export IMS_TEST_MOTO_SERVER="$venv/bin/moto_server"
export IMS_TEST_ANSIBLE_PLAYBOOK="$venv/bin/ansible-playbook"
# Real S3 clients for the built-in S3 endpoint tests (crates/s3).
export IMS_TEST_PYTHON="$venv/bin/python"
export IMS_TEST_AWS="$venv/bin/aws"
# schemathesis 4 (its `st run` has the positive/negative data checks api_openapi runs).
export IMS_TEST_SCHEMATHESIS="$venv/bin/st"
# kubernetes-validate (crates/ims/tests/it/kube_manifests.rs: deploy/kubernetes and the executor's objects).
export IMS_TEST_KUBERNETES_VALIDATE="$venv/bin/kubernetes-validate"

if ! command -v cargo >/dev/null; then
  echo "test.sh: cargo not found; install a Rust toolchain (rustup) first" >&2
  exit 1
fi

# A private PostgreSQL cluster for this run.
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
pgdir=$(mktemp -d /tmp/ims-test-pg.XXXXXX)
pgport=${IMS_TEST_PG_PORT:-55432}
while (echo >"/dev/tcp/127.0.0.1/$pgport") 2>/dev/null; do pgport=$((pgport + 1)); done
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres "$pgdir"
  as_pg=(runuser -u postgres --)
fi
stop_pg() {
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$pgdir"
}
trap stop_pg EXIT
"${as_pg[@]}" "$pgbin/initdb" -D "$pgdir/data" -A trust -U postgres >"$pgdir/initdb.log" 2>&1 \
  || { cat "$pgdir/initdb.log" >&2; exit 1; }
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/server.log" -w \
  -o "-p $pgport -k $pgdir -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off" start >/dev/null \
  || { cat "$pgdir/server.log" >&2; exit 1; }
export IMS_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$pgport/postgres"
echo "test.sh: PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pgport" >&2

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
