#!/bin/sh
# Creates the device mapper device that dm-mod.create="name,uuid,minor,flags,table" describes,
# after waiting for the device named in dm-mod.waitfor= (dm-init's semantics for one device,
# the only form post-image.sh and `drimbox ota install` write). PARTUUID=x in the table is
# /dev/disk/by-partuuid/x here (the kernel resolves it itself).
set -eu
read -r cmdline </proc/cmdline
spec=$(printf '%s\n' "$cmdline" | sed -n 's/.*dm-mod\.create="\([^"]*\)".*/\1/p')
[ -n "$spec" ] || { echo "drimbox-dm-create: no dm-mod.create=\"...\" on the kernel command line" >&2; exit 1; }
waitfor=$(printf '%s\n' "$cmdline" | tr ' ' '\n' | sed -n 's/^dm-mod\.waitfor=PARTUUID=//p')
if [ -n "$waitfor" ]; then
    n=0
    while [ ! -e "/dev/disk/by-partuuid/$waitfor" ]; do
        n=$((n + 1))
        [ "$n" -le 3000 ] || { echo "drimbox-dm-create: PARTUUID=$waitfor did not appear" >&2; exit 1; }
        sleep 0.1
    done
fi
name=${spec%%,*}
rest=${spec#*,}   # uuid,minor,flags,table
rest=${rest#*,}   # minor,flags,table
rest=${rest#*,}   # flags,table
flags=${rest%%,*}
table=$(printf '%s\n' "${rest#*,}" | sed 's#PARTUUID=\([0-9a-fA-F-]*\)#/dev/disk/by-partuuid/\1#g')
ro=
[ "$flags" = ro ] && ro=--readonly
# shellcheck disable=SC2086 # $ro is empty or one word
dmsetup create "$name" $ro --table "$table"
echo "drimbox-dm-create: /dev/mapper/$name ($table)"
