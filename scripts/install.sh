#!/usr/bin/env bash
# Set up dicomcr on a fresh Debian/Ubuntu machine: the DICOM peers from apt, the package in .venv.
#   bash scripts/install.sh          the product
#   bash scripts/install.sh test     the product and its test tools
set -euo pipefail
cd "$(dirname "$0")/.."

# rabbitmq-server: the broker of the `queue: amqp://...` backend. The tests start their own on
# free loopback ports; the system service is not used and is left stopped and disabled.
# orthanc-dicomweb: Orthanc's DICOMweb plugin, the STOW-RS peer. chromium and chromium-driver:
# the browser the operator page is tested in (tests only).
PEERS=(dcmtk orthanc orthanc-dicomweb libgdcm-tools dicom3tools libopenjp2-tools openjph-tools
       openssl rabbitmq-server)
if [ "${1:-}" = "test" ]; then PEERS+=(chromium chromium-driver); fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for package in "${PEERS[@]}"; do
  installed "$package" || missing+=("$package")
done
if ! python3 -m venv --help >/dev/null 2>&1; then missing+=(python3-venv); fi

new_rabbitmq=false new_erlang=false
if [[ " ${missing[*]} " == *" rabbitmq-server "* ]]; then
  new_rabbitmq=true
  installed erlang-base || new_erlang=true
fi
policy=/usr/sbin/policy-rc.d
if $new_rabbitmq && [ ! -e "$policy" ]; then
  # Keep apt from starting the system broker (and its epmd) while it installs them: nothing
  # here uses them. A policy-rc.d already present (Docker's denies every start) is kept.
  printf '#!/bin/sh\ncase "$1" in rabbitmq-server*|epmd*) exit 101 ;; esac\nexit 0\n' \
    | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
  trap '$SUDO rm -f "$policy"' EXIT
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing with apt: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
if $new_rabbitmq; then
  # Installed just now for the tests, which start brokers of their own: none at boot.
  units=(rabbitmq-server.service)
  if $new_erlang; then units+=(epmd.socket epmd.service); fi
  if [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now "${units[@]}" >/dev/null 2>&1 || true
  else
    $SUDO service rabbitmq-server stop >/dev/null 2>&1 || true
    $SUDO update-rc.d rabbitmq-server disable >/dev/null 2>&1 || true
    # The broker's own epmd, on 4369; it refuses to stop while any Erlang node uses it.
    if $new_erlang; then epmd -kill >/dev/null 2>&1 || true; fi
  fi
  echo "rabbitmq-server installed; its system service is disabled (tests start their own)"
fi

python3 - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"dicomcr needs Python >= 3.11, this python3 is {sys.version.split()[0]}")
PY
[ -x .venv/bin/python ] || python3 -m venv .venv
extra=""
if [ "${1:-}" = "test" ]; then extra="[test,cluster]"; fi
echo "installing dicomcr${extra} into .venv (PyTorch included, this takes a minute)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extra}"
echo "ready: .venv/bin/dicomcr"
