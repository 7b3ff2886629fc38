#!/usr/bin/env bash
# image/build-image.sh --binary MXNODE --out DIR [--production] [--version V] [--overlay DIR]
#                      [--release-only]
# — the appliance disk image (DESIGN §8) and its signed release (DESIGN §9).
#
# Stage 1 (image/base.sh, cached by its inputs): the Debian bookworm base root file system.
# Stage 2 (here, cached by all inputs): mxnode, its units (systemd/), the baked-in defaults
# (firmware-config/) and the appliance files (image/rootfs/) go on top; the result becomes a
# read-only erofs root image; the ESP (FAT32, systemd-boot, kernel + initrd and a boot entry
# per slot) is assembled with mtools; the state partition with `mkfs.ext4 -d`; all of it is
# written into a GPT disk image laid out by image/layout.env with sfdisk and dd. Output in DIR:
#
#   mxnode.raw, mxnode.qcow2     the disk image (raw for dd onto a disk, qcow2 for hypervisors)
#   root.erofs, vmlinuz, initrd.img
#                                the slot artifacts an update writes (DESIGN §9)
#   SHA256SUMS, image.json       sizes, hashes, partition offsets, versions, development_keys
#   os-release                   the image's /usr/lib/os-release (IMAGE_VERSION, VARIANT_ID)
#   release/                     the signed release of the same artifacts: manifest.json,
#                                manifest.json.sig, root.erofs, vmlinuz, initrd.img (what an
#                                update channel serves; `mxnode release sign`)
#
# Options:
#   --production     refuse to run unless MXNODE_RELEASE_KEY and MXNODE_UPDATE_KEYS are both set
#                    to keys of your own, not the development key (image/keys.sh, issue 16)
#   --version V      the release version (IMAGE_VERSION in os-release, the boot entries, the
#                    manifest); default: the mxnode binary's version
#   --overlay DIR    copied over the root file system last. For building test releases (e.g. a
#                    release whose node cannot start, for the rollback test); never for products
#   --release-only   only the slot artifacts and the release (no ESP, state, raw or qcow2 disk):
#                    what an update needs, in a fraction of the time
#
# Nothing here needs loop devices, device-mapper or mounting: it runs in a container.
#
# Release keys: MXNODE_UPDATE_KEYS (default firmware-config/update-keys.txt, the development
# key) is installed as the image's trusted keys; MXNODE_RELEASE_KEY (default the development
# private key) signs the release. An image that trusts the development key is marked
# VARIANT="Development keys" VARIANT_ID=development in os-release (else VARIANT_ID=production)
# and "development_keys": true in image.json, and the build warns at its start and end.
#
# Environment: MXNODE_IMAGE_CACHE (default /var/tmp/mxnode-image-cache) holds both stages by
# input hash, so a rebuild with unchanged inputs only copies the result; MXNODE_IMAGE_REFRESH=1
# rebuilds both stages (e.g. to pick up Debian security updates). SOURCE_DATE_EPOCH fixes file
# times (default: the last commit's time).
#
# It must run as root (mmdebstrap's chroot, file ownership), never write outside the cache and
# DIR, and never put anything into the image that is not from Debian or from this repository.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

usage="usage: build-image.sh --binary MXNODE --out DIR [--production] [--version V] [--overlay DIR] [--release-only]"
# shellcheck source=keys.sh
. "$here/keys.sh"
binary=""
production=""
out=""
version=""
overlay=""
release_only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=${2:?$usage}; shift 2 ;;
        --out) out=${2:?$usage}; shift 2 ;;
        --version) version=${2:?$usage}; shift 2 ;;
        --overlay) overlay=${2:?$usage}; shift 2 ;;
        --release-only) release_only=1; shift ;;
        --production) production=1; shift ;;
        *) echo "$usage" >&2; exit 64 ;;
    esac
done
if [ -n "$production" ]; then
    check_production_keys build-image.sh
fi
[ -x "$binary" ] || { echo "build-image.sh: --binary must name the mxnode executable" >&2; exit 64; }
[ -n "$out" ] || { echo "build-image.sh: --out is required" >&2; exit 64; }
if [ -n "$overlay" ]; then
    [ -d "$overlay" ] || { echo "build-image.sh: --overlay must name a directory" >&2; exit 64; }
    overlay=$(cd "$overlay" && pwd)
fi
# Semantic versions only (the node compares them; systemd-boot sorts the entries by them).
semver='^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$'
if [ -n "$version" ] && ! [[ $version =~ $semver ]]; then
    echo "build-image.sh: --version must be a semantic version (1.2.3), got: $version" >&2
    exit 64
