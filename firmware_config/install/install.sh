#!/usr/bin/env bash
# On the appliance, as root, with no network: install (or update) edge-app from a kit made by build-kit.sh.
#   KIT/firmware_config/install/install.sh            # from the kit on the USB stick
# EDGE_ROOT (default /) installs under another root instead (a test, an image being prepared): no user is made
# and systemd is not told. An existing /etc/edge-app/edge-app.toml is kept.
set -euo pipefail
kit="$(cd "$(dirname "$0")/../.." && pwd)"
root="${EDGE_ROOT:-/}"
python="${PYTHON:-python3}"
opt="$root/opt/edge-app"
mkdir -p "$opt" "$root/etc/edge-app/devices" "$root/etc/systemd/system" "$root/usr/lib/sysusers.d" \
    "$root/etc/udev/rules.d"
# The kit's Debian packages (debs/: fonts-dejavu-core, the report's font), those the system lacks; under another
# root, their files only (dpkg's own record of them is that image's business).
debs=()
for deb in "$kit"/debs/*.deb; do
    [ -e "$deb" ] || continue
    if [ "$root" != "/" ]; then
        dpkg-deb -x "$deb" "$root"
    elif ! dpkg-query -W -f='${Status}' "$(dpkg-deb -f "$deb" Package)" 2>/dev/null | grep -q "ok installed"; then
        debs+=("$deb")
    fi
done
[ "${#debs[@]}" -eq 0 ] || dpkg -i "${debs[@]}"
# JetPack's TensorRT (python3-libnvinfer) is a system package: the venv sees it (EDGE_SYSTEM_SITE=0: not).
site="--system-site-packages"
[ "${EDGE_SYSTEM_SITE:-1}" = "1" ] || site=""
[ -x "$opt/.venv/bin/python" ] || "$python" -m venv $site "$opt/.venv"
# On a Jetson kit (built with --jetson) the wheelhouse holds cuda-python: install the `jetson` extra with it.
project="edge-clinic-ai"
if ls "$kit"/wheelhouse/cuda_python-*.whl >/dev/null 2>&1; then project="edge-clinic-ai[jetson]"; fi
PIP_CONFIG_FILE=/dev/null "$opt/.venv/bin/pip" install --no-index --find-links "$kit/wheelhouse" --upgrade "$project"
cp -r "$kit/firmware_config" "$kit/README.md" "$opt/"
# Before the two units and their target, one edge-app.service ran everything: it goes (it would fight them).
if [ "$root" = "/" ] && [ -e /etc/systemd/system/edge-app.service ]; then
    systemctl disable --now edge-app.service || true
fi
rm -f "$root/etc/systemd/system/edge-app.service"
cp "$kit"/systemd/*.service "$kit"/systemd/*.target "$root/etc/systemd/system/"
cp "$kit/systemd/edge-app.sysusers.conf" "$root/usr/lib/sysusers.d/edge-app.conf"
cp "$kit/firmware_config/udev/99-edge-app.rules" "$root/etc/udev/rules.d/"
[ -e "$root/etc/edge-app/edge-app.toml" ] || cp "$kit/firmware_config/edge-app.toml" "$root/etc/edge-app/"
cp -n "$kit"/firmware_config/devices/*.toml "$root/etc/edge-app/devices/" 2>/dev/null || true
if [ "$root" = "/" ]; then
    systemd-sysusers
    udevadm control --reload
    systemctl daemon-reload
    systemctl enable edge-app.target edge-app-power.service edge-app-engine.service edge-app-web.service \
        edge-app-worker.service
    echo "installed. Next: edge-app tls init, edge-app user add NAME --role admin, edge-app check, then"
    echo "systemctl start edge-app.target (see README: Install on the appliance)"
else
    echo "installed under $root"
fi
