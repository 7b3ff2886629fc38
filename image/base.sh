#!/usr/bin/env bash
# image/base.sh ROOTFS — stage 1 of the appliance image: the Debian bookworm base root file
# system, with mmdebstrap, into the directory ROOTFS (which must not exist).
#
# It installs the packages of image/packages on top of Debian's Essential set (no Recommends),
# leaves out documentation, man pages, locales and the kernel modules of image/module-excludes,
# builds the initrd (initramfs-tools, zstd, with erofs for the root), and removes perl. The
# result depends only on this file, image/packages, image/module-excludes and the Debian
# archive, so build-image.sh caches it by their hash and reuses it while only mxnode, the
# units or the defaults change.
#
# It must use Debian's archive only (bookworm, bookworm-updates, bookworm-security) and never
# put anything of ours into the tree: that is stage 2 (build-image.sh).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rootfs=${1:?usage: base.sh ROOTFS}
[ ! -e "$rootfs" ] || { echo "base.sh: $rootfs exists" >&2; exit 1; }

readonly SUITE=bookworm
readonly MIRRORS=(
    "deb http://deb.debian.org/debian bookworm main"
    "deb http://deb.debian.org/debian bookworm-updates main"
    "deb http://deb.debian.org/debian-security bookworm-security main"
)

# Non-comment words of a list file.
list() { sed 's/#.*//' "$1" | tr -s ' \t' '\n' | sed '/^$/d'; }

packages=$(list "$here/packages" | paste -sd, -)

dpkg_options=(
    # No documentation, man pages, info pages or translations; keep the copyright files.
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
    --dpkgopt='path-exclude=/usr/share/bug/*'
)
# Kernel modules nobody loads on this appliance. The kernel package ships them under
# /lib/modules; leaving them out at unpack time means depmod and the initrd never see them.
while read -r glob; do
    dpkg_options+=(--dpkgopt="path-exclude=/lib/modules/*/kernel/$glob")
done < <(list "$here/module-excludes")

# Before the kernel is installed: initramfs-tools builds the initrd with every storage and
# network driver (MODULES=most, so one image boots VMs and servers alike), zstd-compressed,
# without looking for a hibernation image (there is no swap), and with erofs for the root.
# shellcheck disable=SC2016 # expanded by mmdebstrap's shell, with $1 = the root
essential_hook='
set -e
mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks"
printf "MODULES=most\nCOMPRESS=zstd\nRESUME=none\n" >"$1/etc/initramfs-tools/conf.d/mxnode.conf"
cat >"$1/etc/initramfs-tools/hooks/mxnode-erofs" <<"HOOK"
#!/bin/sh
# The root file system of the mxnode appliance is erofs.
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
manual_add_modules erofs
HOOK
chmod 0755 "$1/etc/initramfs-tools/hooks/mxnode-erofs"
'

# After everything is installed: perl goes. perl-base is Essential in Debian, and apt picks
# usrmerge (which needs perl) for init-system-helpers even though usr-is-merged is there, but
# nothing on the running appliance uses either: only package maintainer scripts did, and they
# never run on a read-only root. The package list stays in the image as its bill of materials.
perl_packages=(usrmerge libfile-find-rule-perl libnumber-compare-perl libtext-glob-perl perl
    perl-modules-5.36 libperl5.36 libgdbm-compat4 libgdbm6 perl-base)
# shellcheck disable=SC2016 # expanded by mmdebstrap's shell, with $1 = the root
customize_hook='
set -e
chroot "$1" dpkg --purge --force-remove-essential --force-depends '"${perl_packages[*]}"'
! chroot "$1" dpkg-query -W -f "\${Package}\n" | grep -q perl
mkdir -p "$1/usr/share/mxnode"
chroot "$1" dpkg-query -W -f "\${Package} \${Version}\n" >"$1/usr/share/mxnode/packages.txt"
'

mmdebstrap \
    --mode=root \
    --variant=essential \
    --format=directory \
    --include="$packages" \
    "${dpkg_options[@]}" \
    --essential-hook="$essential_hook" \
    --customize-hook="$customize_hook" \
    "$SUITE" "$rootfs" "${MIRRORS[@]}"
