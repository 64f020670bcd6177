#!/usr/bin/env bash
# Builds and runs `ims serve` on a Debian machine with the embedded defaults: records in SQLite and
# artifacts on the local filesystem under ./ims-data, API on http://127.0.0.1:9000. Nothing else to
# install or start. Extra arguments go to `ims serve` (e.g. --listen 0.0.0.0:9000 --data-dir /var/lib/ims, with
# IMS_API_TOKEN_FILE set: a non-loopback API needs a token).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
# A C compiler builds the bundled SQLite; curl is handy for the walk-through; the image tools
# (squashfs-tools, tar and its compressors) serve imports and jobs; job agents run each job's sshd
# (openssh-server, openssh-client for its host keys) in a bubblewrap sandbox with a network of its own
# (slirp4netns; gcc and libc6-dev also build the static login shell of jailed sessions); create jobs build with
# kiwi-ng (kiwi, which also needs rsync and gpg for its signing keys; debootstrap and the Debian archive
# keyring for Debian recipes).
missing=()
for p in gcc libc6-dev binutils curl ca-certificates squashfs-tools tar xz-utils zstd util-linux mount bubblewrap slirp4netns openssh-server openssh-client kiwi rsync debootstrap debian-archive-keyring gpg gpg-agent gpgconf; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo >/dev/null; then
  echo "serve.sh: cargo not found; install a Rust toolchain (rustup, 1.95 or newer) first" >&2
  exit 1
fi
cargo build --release -q -p ims
bin="${CARGO_TARGET_DIR:-target}/release/ims"
# Run it stripped: its debug information moves to ims.debug beside it (gdb and debuginfod-style
# tools find it through the binary's debug link). Done once per build: cargo leaves a stripped
# binary alone until the sources change.
if readelf -S "$bin" | grep -q '\.debug_info'; then
  objcopy --only-keep-debug --compress-debug-sections=zlib "$bin" "$bin.debug"
  objcopy --strip-debug --add-gnu-debuglink="$bin.debug" "$bin"
fi
exec "$bin" serve "$@"
