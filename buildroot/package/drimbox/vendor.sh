#!/bin/sh
# Vendored crates for the drimbox package (see drimbox.mk for why this exists).
#
#   vendor.sh pack    SRCDIR OUTDIR   make OUTDIR/drimbox-vendor-<lock>.tar.gz (cargo + the crate registry)
#   vendor.sh prepare SRCDIR DLDIR    ensure DLDIR has that tarball (pack if missing), then unpack
#                                     it as SRCDIR/VENDOR and point SRCDIR/.cargo/config.toml at it
#
# <lock> is the first 16 hex digits of the SHA-256 of SRCDIR/Cargo.lock, so a tarball only ever
# serves the lock file it was made from. "pack" needs nothing from Buildroot: a distributor runs it
# on a machine with network access to pre-seed the BR2_DL_DIR of an offline build machine.
# Environment: CARGO (default: cargo), CARGO_HOME (default: cargo's own).
set -eu

die() {
    printf 'drimbox vendor.sh: %s\n' "$*" >&2
    exit 1
}

usage() {
    die "usage: vendor.sh pack|prepare SRCDIR DIR"
}

[ "$#" -eq 3 ] || usage
mode=$1
case $mode in
pack | prepare) ;;
*) usage ;;
esac
[ -d "$2" ] || die "$2: no such directory"
src=$(cd "$2" && pwd)
dir=$3
cargo=${CARGO:-cargo}

[ -f "$src/Cargo.toml" ] || die "$src/Cargo.toml: no such file"
[ -f "$src/Cargo.lock" ] || die "$src/Cargo.lock: no such file (the build is --locked)"

lock=$(sha256sum "$src/Cargo.lock" | cut -c1-16)
tarball=$dir/drimbox-vendor-$lock.tar.gz

pack() {
    mkdir -p "$dir"
    work=$(mktemp -d "$dir/.vendor.XXXXXX")
    # A lock in CARGO_HOME, as Buildroot's cargo post-process takes: parallel packages share it.
    lockfile=${CARGO_HOME:-${HOME:-/tmp}/.cargo}/.br-lock
    mkdir -p "$(dirname "$lockfile")"
    # stdout is the [source] snippet for .cargo/config.toml: prepare writes its own.
    if ! flock "$lockfile" "$cargo" vendor --quiet --locked --versioned-dirs \
        --manifest-path "$src/Cargo.toml" "$work/VENDOR" >/dev/null; then
        rm -rf "$work"
        die "cargo vendor failed: it needs the crate registry (or every crate in CARGO_HOME). For an" \
            "offline build, put $(basename "$tarball") in $dir (buildroot/README.md, 'Offline build machine')."
    fi
    # Same bytes for the same crates: sorted names, fixed times and owners, no gzip timestamp.
    (cd "$work" && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - VENDOR) |
        gzip -n -9 >"$work/out.tar.gz"
    mv "$work/out.tar.gz" "$tarball"
    rm -rf "$work"
    printf 'drimbox vendor.sh: wrote %s\n' "$tarball"
}

prepare() {
    if [ -f "$tarball" ]; then
        printf 'drimbox vendor.sh: using %s\n' "$tarball"
    else
        printf 'drimbox vendor.sh: %s missing, vendoring with cargo\n' "$tarball"
        pack
    fi
    rm -rf "$src/VENDOR"
    tar -xzf "$tarball" -C "$src"
    [ -d "$src/VENDOR" ] || die "$tarball holds no VENDOR/ directory"

    # Relative paths in a cargo config are relative to the directory holding .cargo/.
    mkdir -p "$src/.cargo"
    config=$src/.cargo/config.toml
    if [ -f "$config" ] && grep -q 'vendored-sources' "$config"; then
        return 0
    fi
    cat >>"$config" <<'EOF'

# Added by buildroot/package/drimbox/vendor.sh: crates come from VENDOR/, never the network.
[source.crates-io]
replace-with = "vendored-sources"

[source.vendored-sources]
directory = "VENDOR"
EOF
}

case $mode in
pack) pack ;;
prepare) prepare ;;
esac
