#!/usr/bin/env bash
# Builds the container image of IMS-rs without a Docker daemon (buildah) and writes it as an OCI archive.
# One image serves both `ims serve` (the default command) and `ims agent run <job>` (a job's pod): a Debian
# bookworm root (debootstrap, minbase) with what the agent runs, plus /usr/bin/ims.
#
# Usage: scripts/build-image.sh [--binary PATH] [--output PATH] [--name NAME] [--tag TAG]
#   --binary PATH  the `ims` binary to put in (default: `cargo build --release -p ims`); a copy of it is
#                  stripped of debug information, the file given is not changed
#   --output PATH  the OCI archive to write (default: $CARGO_TARGET_DIR or target, then image/ims-rs-<version>.oci.tar)
#   --name NAME    the image name recorded in the archive (default ims-rs)
#   --tag TAG      its tag (default: the binary's version, as `ims --version` prints it)
# Environment:
#   IMS_IMAGE_MIRROR  the Debian mirror debootstrap uses (default http://deb.debian.org/debian)
#   IMS_IMAGE_CACHE   where the root is cached, as image-root-<hash of suite and package list>.tar (default
#                     /var/tmp/ims-test-cache): a re-run with the same package list reuses it and takes seconds
#   TMPDIR            where the work directory goes (default /var/tmp); removed at the end, also on failure
# Load the result with `podman load -i ARCHIVE` (or `skopeo copy oci-archive:ARCHIVE docker://REGISTRY/ims-rs:TAG`).
#
# Runs as root (debootstrap, and buildah's storage under /var/lib/containers). Installs debootstrap, buildah and
# binutils when they are missing (Debian's apt-get).
#
# The image:
# * ENTRYPOINT ["/usr/bin/ims"], CMD ["serve"]. A job's pod overrides both (command ["ims"], args ["agent",
#   "run", "<id>"]; `ims` is found through PATH).
# * No USER: the default is root, because the agent must be root (it mounts the image root and its session's
#   sshd logs users in as root; see crates/jobs/src/prereq.rs). `ims serve` needs no privileges: its Deployment
#   runs it as a non-root user with securityContext (runAsUser/runAsNonRoot, capabilities drop ALL), the data
#   directory /var/lib/ims being a volume it can write.
# * IMS_LISTEN=0.0.0.0:9000 and IMS_S3_LISTEN=0.0.0.0:9001 (a container's loopback is its own), IMS_DATA_DIR=
#   /var/lib/ims. A non-loopback API needs an administrator token: `ims serve` refuses to start without
#   IMS_API_TOKEN_FILE (or the lab-only --insecure-open-api).
# * Not included: qemu-user-static. A job of another architecture runs on a node of that architecture
#   (the executor's nodeSelector kubernetes.io/arch) from that architecture's image; emulation needs the
#   host's binfmt_misc registration, which a container does not see.
set -euo pipefail
cd "$(dirname "$0")/.."

binary="" output="" name="ims-rs" tag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --output) output=${2:?--output needs a path}; shift 2 ;;
    --name) name=${2:?--name needs a name}; shift 2 ;;
    --tag) tag=${2:?--tag needs a tag}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "build-image.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (debootstrap and buildah's storage need it)"
# What it runs, installed when missing (as scripts/serve.sh does): debootstrap and its keyring, buildah, objcopy.
missing=()
for p in debootstrap debian-archive-keyring buildah binutils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ] && command -v apt-get >/dev/null; then
  echo "build-image.sh: installing ${missing[*]}" >&2
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
    || die "could not install ${missing[*]}"
fi
for tool in debootstrap buildah objcopy sha256sum tar; do
  command -v "$tool" >/dev/null || die "$tool not found (apt install debootstrap buildah binutils)"
done

mirror=${IMS_IMAGE_MIRROR:-http://deb.debian.org/debian}
cache=${IMS_IMAGE_CACHE:-/var/tmp/ims-test-cache}
suite=bookworm
case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) die "no Debian architecture known for $(uname -m)" ;;
esac
# What the agent runs, one declaration of which is crates/jobs/src/prereq.rs (the agent checks it when it
# starts): mount/umount (mount), mksquashfs/unsquashfs (squashfs-tools); a session's sshd in a bubblewrap
# sandbox (openssh-server, bubblewrap, setpriv of util-linux, slirp4netns, ssh-keygen and ssh of
# openssh-client); create jobs' kiwi-ng (kiwi, with rsync, gpg and its agent for signing keys, debootstrap and
# the Debian archive keyring for Debian recipes). Plus tar and its compressors (imports and recipes),
# ca-certificates (HTTPS to S3 and repositories).
packages=(
  bubblewrap ca-certificates debian-archive-keyring debootstrap gpg gpg-agent gpgconf kiwi mount
  openssh-client openssh-server rsync slirp4netns squashfs-tools tar util-linux xz-utils zstd
)

