#!/bin/bash
# kiwi-ng runs this script chrooted in the image root, after all packages
# are installed and after the root/ overlay has been copied in.
set -euxo pipefail

# Services: wicked (DHCP on eth0, root/etc/sysconfig/network/ifcfg-eth0),
# sshd, and a login prompt on the serial console.
systemctl enable wicked.service
systemctl enable sshd.service
systemctl enable serial-getty@ttyS0.service

# No baked host name: a node takes the one DHCP gives it.
rm -f /etc/hostname
install -m 0644 /dev/null /etc/hostname
chmod 1777 /tmp /var/tmp

# kiwi installed every package from the Pool and Updates repositories, so the
# image is current; drop the downloaded packages and repository metadata.
zypper --non-interactive clean --all

# The network-boot initrd. The kernel's %post built one before the overlay
# (root/etc/dracut.conf.d/50-netboot.conf) was copied in, so build it again,
# for every installed kernel, at the name the /boot/initrd link points to.
# dracut writes it mode 0600; make it readable so it can be served.
for kver in $(ls /lib/modules); do
    [ -e "/boot/vmlinuz-$kver" ] || continue
    dracut --force --kver "$kver" "/boot/initrd-$kver"
    chmod 0644 "/boot/initrd-$kver"
done

# Per-node identity must not be baked into a shared image:
#  - empty machine-id: systemd generates one at boot;
#  - no ssh host keys: sshd.service (sshd-gen-keys-start) creates the
#    missing keys when it starts.
: > /etc/machine-id
if [ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then
    rm -f /var/lib/dbus/machine-id
fi
rm -f /etc/ssh/ssh_host_*
