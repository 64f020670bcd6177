#!/bin/bash
# dracut module "live-overlay-dirs" (added by this recipe's dracut.conf.d).
#
# dracut 059 (Debian 12): with rd.live.overlay.overlayfs=1 the dmsquash-live
# generator writes a sysroot.mount with upperdir=/run/overlayfs and
# workdir=/run/ovlwork, but those directories are only created by the
# overlayfs "mount" hook, which runs after sysroot.mount. The unit fails
# ("[FAILED] Failed to mount sysroot.mount") and the hook mounts the root
# later. This pre-mount hook creates the directories first, so the unit
# mounts the root and the boot has no failed unit.

check() {
    # only when requested with add_dracutmodules
    return 255
}

depends() {
    echo dmsquash-live
}

install() {
    inst_hook pre-mount 50 "$moddir/live-overlay-dirs.sh"
}
