#!/bin/sh
# pre-mount hook: see module-setup.sh
type getargbool > /dev/null 2>&1 || . /lib/dracut-lib.sh

if getargbool 0 rd.live.overlay.overlayfs && [ ! -e /run/overlayfs ]; then
    mkdir -m 0755 -p /run/overlayfs /run/ovlwork
fi
