#!/bin/sh
# Buildroot post-image script (BR2_ROOTFS_POST_IMAGE_SCRIPT), called with $1 = BINARIES_DIR:
# turns Buildroot's outputs into the flashable disk image.
#
#   rootfs.erofs   the root filesystem (BR2_TARGET_ROOTFS_EROFS)
#   -> root.verity the same bytes followed by their dm-verity hash tree (veritysetup format);
#                  root hash and verity parameters in drimbox-image.txt
#   -> esp/        systemd-boot, the kernel, loader.conf and the slot A entry, whose kernel
#                  command line creates the verity device (dm-mod.create=) and mounts it as /
#   -> disk.img    genimage.cfg: GPT with esp, root-a (root.verity), root-b (empty), data
#      disk.img.bmap  when bmaptool is installed
#
# Inputs: $1 (images directory, also where the outputs go) and, all optional:
#   DRIMBOX_ROOTFS_DIR     a root directory to make rootfs.erofs from when it does not exist
#                          (the test image, built without Buildroot, reuses this script so)
#   DRIMBOX_KERNEL         EFI-stub kernel          [$1/bzImage]
#   DRIMBOX_SYSTEMD_BOOT   systemd-boot EFI binary  [$1/efi-part/EFI/BOOT/bootx64.efi]
#   DRIMBOX_GENIMAGE_CFG   genimage configuration   [genimage.cfg beside this script]
#   DRIMBOX_EXTRA_CMDLINE  appended to the kernel command line
#   DRIMBOX_INITRD         an initramfs for the kernel (the test image's Debian kernel needs
#                          one; the production kernel does not)
#   DRIMBOX_VERSION        the image's version, dot-separated numbers   [0.1.0]
#   DRIMBOX_SECURITY_EPOCH the image's security epoch                   [0]
#   TARGET_DIR, BUILD_DIR  set by Buildroot: used to check the users table against sysusers.d
# Tools on PATH (Buildroot's host tools are): veritysetup, genimage, mkdosfs, mcopy, mmd,
# mke2fs, and mkfs.erofs when rootfs.erofs has to be made; python3 for the hash tree self-check.
set -eu

BOARD_DIR=$(cd "$(dirname "$0")" && pwd)
IMAGES=$(cd "${1:?usage: post-image.sh BINARIES_DIR}" && pwd)
GENIMAGE_CFG=${DRIMBOX_GENIMAGE_CFG:-$BOARD_DIR/genimage.cfg}
KERNEL=${DRIMBOX_KERNEL:-$IMAGES/bzImage}
SYSTEMD_BOOT=${DRIMBOX_SYSTEMD_BOOT:-$IMAGES/efi-part/EFI/BOOT/bootx64.efi}
ROOTFS=$IMAGES/rootfs.erofs
VERITY=$IMAGES/root.verity
ESP=$IMAGES/esp
# dm-verity data and hash block size; erofs blocks are 4 KiB too.
BLOCK=4096

log() {
    printf 'post-image.sh: %s\n' "$*"
}

die() {
    printf 'post-image.sh: error: %s\n' "$*" >&2
    exit 1
}

need() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found on PATH"
    done
}

