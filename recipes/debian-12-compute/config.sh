#!/bin/bash
# kiwi-ng runs this script chrooted in the image root, after all packages
# are installed and after the root/ overlay has been copied in.
set -euxo pipefail
export DEBIAN_FRONTEND=noninteractive

# Services: DHCP on every en*/eth* NIC (root/etc/systemd/network/20-wired.network),
# resolved as the resolver, sshd, and a login prompt on the serial console.
systemctl enable systemd-networkd.service
systemctl enable systemd-resolved.service
systemctl enable ssh.service
systemctl enable serial-getty@ttyS0.service

# No baked host name (debootstrap copied the build host's /etc/hostname,
# mode included): an empty file lets a node take the one DHCP gives it.
rm -f /etc/hostname
install -m 0644 /dev/null /etc/hostname

# kiwi creates the bind mount point of its shared cache dir before
# debootstrap runs; with a cache under /var/tmp that left /var/tmp 0755.
chmod 1777 /tmp /var/tmp

# debootstrap wrote /etc/apt/sources.list (bookworm main only); kiwi wrote
# /etc/apt/sources.list.d/*.sources for the imageinclude repositories.
rm -f /etc/apt/sources.list

# systemd-resolved's postinst pointed /etc/resolv.conf at the resolved stub,
# which does not exist in the chroot: use kiwi's build-time copy of the host
# file for the apt calls below. (kiwi deletes a symlinked /etc/resolv.conf at
# the end; root/etc/tmpfiles.d/resolv-stub.conf recreates the link at boot.)
if [ -e /etc/resolv.conf.kiwi ]; then
    ln -sf resolv.conf.kiwi /etc/resolv.conf
fi

# debootstrap installs the base system from the plain bookworm suite only:
# bring everything up to bookworm-security and bookworm-updates.
apt-get update
apt-get -y --no-install-recommends full-upgrade

# Remove the downloaded .debs and the package lists (keep lists/partial).
apt-get clean
find /var/lib/apt/lists -maxdepth 1 -type f -delete

# The network-boot initrd. The kernel postinst built one before the overlay
# (root/etc/dracut.conf.d/50-netboot.conf) was copied in, so build it again,
# for every installed kernel, at the name Debian's /initrd.img link points
# to. dracut writes it mode 0600; make it readable so it can be served.
for kver in $(ls /lib/modules); do
    [ -e "/boot/vmlinuz-$kver" ] || continue
    dracut --force --kver "$kver" "/boot/initrd.img-$kver"
    chmod 0644 "/boot/initrd.img-$kver"
done

# Per-node identity must not be baked into a shared image:
#  - empty machine-id: systemd generates one at boot (networkd derives the
#    DHCP client id from it, dbus and journald use it);
#  - no ssh host keys: root/etc/systemd/system/ssh.service.d/10-hostkeys.conf
#    generates them when sshd starts.
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
rm -f /etc/ssh/ssh_host_*