fi
update_keys=${MXNODE_UPDATE_KEYS:-$repo/firmware-config/update-keys.txt}
release_key=${MXNODE_RELEASE_KEY:-$repo/firmware-config/update-dev-key.pk8}
[ -f "$update_keys" ] || { echo "build-image.sh: MXNODE_UPDATE_KEYS: no file $update_keys" >&2; exit 64; }
[ -f "$release_key" ] || { echo "build-image.sh: MXNODE_RELEASE_KEY: no file $release_key" >&2; exit 64; }
[ "$(id -u)" -eq 0 ] || { echo "build-image.sh: must run as root (mmdebstrap chroot, file ownership)" >&2; exit 1; }
# Whether the image trusts the development key (issue 16): it is then marked, and said loudly.
if trusts_development_key "$update_keys"; then
    development_keys=true variant='Development keys' variant_id=development
    development_keys_warning
else
    development_keys=false variant='Production keys' variant_id=production
fi

cache=${MXNODE_IMAGE_CACHE:-/var/tmp/mxnode-image-cache}
# Cache entries kept of each stage; older ones are deleted after a build.
readonly KEEP_BASES=2
readonly KEEP_IMAGES=5

# shellcheck source=layout.env
. "$here/layout.env"

log() { printf '==> image [%4ss]: %s\n' "$SECONDS" "$*" >&2; }

sha256_of_files() { (cd "$repo" && find "$@" -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16; }
# A directory tree's names, types, modes, owners, link targets and contents, as one hash.
sha256_of_tree() {
    (cd "$1" && find . -printf '%p %y %m %U:%G %l\n' | sort && find . -type f -print0 | sort -z | xargs -0 -r sha256sum) |
        sha256sum | cut -c1-16
}

mkdir -p "$cache"
# A private copy: another build may replace the file in cargo's target dir while this runs.
snapshot=$(mktemp "$cache/mxnode.XXXXXX")
trap 'rm -f "$snapshot"' EXIT
install -m 0755 "$binary" "$snapshot"
binary=$snapshot

if [ -z "$version" ]; then
    version=$("$binary" --version | awk '{ print $2 }')
    [ -n "$version" ] || { echo "build-image.sh: cannot read the version of $binary" >&2; exit 1; }
fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)}

base_key=$(sha256_of_files image/base.sh image/packages image/module-excludes)
# Every input of stage 2: the version, the binary, the trusted keys, the overlay, the mode
# (a --release-only entry lacks the disk images), and the files of this repository.
image_key=$( {
    echo "$base_key $version ${release_only:+release-only}"
    sha256sum <"$binary"
    sha256sum <"$update_keys"
    if [ -n "$overlay" ]; then echo "overlay $(sha256_of_tree "$overlay")"; fi
    sha256_of_files image/build-image.sh image/keys.sh image/layout.env image/esp image/rootfs systemd firmware-config
} | sha256sum | cut -c1-16)

exec 9>"$cache/lock"
flock 9

# ---------------------------------------------------------------------------------------------
# Stage 1: the Debian base root file system.
base_dir=$cache/base-$base_key
if [ -n "${MXNODE_IMAGE_REFRESH:-}" ] || [ ! -d "$base_dir/rootfs" ]; then
    log "stage 1: Debian base root file system (mmdebstrap; a few minutes)"
    rm -rf "$base_dir" "$base_dir.tmp"
    mkdir -p "$base_dir.tmp"
    "$here/base.sh" "$base_dir.tmp/rootfs" >"$base_dir.tmp/mmdebstrap.log" 2>&1 || {
        tail -n 40 "$base_dir.tmp/mmdebstrap.log" >&2
        echo "build-image.sh: mmdebstrap failed (log: $base_dir.tmp/mmdebstrap.log)" >&2
        exit 1
    }
    mv "$base_dir.tmp" "$base_dir"
else
    log "stage 1: cached ($base_dir)"
fi
touch "$base_dir"