# partuuid NAME: the partition-uuid of "partition NAME { ... }" in genimage.cfg, the one place
# where the partition UUIDs are written down.
partuuid() {
    awk -v name="$1" '
        $1 == "partition" && $2 == name { inside = 1; next }
        inside && $1 == "}" { exit }
        inside && $1 == "partition-uuid" { gsub(/[";]/, "", $3); print $3; exit }
    ' "$GENIMAGE_CFG"
}

# The image has no way to add users at boot (read-only /etc): the users table of
# package/drimbox/drimbox.mk must create every user, group and membership that
# overlay/usr/lib/sysusers.d/drimbox.conf declares. Checked against the table Buildroot merged
# (only in a Buildroot build).
check_users() {
    table=${BUILD_DIR:-}/buildroot-fs/full_users_table.txt
    sysusers=${TARGET_DIR:-}/usr/lib/sysusers.d/drimbox.conf
    if [ -z "${BUILD_DIR:-}" ] || [ -z "${TARGET_DIR:-}" ] || [ ! -f "$table" ]; then
        log "not a Buildroot build: users table not checked against sysusers.d"
        return 0
    fi
    [ -f "$sysusers" ] || die "/usr/lib/sysusers.d/drimbox.conf missing from the target"
    missing=$(awk '
        NR == FNR {
            if ($0 !~ /^[[:space:]]*#/ && NF >= 3) {
                if ($1 != "-") user[$1] = 1
                group[$3] = 1
                member[$1 "/" $3] = 1
                n = split($8, extra, ",")
                for (i = 1; i <= n; i++) { group[extra[i]] = 1; member[$1 "/" extra[i]] = 1 }
            }
            next
        }
        $1 == "u" && !($2 in user) { print "user " $2 }
        ($1 == "u" || $1 == "g") && !($2 in group) { print "group " $2 }
        $1 == "m" && !(($2 "/" $3) in member) { print $2 " in group " $3 }
    ' "$table" "$sysusers")
    [ -z "$missing" ] || die "sysusers.d/drimbox.conf declares what the users table" \
        "(package/drimbox/drimbox.mk, DRIMBOX_USERS) does not create:" "$missing"
    log "users table matches sysusers.d/drimbox.conf"
}

# check_root_block FILE HASH_START SALT ROOT_HASH: the block at HASH_START (in BLOCK units) of
# FILE must be the root block of the hash tree, i.e. sha256(salt || block) = root hash. That is
# what the kernel reads for the dm-mod.create= table; nothing else tests it before a boot.
check_root_block() {
    if ! command -v python3 >/dev/null 2>&1; then
        log "python3 not found: hash tree root block not checked"
        return 0
    fi
    python3 - "$1" "$2" "$3" "$4" "$BLOCK" <<'EOF' || die "block $2 of $1 is not the root of the hash tree"
import hashlib, sys
path, start, salt, root, block = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
with open(path, "rb") as f:
    f.seek(start * block)
    data = f.read(block)
sys.exit(0 if hashlib.sha256(bytes.fromhex(salt) + data).hexdigest() == root else 1)
EOF
}

need veritysetup genimage awk sha256sum
check_users

[ -f "$GENIMAGE_CFG" ] || die "$GENIMAGE_CFG: no such file"
[ -f "$KERNEL" ] || die "$KERNEL: no kernel (BR2_LINUX_KERNEL, bzImage with CONFIG_EFI_STUB)"
[ -f "$SYSTEMD_BOOT" ] || die "$SYSTEMD_BOOT: no systemd-boot (BR2_PACKAGE_SYSTEMD_BOOT)"
ROOT_UUID=$(partuuid root-a)
[ -n "$ROOT_UUID" ] || die "$GENIMAGE_CFG: no partition-uuid for partition root-a"

# --- 1. The erofs root filesystem ------------------------------------------------------------
if [ ! -f "$ROOTFS" ]; then
    # Not from Buildroot's TARGET_DIR: that tree lacks what Buildroot adds when it makes
    # rootfs.erofs itself, under fakeroot (file ownership, the users table, the presets).
    src=${DRIMBOX_ROOTFS_DIR:-}
    [ -n "$src" ] || die "$ROOTFS missing: set BR2_TARGET_ROOTFS_EROFS=y, or DRIMBOX_ROOTFS_DIR" \
        "to a complete root directory"
    [ -d "$src" ] || die "DRIMBOX_ROOTFS_DIR=$src: not a directory"
    need mkfs.erofs
    log "making $ROOTFS from $src"
    # Fixed timestamp and UUID: the same tree gives the same image, hence the same root hash.
    mkfs.erofs --quiet -zlz4hc -T "${SOURCE_DATE_EPOCH:-0}" -U 00000000-0000-0000-0000-000000000000 \
        "$ROOTFS" "$src"
fi

# --- 2. dm-verity: hash tree appended to the data, in the same partition -----------------------
rm -f "$VERITY" "$VERITY.tmp"
cp "$ROOTFS" "$VERITY.tmp"
size=$(wc -c <"$VERITY.tmp")
if [ $((size % BLOCK)) -ne 0 ]; then
    size=$(((size + BLOCK - 1) / BLOCK * BLOCK))
    truncate -s "$size" "$VERITY.tmp"
fi
data_blocks=$((size / BLOCK))
# The salt is public; deriving it (and the superblock UUID) from the data keeps the output
# reproducible.
salt=$(sha256sum "$ROOTFS" | cut -d' ' -f1)
vuuid=$(printf '%s' "$salt" | sed 's/^\(.\{8\}\)\(.\{4\}\)\(.\{4\}\)\(.\{4\}\)\(.\{12\}\).*/\1-\2-\3-\4-\5/')
veritysetup format \
    --hash=sha256 \
    --data-block-size="$BLOCK" --hash-block-size="$BLOCK" \
    --data-blocks="$data_blocks" --hash-offset="$size" \
    --salt="$salt" --uuid="$vuuid" \
    "$VERITY.tmp" "$VERITY.tmp" >"$IMAGES/root.verity.format.txt"
root_hash=$(awk -F: '/^Root hash:/ { gsub(/[[:space:]]/, "", $2); print $2 }' \
    "$IMAGES/root.verity.format.txt")
[ -n "$root_hash" ] || die "no root hash in the output of veritysetup format"
veritysetup verify --data-blocks="$data_blocks" --hash-offset="$size" \
    "$VERITY.tmp" "$VERITY.tmp" "$root_hash"
# veritysetup writes a one-block superblock at the hash offset; the tree starts after it.
hash_start=$((data_blocks + 1))
check_root_block "$VERITY.tmp" "$hash_start" "$salt" "$root_hash"
mv "$VERITY.tmp" "$VERITY"
printf '%s\n' "$root_hash" >"$IMAGES/roothash"
log "root hash $root_hash ($data_blocks data blocks)"

VERSION=${DRIMBOX_VERSION:-0.1.0}
EPOCH=${DRIMBOX_SECURITY_EPOCH:-0}
printf '%s\n' "$VERSION" | grep -Eq '^[0-9]+(\.[0-9]+)*$' ||
    die "DRIMBOX_VERSION=$VERSION: dot-separated numbers"
printf '%s\n' "$EPOCH" | grep -Eq '^[0-9]+$' || die "DRIMBOX_SECURITY_EPOCH=$EPOCH: a number"

# --- 3. ESP: systemd-boot, kernel, slot A entry ----------------------------------------------
# No initramfs: the kernel creates /dev/dm-0 from the table (dm-init), after waiting for the
# partition to appear (NVMe, USB probe asynchronously). The test image's initramfs does the same
# from the same arguments (scripts/image/dracut/90drimbox-dminit). The table: <start> <sectors> verity
# <version> <data dev> <hash dev> <data block> <hash block> <data blocks> <hash start> <alg>
# <root hash> <salt> <#options> <options>. restart_on_corruption: a block that does not match
# the tree resets the box at once (instead of an I/O error a half-running system would have to
# survive); on a slot on trial each reset spends a try, so a corrupted slot ends in a fallback.
table="0 $((size / 512)) verity 1 PARTUUID=$ROOT_UUID PARTUUID=$ROOT_UUID $BLOCK $BLOCK"
table="$table $data_blocks $hash_start sha256 $root_hash $salt 1 restart_on_corruption"
# panic=10: a kernel that cannot mount its root (or panics) resets after 10 s rather than hang.
cmdline="root=/dev/dm-0 ro rootfstype=erofs rootwait panic=10"
cmdline="$cmdline dm-mod.waitfor=PARTUUID=$ROOT_UUID dm-mod.create=\"drimbox-root,,,ro,$table\""
# Serial last: it is /dev/console (systemd's messages, the only getty). The partitions are named
# in fstab; systemd must not mount the ESP or guess a root from the partition types.
cmdline="$cmdline console=tty0 console=ttyS0,115200 systemd.gpt_auto=0"
if [ -n "${DRIMBOX_EXTRA_CMDLINE:-}" ]; then
    cmdline="$cmdline $DRIMBOX_EXTRA_CMDLINE"
fi

rm -rf "$ESP"
mkdir -p "$ESP/EFI/BOOT" "$ESP/EFI/drimbox" "$ESP/loader/entries"
cp "$SYSTEMD_BOOT" "$ESP/EFI/BOOT/BOOTX64.EFI"
cp "$KERNEL" "$ESP/EFI/drimbox/linux-a.efi"
initrd_line=
if [ -n "${DRIMBOX_INITRD:-}" ]; then
    [ -f "$DRIMBOX_INITRD" ] || die "DRIMBOX_INITRD=$DRIMBOX_INITRD: no such file"
    cp "$DRIMBOX_INITRD" "$ESP/EFI/drimbox/initrd-a.img"
    initrd_line="initrd /EFI/drimbox/initrd-a.img
"
fi
# editor no: nobody at the keyboard may change the kernel command line (init=/bin/sh, or a
# different root hash). timeout 0: no menu unless a key is held at boot. No default: systemd-boot
# boots the first entry in its order, which puts entries out of tries last and the newest version
# first; that is the A/B logic (src/ota/boot.rs).
cat >"$ESP/loader/loader.conf" <<'EOF'
timeout 0
editor no
auto-entries no
auto-firmware no
EOF
# The entry as src/ota/boot.rs (entry_body) writes and reads them: an update's installer finds
# the running version, epoch and options here.
printf 'title DRIMbox %s (slot a)\nversion %s\nsort-key drimbox\nlinux /EFI/drimbox/linux-a.efi\n%soptions %s drimbox.roothash=%s drimbox.slot=a drimbox.epoch=%s\n' \
    "$VERSION" "$VERSION" "$initrd_line" "$cmdline" "$root_hash" "$EPOCH" \
    >"$ESP/loader/entries/drimbox-a.conf"

cat >"$IMAGES/drimbox-image.txt" <<EOF
root_partuuid=$ROOT_UUID
root_hash=$root_hash
verity_salt=$salt
verity_data_blocks=$data_blocks
verity_hash_start_block=$hash_start
cmdline=$cmdline
EOF

# --- 4. The disk image ------------------------------------------------------------------------
# What genimage runs for the vfat and ext4 images.
need mkdosfs mcopy mmd mke2fs
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/root"
rm -f "$IMAGES/disk.img" "$IMAGES/disk.img.bmap"
genimage \
    --rootpath "$work/root" \
    --tmppath "$work/tmp" \
    --inputpath "$IMAGES" \
    --outputpath "$IMAGES" \
    --config "$GENIMAGE_CFG"

if command -v bmaptool >/dev/null 2>&1; then
    bmaptool create -o "$IMAGES/disk.img.bmap" "$IMAGES/disk.img"
else
    log "bmaptool not found: no disk.img.bmap (flash with dd)"
fi
log "wrote $IMAGES/disk.img"
