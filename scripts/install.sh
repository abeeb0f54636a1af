#!/usr/bin/env bash
# Set up dicomcr on a fresh Debian/Ubuntu machine: the DICOM peers from apt, the package in .venv.
#   bash scripts/install.sh          the product
#   bash scripts/install.sh test     the product and its test tools
set -euo pipefail
cd "$(dirname "$0")/.."

PEERS=(dcmtk orthanc libgdcm-tools dicom3tools libopenjp2-tools openjph-tools openssl)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for package in "${PEERS[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if ! python3 -m venv --help >/dev/null 2>&1; then missing+=(python3-venv); fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing with apt: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

python3 - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"dicomcr needs Python >= 3.11, this python3 is {sys.version.split()[0]}")
PY
[ -x .venv/bin/python ] || python3 -m venv .venv
extra=""
if [ "${1:-}" = "test" ]; then extra="[test]"; fi
echo "installing dicomcr${extra} into .venv (PyTorch included, this takes a minute)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extra}"
echo "ready: .venv/bin/dicomcr"