# Room for the root (a few hundred MB) and the binary's copy: $TMPDIR, else /var/tmp (a tmpfs /tmp may be small).
work=$(mktemp -d "${TMPDIR:-/var/tmp}/ims-build-image.XXXXXX")
ctr=""
cleanup() {
  local rc=$?
  if [ -n "$ctr" ]; then buildah rm "$ctr" >/dev/null 2>&1 || echo "build-image.sh: could not remove buildah container $ctr" >&2; fi
  # A half-made root may hold files debootstrap mounted over (proc, sys): unmount before removing.
  if [ -d "$work/root" ]; then
    for m in $(awk -v r="$work/root" 'index($2, r) == 1 {print $2}' /proc/self/mounts | sort -r); do umount -l "$m" || true; done
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

# 1. The binary.
if [ -z "$binary" ]; then
  cargo build --release -q -p ims
  binary="${CARGO_TARGET_DIR:-target}/release/ims"
fi
[ -x "$binary" ] || die "$binary is not an executable"
cp "$binary" "$work/ims"
objcopy --strip-debug "$work/ims"
version=$("$work/ims" --version | awk '{print $2}')
[ -n "$version" ] || die "$binary --version printed no version"
tag=${tag:-$version}
if [ -z "$output" ]; then output="${CARGO_TARGET_DIR:-target}/image/$name-$tag.oci.tar"; fi
mkdir -p "$(dirname "$output")"

# 2. The root, cached by what makes it.
key=$(printf '%s\n' "$suite" "$arch" minbase "${packages[@]}" "cleanup v2" | sha256sum | cut -c1-16)
root_tar="$cache/image-root-$key.tar"
if [ ! -f "$root_tar" ]; then
  echo "build-image.sh: making the $suite root ($mirror) into $root_tar" >&2
  mkdir -p "$cache"
  included=$(IFS=,; echo "${packages[*]}")
  debootstrap --variant=minbase --arch="$arch" --include="$included" "$suite" "$work/root" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
  r="$work/root"
  # What a running system makes for itself, and what would be the same secret in every container: apt's
  # lists and caches, logs, the host keys openssh-server's installation made (the agent makes a key per
  # session), the machine id. Documentation except the copyright files, manual pages and translations.
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old "$r"/var/log/* \
    "$r"/etc/ssh/ssh_host_* "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/tmp/* "$r"/var/tmp/*
  find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
  find "$r/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  : >"$r/etc/machine-id"
  rm -f "$r/var/lib/dbus/machine-id"
  mkdir -p "$r/var/lib/ims"
  tar --numeric-owner --xattrs --xattrs-include='*' --acls -C "$r" -cf "$root_tar.tmp" .
  mv "$root_tar.tmp" "$root_tar"
  rm -rf "$r"
fi

# 3. The image: the root and the binary in one gzip-compressed layer, file times and creation time from the
# commit's (so the same sources and root give the same layer).
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
ctr=$(buildah from --quiet scratch)
buildah add --quiet "$ctr" "$root_tar" / >/dev/null
buildah copy --quiet --chmod 0755 "$ctr" "$work/ims" /usr/bin/ims >/dev/null
buildah config \
  --entrypoint '["/usr/bin/ims"]' --cmd serve \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env IMS_LISTEN=0.0.0.0:9000 --env IMS_S3_LISTEN=0.0.0.0:9001 --env IMS_DATA_DIR=/var/lib/ims \
  --workingdir /var/lib/ims --port 9000/tcp --port 9001/tcp --port 22/tcp \
  --label org.opencontainers.image.title=ims-rs \
  --label "org.opencontainers.image.description=Image management service for HPC clusters (IMS-compatible): ims serve, and job agents (ims agent run)" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  --label org.opencontainers.image.licenses=MIT \
  --label "org.opencontainers.image.base.name=debian:$suite" \
  "$ctr"
# Written beside and renamed: a reader never sees half an archive.
rm -f "$output.tmp"
buildah commit --quiet --disable-compression=false --timestamp "$epoch" "$ctr" "oci-archive:$output.tmp:$name:$tag" >/dev/null
mv "$output.tmp" "$output"
echo "build-image.sh: wrote $output ($name:$tag, $(du -h "$output" | cut -f1))" >&2
