#!/usr/bin/env bash
# Install everything provision and its tests need on a Debian 12 machine: the Debian packages
# (from the host's own apt sources), then a virtual environment `.venv/` in the checkout, made
# with Debian's /usr/bin/python3 (or $PYTHON), holding provision (editable) and its test extras
# (from pip's own configured index). Everything else runs from .venv: .venv/bin/provision,
# .venv/bin/python -m pytest. Safe to run again: it installs only what is missing, and a rerun
# with nothing missing takes well under a second. Any failure stops it with a non-zero exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
VENV=$ROOT/.venv

say() { echo "setup: $*" >&2; }
die() { say "error: $*"; exit 1; }

APT_PACKAGES=(
  python3 python3-venv
  qemu-system-x86 qemu-utils ovmf ipxe-qemu seabios
  linux-image-cloud-amd64 busybox-static runc runit kmod
  xorriso mtools dosfstools fdisk e2fsprogs syslinux syslinux-common isolinux
  grub-common grub-efi-amd64-bin grub-pc-bin systemd-boot-efi
  squashfs-tools erofs-utils cpio zstd xz-utils binutils fakeroot
  docker-registry skopeo umoci openssl dnsmasq apache2-utils gpgv debian-archive-keyring openssh-client
  ipxe ipmitool nginx-light wrk util-linux curl etcd-server
)
# Node.js and npm (for Azurite) from Debian only when the machine has none: a Node.js installed
# some other way (with its own npm) conflicts with Debian's npm package.
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(nodejs npm)

# One dpkg-query for all packages; a package dpkg has never heard of prints nothing.
declare -A installed=()
while read -r pkg state; do
  if [ "$state" = "install ok installed" ]; then installed[$pkg]=1; fi
done < <(dpkg-query -W -f='${Package} ${Status}\n' "${APT_PACKAGES[@]}" 2>/dev/null || true)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  [ -n "${installed[$pkg]:-}" ] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq || die "apt-get update failed (its error is above)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install failed (its error is above)"
fi

# The interpreter the venv must run: Debian's unless $PYTHON names another one.
PYTHON=${PYTHON:-/usr/bin/python3}
command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON is not an executable (apt-get install python3)"
BASE_PY='import os, sys; print(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))'
want=$("$PYTHON" -c "$BASE_PY") || die "$PYTHON does not run"

venv_is_current() {  # .venv exists, lives at $VENV (not copied or moved) and runs $want
  local got
  [ -x "$VENV/bin/python" ] || return 1
  got=$("$VENV/bin/python" -c "$BASE_PY"'; print(os.path.realpath(sys.prefix))' 2>/dev/null) || return 1
  [ "$got" = "$want"$'\n'"$VENV" ]
}

if ! venv_is_current; then
  [ -e "$VENV" ] && say "replacing .venv (it does not run $want from this checkout)"
  say "creating .venv with $want"
  rm -rf "$VENV"
  if ! "$PYTHON" -m venv "$VENV"; then
    rm -rf "$VENV"
    die "$PYTHON -m venv failed (on Debian: apt-get install python3-venv)"
  fi
fi

# Is provision installed in .venv from this checkout, with every requirement of its test extra?
# Run from / without PYTHONPATH, so neither the checkout nor a PYTHONPATH can stand in for it.
install_problem() {
  (cd / && env -u PYTHONPATH "$VENV/bin/python" - "$ROOT" <<'EOF'
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

root = Path(sys.argv[1])
try:
    import provision
except ImportError as error:
    sys.exit(f"provision is not importable from .venv: {error}")
where = Path(provision.__file__).resolve()
if not where.is_relative_to(root):
    sys.exit(f".venv imports provision from {where.parent}, not from {root}")
absent = []
for requirement in metadata.requires("provision") or []:
    spec, _, marker = requirement.partition(";")
    if "extra" in marker and not re.search(r"""extra\s*==\s*["']test["']""", marker):
        continue
    name = re.match(r"[A-Za-z0-9._-]+", spec.strip())
    assert name is not None, requirement
    try:
        metadata.version(name.group(0))
    except metadata.PackageNotFoundError:
        absent.append(name.group(0))
if absent:
    sys.exit(".venv lacks " + ", ".join(absent))
if not (Path(sys.prefix) / "bin" / "provision").is_file():
    sys.exit(".venv has no bin/provision")
EOF
  ) 2>&1
}

# The stamp: pyproject.toml as last installed. A changed pyproject means install again.
STAMP=$VENV/.provision-installed
stamp=$(sha256sum pyproject.toml)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$stamp" ] || ! install_problem >/dev/null; then
  rm -f "$STAMP"
  say "installing provision (editable) and its test tools into .venv (pip)"
  # pip's own exit status decides (pipefail); only its notes about configured index locations
  # that do not exist are left out of the output.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[test]" 2>&1 \
    | { grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory" >&2 || true; } \
    || die "pip install into .venv failed (its error is above)"
  problem=$(install_problem) || die "after pip install: $problem"
  echo "$stamp" >"$STAMP"
fi
# checkov (the terraform module checks) pins its own boto3 and packaging, which fight
# provision's: it gets a virtual environment of its own, and .venv/bin/checkov points at it.
CHECKOV_VENV=$VENV/tools/checkov
CHECKOV_VERSION="checkov>=3.2,<4"
if [ "$(cat "$CHECKOV_VENV/.installed" 2>/dev/null)" != "$CHECKOV_VERSION" ] || ! "$VENV/bin/checkov" --version >/dev/null 2>&1; then
  say "installing checkov into its own environment ($CHECKOV_VENV)"
  rm -rf "$CHECKOV_VENV"
  "$PYTHON" -m venv "$CHECKOV_VENV" || die "$PYTHON -m venv failed for checkov"
  "$CHECKOV_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$CHECKOV_VERSION" 2>&1 \
    | { grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory" >&2 || true; } \
    || die "pip install checkov failed (its error is above)"
  ln -sf "$CHECKOV_VENV/bin/checkov" "$VENV/bin/checkov"
  "$VENV/bin/checkov" --version >/dev/null || die "checkov does not run"
  echo "$CHECKOV_VERSION" >"$CHECKOV_VENV/.installed"
fi

# Azurite, the Azure storage emulator the Azure tests run (npm; 3.35.0 is the last release that
# runs on Debian 12's Node 20), into the cache the tests look in (tests/azure_cloud/azurite_testkit.py).
AZURITE_DIR=${PROVISION_AZURITE_DIR:-/var/tmp/provision-azurite}
if [ ! -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ]; then
  say "installing azurite 3.35.0 into $AZURITE_DIR (npm)"
  mkdir -p "$AZURITE_DIR"
  npm install --no-audit --no-fund --silent --prefix "$AZURITE_DIR" azurite@3.35.0 >&2 \
    || die "npm install azurite failed (its error is above)"
fi
say "ready: .venv ($want); put provision on PATH with: . .venv/bin/activate"