# ---------------------------------------------------------------------------------------------
# Stage 2: the appliance image.
image_dir=$cache/image-$image_key
if [ -n "${MXNODE_IMAGE_REFRESH:-}" ] || [ ! -f "$image_dir/SHA256SUMS" ]; then
    log "stage 2: image $version ($image_key)"
    rm -rf "$image_dir" "$image_dir.tmp"
    work=$image_dir.tmp
    mkdir -p "$work"
    trap 'rm -rf "$work" "$snapshot"' EXIT
    rootfs=$work/rootfs

    log "copying the base root file system"
    cp -a "$base_dir/rootfs" "$rootfs"
    kernel_version=$(ls "$rootfs/usr/lib/modules")
    [ "$(echo "$kernel_version" | wc -l)" = 1 ] || { echo "expected one kernel, got: $kernel_version" >&2; exit 1; }

    log "installing mxnode, units, defaults"
    # Debug info stripped (symbols stay, for readable panics).
    objcopy --strip-debug "$binary" "$rootfs/usr/bin/mxnode"
    chmod 0755 "$rootfs/usr/bin/mxnode"
    # Every shared library mxnode links must be in the image.
    missing=$(chroot "$rootfs" ldd /usr/bin/mxnode | grep 'not found' || true)
    [ -z "$missing" ] || { echo "mxnode needs libraries the image lacks (add their packages to image/packages):" >&2; echo "$missing" >&2; exit 1; }

    cp -a "$here/rootfs/." "$rootfs/"
    install -d "$rootfs/usr/lib/systemd/system" "$rootfs/usr/lib/systemd/network" \
        "$rootfs/usr/lib/sysusers.d" "$rootfs/usr/lib/tmpfiles.d"
    install -m 0644 "$repo"/systemd/*.service "$repo"/systemd/*.path "$rootfs/usr/lib/systemd/system/"
    install -m 0644 "$repo"/systemd/network/* "$rootfs/usr/lib/systemd/network/"
    install -m 0644 "$repo"/systemd/sysusers.d/* "$rootfs/usr/lib/sysusers.d/"
    install -m 0644 "$repo"/systemd/tmpfiles.d/* "$rootfs/usr/lib/tmpfiles.d/"
    install -D -m 0644 -t "$rootfs/usr/lib/systemd/system/systemd-networkd-wait-online.service.d" \
        "$repo"/systemd/systemd-networkd-wait-online.service.d/*

    install -D -m 0644 "$repo/firmware-config/mxnode.toml" "$rootfs/etc/mxnode/mxnode.toml"
    install -D -m 0644 "$repo/firmware-config/sysctl.conf" "$rootfs/etc/sysctl.d/90-mxnode.conf"
    install -D -m 0644 "$repo/firmware-config/journald.conf" "$rootfs/etc/systemd/journald.conf.d/90-mxnode.conf"
    install -D -m 0644 "$update_keys" "$rootfs/usr/share/mxnode/update-keys.txt"
    install -D -m 0644 "$repo/firmware-config/kernel-cmdline" "$rootfs/usr/share/mxnode/kernel-cmdline"
    install -D -m 0644 "$here/layout.env" "$rootfs/usr/share/mxnode/layout.env"

    chroot "$rootfs" systemd-sysusers
    [ "$(chroot "$rootfs" id -u mxnode):$(chroot "$rootfs" id -g mxnode)" = "$MXNODE_UID:$MXNODE_UID" ] || { echo "mxnode must have uid and gid $MXNODE_UID" >&2; exit 1; }
    chroot "$rootfs" systemctl enable --quiet \
        systemd-networkd.service systemd-resolved.service systemd-timesyncd.service \
        mxnode.service mxnode-data.service mxnode-tls.service mxnode-health.service \
        mxnode-banner.service mxnode-banner.path mxnode-status.service mxnode-network.service \
        mxnode-update.path mxnode-update-finish.service
    chroot "$rootfs" systemctl set-default --quiet multi-user.target
    # Jobs that make no sense on a read-only appliance without LVM or package database.
    chroot "$rootfs" systemctl mask --quiet e2scrub_all.timer e2scrub_reap.service \
        dpkg-db-backup.timer fstrim.timer

    # The read-only root: /var and /tmp are memory; state, data and the ESP are mounted.
    cat >"$rootfs/etc/fstab" <<FSTAB
# The mxnode appliance (image/layout.env). The root is the read-only erofs slot the boot entry
# names (root=PARTUUID=...). There is no swap anywhere.
tmpfs                  /var                   tmpfs  mode=0755,nosuid,nodev,size=25%        0 0
tmpfs                  /tmp                   tmpfs  mode=1777,nosuid,nodev,size=10%        0 0
PARTUUID=$STATE_UUID  /var/lib/mxnode-state  ext4   nosuid,nodev,noexec,noatime           0 2
PARTUUID=$ESP_UUID  /efi                   vfat   umask=0077,nosuid,nodev,noexec,noauto,x-systemd.automount,x-systemd.idle-timeout=60  0 0
# /var/lib/mxnode: the LUKS2 data volume, created, unlocked and mounted by mxnode-data.service.
FSTAB
    mkdir -p "$rootfs/efi" "$rootfs/var/lib/mxnode-state" "$rootfs/var/lib/mxnode"
    echo mxnode >"$rootfs/etc/hostname"
    # An empty machine-id on a read-only root: systemd uses a fresh one per boot in memory.
    : >"$rootfs/etc/machine-id"
    ln -sfn ../run/mxnode-console/issue "$rootfs/etc/issue"
    rm -f "$rootfs/etc/issue.net" "$rootfs/etc/motd"
    # os-release names the image and its version (read by the banner, the status line, updates).
    # VARIANT_ID says whether the image trusts the development release key (issue 16).
    sed -i '/^IMAGE_ID=/d; /^IMAGE_VERSION=/d; /^VARIANT=/d; /^VARIANT_ID=/d' "$rootfs/usr/lib/os-release"
    printf 'IMAGE_ID=mxnode\nIMAGE_VERSION=%s\nVARIANT="%s"\nVARIANT_ID=%s\n' "$version" "$variant" "$variant_id" \
        >>"$rootfs/usr/lib/os-release"
    # The kernel and initrd go to the ESP, not the root.
    cp "$rootfs/boot/vmlinuz-$kernel_version" "$work/vmlinuz"
    cp "$rootfs/boot/initrd.img-$kernel_version" "$work/initrd.img"
    # No package manager data: the root is replaced whole by updates; packages.txt lists
    # what is inside. (/var is a tmpfs at run time anyway.)
    rm -rf "${rootfs:?}/boot"/* "$rootfs/var/log"/* "$rootfs/var/cache"/* "$rootfs/tmp"/* \
        "$rootfs/etc/apt" "$rootfs/var/lib/apt"
    # Units with ConditionNeedsUpdate= (ldconfig, hwdb, sysusers) see an up-to-date /etc.
    touch "$rootfs/etc/.updated" "$rootfs/var/.updated"
    if [ -n "$overlay" ]; then
        log "overlay (test release): $overlay"
        cp -a "$overlay/." "$rootfs/"
    fi

    log "root file system: erofs (lz4hc)"
    mkfs.erofs --quiet -zlz4hc -T "$SOURCE_DATE_EPOCH" "$work/root.erofs" "$rootfs"
    root_bytes=$(stat -c %s "$work/root.erofs")
    [ "$root_bytes" -le $((SLOT_SIZE_MIB * 1024 * 1024)) ] || { echo "root image ($root_bytes bytes) does not fit a ${SLOT_SIZE_MIB} MiB slot" >&2; exit 1; }

    cp "$rootfs/usr/share/mxnode/packages.txt" "$work/packages.txt"
    cp "$rootfs/usr/lib/os-release" "$work/os-release"
    (cd "$work" && sha256sum root.erofs vmlinuz initrd.img >SHA256SUMS)
    sum() { awk -v f="$1" '$2 == f { print $1 }' "$work/SHA256SUMS"; }
    file_json() { printf '"%s": {"size": %s, "sha256": "%s"}' "$1" "$(stat -c %s "$work/$1")" "$(sum "$1")"; }
    root_fs_bytes=$(du -sb "$rootfs" | cut -f1)
    cmdline=$(sed 's/#.*//' "$repo/firmware-config/kernel-cmdline" | tr -s ' \t\n' ' ' | sed 's/^ //; s/ $//')
    # --release-only: the slot artifacts are all there is (no ESP, state or disk images).
    if [ -z "$release_only" ]; then
        log "ESP: systemd-boot, kernel $kernel_version, boot entries"
        esp=$work/esp.img
        truncate -s "${ESP_SIZE_MIB}M" "$esp"
        mkfs.vfat -F 32 -n ESP -i "${ESP_UUID:0:8}" "$esp" >/dev/null
        export MTOOLS_SKIP_CHECK=1
        mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/EFI/systemd ::/loader ::/loader/entries ::/mxnode ::/mxnode/a ::/mxnode/b
        efi=$rootfs/usr/lib/systemd/boot/efi/systemd-bootx64.efi
        mcopy -i "$esp" "$efi" ::/EFI/BOOT/BOOTX64.EFI
        mcopy -i "$esp" "$efi" ::/EFI/systemd/systemd-bootx64.efi
        mcopy -i "$esp" "$here/esp/loader.conf" ::/loader/loader.conf
        for slot in a b; do
            mcopy -i "$esp" "$work/vmlinuz" "::/mxnode/$slot/vmlinuz"
            mcopy -i "$esp" "$work/initrd.img" "::/mxnode/$slot/initrd.img"
            if [ "$slot" = a ]; then
                # Slot A boots first, with boot counting: systemd-bless-boot marks it good once
                # mxnode-health.service passed; three failed boots fall back to slot B.
                uuid=$ROOT_A_UUID entry=mxnode-a+3.conf entry_version=$version title="mxnode $version (slot a)"
            else
                # Slot B holds the same release as a fallback; its version sorts below A's
                # ("~" sorts before everything), so systemd-boot picks it only when A is bad.
                uuid=$ROOT_B_UUID entry=mxnode-b.conf entry_version="$version~factory" title="mxnode $version (slot b, factory copy)"
            fi
            cat >"$work/$entry" <<ENTRY
