#!/usr/bin/env bash
# The appliance's power mode and clocks on a Jetson (JetPack 6). Run as root at boot by edge-app-power.service.
#   EDGE_APP_POWER_MODE   nvpmodel mode: on an Orin Nano 8 GB, 0 = 15 W (default), 1 = 7 W for a weak supply
#   EDGE_APP_MAX_CLOCKS   1 (default): jetson_clocks pins clocks at the mode's maximum (steady inference latency)
set -euo pipefail
mode="${EDGE_APP_POWER_MODE:-0}"
if ! command -v nvpmodel >/dev/null 2>&1; then
    echo "power.sh: nvpmodel not found: this is not a Jetson with JetPack 6" >&2
    exit 1
fi
nvpmodel -m "$mode"
if [ "${EDGE_APP_MAX_CLOCKS:-1}" = "1" ]; then
    jetson_clocks
fi
nvpmodel -q
