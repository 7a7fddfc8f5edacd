#!/bin/bash
# dracut module of the test image: create the root's dm-verity device from the kernel command
# line's dm-mod.create= in the initramfs, as the production kernel's dm-init does (CONFIG_DM_INIT,
# buildroot/board/drimbox/linux.fragment). Debian's kernel has no dm-init and builds dm-verity
# and erofs as modules, so the test image needs an initramfs; with this module the boot entries
# (written by post-image.sh, and by `drimbox ota install` for an update) are the same for both.

# dracut provides $moddir, $initdir, $systemdsystemunitdir and $SYSTEMCTL.
# shellcheck disable=SC2154

check() {
    require_binaries dmsetup || return 1
    return 255
}

depends() {
    echo systemd dm
}

installkernel() {
    hostonly='' instmods dm-verity erofs virtio_blk virtio_pci virtio_scsi ahci nvme sd_mod
}

install() {
    inst_multiple dmsetup sed tr sleep basename
    inst_script "$moddir/drimbox-dm-create.sh" /usr/bin/drimbox-dm-create
    inst_simple "$moddir/drimbox-dm-create.service" "$systemdsystemunitdir/drimbox-dm-create.service"
    $SYSTEMCTL -q --root "$initdir" add-wants initrd-root-device.target drimbox-dm-create.service
}