title      $title
version    $entry_version
sort-key   mxnode
linux      /mxnode/$slot/vmlinuz
initrd     /mxnode/$slot/initrd.img
options    root=PARTUUID=$uuid mxnode.slot=$slot $cmdline
ENTRY
            mcopy -i "$esp" "$work/$entry" "::/loader/entries/$entry"
        done

        log "state partition: ext4"
        state=$work/state
        install -d -m 0755 "$state"
        install -d -m 0755 -o root -g root "$state/config" "$state/network"
        install -d -m 0750 -o root -g "$MXNODE_UID" "$state/tls"
        install -d -m 0700 -o root -g root "$state/luks"
        install -d -m 0700 -o "$MXNODE_UID" -g "$MXNODE_UID" "$state/node"
        # The updater's own records (installed-version floor, history, status): written by root
        # (`mxnode update install|finish`), read by the node for the API.
        install -d -m 0755 -o root -g root "$state/update"
        truncate -s "${STATE_SIZE_MIB}M" "$work/state.img"
        mkfs.ext4 -q -L state -E root_owner=0:0 -d "$state" "$work/state.img"

        log "disk: GPT ($ESP_NAME, $ROOT_A_NAME, $ROOT_B_NAME, $STATE_NAME)"
        mib=$((1024 * 1024))
        esp_start=1
        root_a_start=$((esp_start + ESP_SIZE_MIB))
        root_b_start=$((root_a_start + SLOT_SIZE_MIB))
        state_start=$((root_b_start + SLOT_SIZE_MIB))
        disk_mib=$((state_start + STATE_SIZE_MIB + 1))
        disk=$work/mxnode.raw
        truncate -s "${disk_mib}M" "$disk"
        sfdisk --quiet --no-reread --no-tell-kernel "$disk" <<TABLE
