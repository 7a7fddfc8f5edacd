#!/bin/sh
# Buildroot post-build script (BR2_ROOTFS_POST_BUILD_SCRIPT), called with $1 = TARGET_DIR once
# every package is installed and both overlays are copied (../overlay, then rootfs-overlay/),
# before Buildroot assembles the root filesystem (users table, "systemctl preset-all",
# mkfs.erofs). The root filesystem is read-only on the box: whatever must hold at run time is
# settled here.
set -eu

TARGET=${1:?usage: post-build.sh TARGET_DIR}

die() {
    printf 'post-build.sh: %s\n' "$*" >&2
    exit 1
}

# --- What the box cannot do without (fail the build, not the first boot) --------------------
for f in usr/bin/drimbox \
    usr/lib/systemd/system/drimbox.service \
    etc/systemd/system/multi-user.target.wants/drimbox.service \
    etc/systemd/system/boot-complete.target.requires/drimbox-health.service \
    etc/systemd/system/multi-user.target.wants/drimbox-ota-commit.service \
    etc/systemd/system/multi-user.target.wants/drimbox-ota-spool.path \
    etc/systemd/system/multi-user.target.wants/drimbox-egress.service \
    usr/lib/systemd/system/drimbox-ota-spool.service \
    usr/lib/systemd/system/drimbox-unhealthy.service \
    etc/drimbox/drimbox.toml \
    usr/lib/sysusers.d/drimbox.conf; do
    [ -e "$TARGET/$f" ] || [ -L "$TARGET/$f" ] || die "/$f is missing from the target"
done

# --- /data: the data partition (genimage.cfg), the only persistent writable storage ----------
# The mount point must exist in the read-only root. nofail: without /data, drimbox.service does
# not start (RequiresMountsFor=/data/drimbox) but the rest of the system still boots, instead of
# dropping to an emergency shell that no one can log into. x-systemd.growfs: the filesystem
# follows the partition, which systemd-repart grows to the end of the disk on first boot.
mkdir -p "$TARGET/data"
fstab=$TARGET/etc/fstab
touch "$fstab"
if ! grep -Eq '^[^#]*[[:space:]]/data[[:space:]]' "$fstab"; then
    cat >>"$fstab" <<'EOF'
# DRIMbox data partition: the archive (redb, DICOM store), keys, state. Never executed from.
PARTLABEL=data	/data	ext4	defaults,noatime,nodev,nosuid,noexec,nofail,x-systemd.growfs	0	2
EOF
fi

# --- /efi: the ESP, for the update commands and systemd-bless-boot ---------------------------
# Mounted on first access only (automount), root only (umask), and unmounted again when idle, so
# that a power loss almost never finds the FAT file system mounted. Never fsck'd at boot (pass 0):
# the entries are replaced by rename, one at a time (src/ota/boot.rs).
mkdir -p "$TARGET/efi"
if ! grep -Eq '^[^#]*[[:space:]]/efi[[:space:]]' "$fstab"; then
    cat >>"$fstab" <<'EOF'
# ESP: systemd-boot, the slots' kernels and boot entries (drimbox ota, systemd-bless-boot).
PARTLABEL=esp	/efi	vfat	noauto,x-systemd.automount,x-systemd.idle-timeout=30,umask=0077,nodev,nosuid,noexec	0	0
EOF
fi

# --- /tmp and /var/tmp: memory, not the read-only root --------------------------------------
# systemd sets up a unit's PrivateDevices= /dev and PrivateTmp= directories under them: on the
# read-only root drimbox.service would fail to start (226/NAMESPACE, seen booting the test image).
for dir in /tmp /var/tmp; do
    if ! grep -Eq "^[^#]*[[:space:]]${dir}[[:space:]]" "$fstab"; then
        printf 'tmpfs\t%s\ttmpfs\tmode=1777,nosuid,nodev,size=64M\t0\t0\n' "$dir" >>"$fstab"
    fi
done

# --- machine-id on a read-only /etc --------------------------------------------------------
# An empty file: systemd generates a transient machine ID at every boot and mounts it over
# /etc/machine-id (machine-id(5)); this is not "first boot" (that is the "uninitialized" value,
# which would rerun first-boot logic at every boot). A real ID here would be shared by every box
# flashed with this image. Nothing of DRIMbox keys on the machine ID: the box's identity lives
# on /data.
: >"$TARGET/etc/machine-id"
if [ -e "$TARGET/var/lib/dbus/machine-id" ] && [ ! -L "$TARGET/var/lib/dbus/machine-id" ]; then
    ln -sf /etc/machine-id "$TARGET/var/lib/dbus/machine-id"
fi

# --- What an appliance must not ship -------------------------------------------------------
# A login prompt on the screen: the only getty is on the serial port (BR2_TARGET_GENERIC_GETTY_PORT,
# and root has no password anyway). Buildroot's "systemctl preset-all" would re-enable
# getty@tty1 from systemd's presets; rootfs-overlay's 10-drimbox-board.preset disables it, and the
# link is removed here in case a package made one.
rm -f "$TARGET/etc/systemd/system/getty.target.wants/getty@tty1.service"
# A root shell on tty9 for anyone who can add systemd.debug_shell to the kernel command line.
rm -f "$TARGET/usr/lib/systemd/system/debug-shell.service"
# cargo install's bookkeeping, should a package have used it.
rm -f "$TARGET/usr/.crates.toml" "$TARGET/usr/.crates2.json"

# --- Nothing to update at boot --------------------------------------------------------------
# Units with ConditionNeedsUpdate=/etc (systemd-sysusers, ldconfig, systemd-update-done) run
# when /usr is newer than /etc/.updated and would then fail to write the read-only /etc. The
# image is complete as built: the users exist (users table), the presets are applied. Stamp
# /etc with the time of /usr, as systemd-update-done would. Last, so that no later change here
# makes /usr newer.
touch -r "$TARGET/usr" "$TARGET/etc/.updated"
