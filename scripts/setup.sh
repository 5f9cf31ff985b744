#!/usr/bin/env bash
# Install everything provision and its tests need on a Debian 12 machine: the Debian packages
# (from the host's own apt sources), then provision itself with its test extras (from pip's own
# configured index). Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  qemu-system-x86 qemu-utils ovmf ipxe-qemu seabios
  linux-image-cloud-amd64 busybox-static runc runit kmod
  xorriso mtools dosfstools fdisk e2fsprogs syslinux syslinux-common isolinux
  grub-common grub-efi-amd64-bin grub-pc-bin systemd-boot-efi
  squashfs-tools erofs-utils cpio zstd xz-utils binutils fakeroot
  docker-registry skopeo umoci dnsmasq apache2-utils gpgv debian-archive-keyring openssh-client
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
echo "setup: installing provision and its test tools (pip)" >&2
"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v -e "^WARNING: Location" -e "^WARNING: Running pip as" >&2 || true
"$PYTHON" -c 'import provision' # fail here, not later, if the install did not work