label: gpt
label-id: $DISK_GUID
unit: sectors
start=$((esp_start * 2048)), size=$((ESP_SIZE_MIB * 2048)), type=$ESP_TYPE, uuid=$ESP_UUID, name=$ESP_NAME
start=$((root_a_start * 2048)), size=$((SLOT_SIZE_MIB * 2048)), type=$ROOT_TYPE, uuid=$ROOT_A_UUID, name=$ROOT_A_NAME
start=$((root_b_start * 2048)), size=$((SLOT_SIZE_MIB * 2048)), type=$ROOT_TYPE, uuid=$ROOT_B_UUID, name=$ROOT_B_NAME
start=$((state_start * 2048)), size=$((STATE_SIZE_MIB * 2048)), type=$STATE_TYPE, uuid=$STATE_UUID, name=$STATE_NAME
TABLE
        put() { dd if="$1" of="$disk" bs=1M seek="$2" conv=notrunc,sparse status=none; }
        put "$esp" "$esp_start"
        put "$work/root.erofs" "$root_a_start"
        put "$work/root.erofs" "$root_b_start"
        put "$work/state.img" "$state_start"

        log "qcow2 (compressed)"
        qemu-img convert -c -f raw -O qcow2 "$disk" "$work/mxnode.qcow2"

        (cd "$work" && sha256sum mxnode.raw mxnode.qcow2 root.erofs vmlinuz initrd.img >SHA256SUMS)
        part_json() { printf '{"number": %s, "name": "%s", "offset": %s, "size": %s, "uuid": "%s", "type": "%s"}' \
            "$1" "$2" "$(($3 * mib))" "$(($4 * mib))" "$5" "$6"; }
        cat >"$work/image.json" <<JSON
{
  "product": "mxnode",
  "version": "$version",
  "kernel": "$kernel_version",
  "debian": "bookworm",
  "kernel_cmdline": "$cmdline",
  "root_file_system_bytes": $root_fs_bytes,
  "variant_id": "$variant_id",
  "development_keys": $development_keys,
  "files": {
    $(file_json mxnode.raw),
    $(file_json mxnode.qcow2),
    $(file_json root.erofs),
    $(file_json vmlinuz),
    $(file_json initrd.img)
  },
  "partitions": [
    $(part_json 1 "$ESP_NAME" "$esp_start" "$ESP_SIZE_MIB" "$ESP_UUID" "$ESP_TYPE"),
    $(part_json 2 "$ROOT_A_NAME" "$root_a_start" "$SLOT_SIZE_MIB" "$ROOT_A_UUID" "$ROOT_TYPE"),
    $(part_json 3 "$ROOT_B_NAME" "$root_b_start" "$SLOT_SIZE_MIB" "$ROOT_B_UUID" "$ROOT_TYPE"),
    $(part_json 4 "$STATE_NAME" "$state_start" "$STATE_SIZE_MIB" "$STATE_UUID" "$STATE_TYPE")
  ]
}
JSON
    else
        cat >"$work/image.json" <<JSON
{
  "product": "mxnode",
  "version": "$version",
  "kernel": "$kernel_version",
  "debian": "bookworm",
  "kernel_cmdline": "$cmdline",
  "root_file_system_bytes": $root_fs_bytes,
  "variant_id": "$variant_id",
  "development_keys": $development_keys,
  "files": {
    $(file_json root.erofs),
    $(file_json vmlinuz),
    $(file_json initrd.img)
  }
}
JSON
    fi
    rm -rf "$rootfs" "$work/state" "$work/esp.img" "$work/state.img" "$work"/mxnode-*.conf
    trap 'rm -f "$snapshot"' EXIT
    mv "$work" "$image_dir"
