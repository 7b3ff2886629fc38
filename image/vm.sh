#!/usr/bin/env bash
# image/vm.sh IMAGE_DIR [--fresh] — boots the appliance image in qemu (TCG: no KVM needed) with
# UEFI (OVMF), a software TPM 2.0 (swtpm), virtio disk and network, and SMTP and HTTPS
# forwarded to 127.0.0.1 ports. The serial console is this terminal (Ctrl-A X quits qemu).
#
# The VM's disk is a qcow2 overlay on IMAGE_DIR/mxnode.qcow2, grown to MXNODE_VM_DISK_SIZE
# (default 8G) so first boot creates the data volume in the free space of the boot disk, as on
# a real box. The overlay, the UEFI variables and the TPM state live in IMAGE_DIR/../vm/ and
# persist between runs, like a device would; --fresh starts from the image again.
#
# Ports: MXNODE_VM_SMTP_PORT (default 10025) -> 25, MXNODE_VM_HTTPS_PORT (default 10443) -> 443,
# bound to 127.0.0.1 only.
set -euo pipefail

image_dir=${1:?usage: vm.sh IMAGE_DIR [--fresh]}
fresh=${2:-}
smtp_port=${MXNODE_VM_SMTP_PORT:-10025}
https_port=${MXNODE_VM_HTTPS_PORT:-10443}
disk_size=${MXNODE_VM_DISK_SIZE:-8G}
memory=${MXNODE_VM_MEMORY:-2048}
readonly OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
readonly OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd

image=$image_dir/mxnode.qcow2
[ -f "$image" ] || { echo "vm.sh: $image is missing: run ./build.sh image first" >&2; exit 1; }
vm_dir=$(cd "$image_dir/.." && pwd)/vm
if [ "$fresh" = --fresh ] || [ ! -f "$vm_dir/disk.qcow2" ] || [ "$image" -nt "$vm_dir/disk.qcow2" ]; then
    rm -rf "$vm_dir"
    mkdir -p "$vm_dir/tpm"
    qemu-img create -q -f qcow2 -F qcow2 -b "$(cd "$image_dir" && pwd)/mxnode.qcow2" "$vm_dir/disk.qcow2" "$disk_size"
    cp "$OVMF_VARS" "$vm_dir/OVMF_VARS.fd"
fi

swtpm socket --tpm2 --tpmstate dir="$vm_dir/tpm" --ctrl type=unixio,path="$vm_dir/tpm/swtpm-sock" \
    --terminate --daemon
cat >&2 <<EOF
==> vm: booting $image (TCG: the first boot takes a few minutes)
    SMTP   127.0.0.1:$smtp_port  -> guest port 25
    HTTPS  https://127.0.0.1:$https_port/  -> guest port 443
    serial console below; Ctrl-A X quits
EOF
exec qemu-system-x86_64 \
    -machine q35 -accel tcg -cpu max -smp 2 -m "$memory" \
    -drive if=pflash,format=raw,unit=0,readonly=on,file="$OVMF_CODE" \
    -drive if=pflash,format=raw,unit=1,file="$vm_dir/OVMF_VARS.fd" \
    -drive if=virtio,format=qcow2,file="$vm_dir/disk.qcow2" \
    -netdev user,id=net0,hostfwd=tcp:127.0.0.1:"$smtp_port"-:25,hostfwd=tcp:127.0.0.1:"$https_port"-:443 \
    -device virtio-net-pci,netdev=net0 \
    -chardev socket,id=chrtpm,path="$vm_dir/tpm/swtpm-sock" \
    -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-crb,tpmdev=tpm0 \
    -nographic
