#!/usr/bin/env bash
# On a machine with network access: the offline install kit for the appliance, to carry on a USB stick.
#   firmware_config/install/build-kit.sh OUT [--jetson]
# OUT gets wheelhouse/ (the project's wheel and every dependency's), debs/ (the Debian packages in DEBS below, from
# this machine's apt), systemd/, firmware_config/ and README.md.
# --jetson: the dependencies for the Jetson (aarch64, CPython 3.10, JetPack 6) instead of this machine's own
# platform, with the `jetson` extra (cuda-python). TensorRT is not among them: JetPack provides it (the venv is made
# with --system-site-packages).
set -euo pipefail
out="${1:?usage: build-kit.sh OUT [--jetson]}"
here="$(cd "$(dirname "$0")/../.." && pwd)"
python="${PYTHON:-python3}"
mkdir -p "$out/wheelhouse"
"$python" -m pip wheel --no-deps --wheel-dir "$out/wheelhouse" "$here"
project_wheel="$(ls "$out"/wheelhouse/edge_clinic_ai-*.whl)"
if [ "${2:-}" = "--jetson" ]; then
    "$python" -m pip download --dest "$out/wheelhouse" --only-binary=:all: \
        --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
        --python-version 3.10 --implementation cp --abi cp310 "$project_wheel[jetson]"
else
    "$python" -m pip download --dest "$out/wheelhouse" --only-binary=:all: "$project_wheel"
fi
# Debian packages the appliance needs beside JetPack's own, with what they depend on; each is "Architecture: all",
# so this machine's apt serves the Jetson too. fonts-dejavu-core: the Unicode font of the PDF report.
DEBS="fonts-dejavu-core"
mkdir -p "$out/debs"
if command -v apt-get >/dev/null; then
    needs="$(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances \
        $DEBS 2>/dev/null | awk '$1 == "Depends:" && $2 !~ /^</ { print $2 }' || true)"
    (cd "$out/debs" && apt-get download $DEBS $needs) \
        || echo "warning: $DEBS not downloaded: the kit installs without them" >&2
else
    echo "warning: no apt-get here, $DEBS not in the kit: the report prints Latin-1 text only" \
        "where the appliance lacks them" >&2
fi
cp -r "$here/systemd" "$here/firmware_config" "$here/README.md" "$out/"
echo "kit written to $out: $(ls "$out/wheelhouse" | wc -l) wheels, $(ls "$out/debs" | wc -l) Debian packages"