else
    log "stage 2: cached ($image_dir)"
fi
touch "$image_dir"

# Older cache entries go (the newest KEEP_* of each stage stay).
prune() {
    local keep=$1 pattern=$2
    # shellcheck disable=SC2012,SC2086 # cache entry names are ours (hex keys); the glob is meant
    ls -1dt "$cache"/$pattern 2>/dev/null | sed '/\.tmp$/d' | tail -n +$((keep + 1)) | xargs -r rm -rf
}
prune "$KEEP_BASES" 'base-*'
prune "$KEEP_IMAGES" 'image-*'

mkdir -p "$out"
files=(root.erofs vmlinuz initrd.img SHA256SUMS image.json packages.txt os-release)
if [ -z "$release_only" ]; then
    files=(mxnode.raw mxnode.qcow2 "${files[@]}")
fi
for f in "${files[@]}"; do
    cp --sparse=always "$image_dir/$f" "$out/$f.tmp"
    mv "$out/$f.tmp" "$out/$f"
done

# The signed release of these artifacts (DESIGN §9), outside the cache: its manifest carries
# the signing time and an expiry.
log "release: signing $version with $(basename "$release_key")"
rm -rf "$out/release" "$out/release.tmp"
"$binary" release sign --key "$release_key" --version "$version" \
    --root "$image_dir/root.erofs" --kernel "$image_dir/vmlinuz" --initrd "$image_dir/initrd.img" \
    --out "$out/release.tmp" >&2
# The image must accept its own release: the signing key's id among the trusted keys'.
signed_by=$(sed -n 's/.*"key_id": *"\([0-9a-f]*\)".*/\1/p' "$out/release.tmp/manifest.json")
trusted_ids=$(listed_keys "$update_keys" | while read -r key; do
    printf '%s' "$key" | base64 -d 2>/dev/null | sha256sum | cut -c1-16
done || true)
if ! grep -Fxq -- "$signed_by" <<<"$trusted_ids"; then
    echo "build-image.sh: the release is signed with key $signed_by ($(basename "$release_key")), which the image does not trust (MXNODE_UPDATE_KEYS): it would refuse its own release" >&2
    if [ -n "$production" ]; then
        rm -rf "$out/release.tmp"
        exit 1
    fi
fi
mv "$out/release.tmp" "$out/release"
log "done: $out ($version, cache key $image_key)"
(cd "$out" && while read -r hash file; do
    printf '    %-14s %10s bytes  sha256 %s\n' "$file" "$(stat -c %s "$file")" "$hash"
done <SHA256SUMS) >&2
if [ "$development_keys" = true ]; then
    development_keys_warning
fi
