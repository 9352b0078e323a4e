#!/usr/bin/env bash
# Installs what radserve needs when it is missing, on Debian/Ubuntu.
#   install-test-deps.sh          everything the test suite needs (below)
#   install-test-deps.sh --build  only what building radserve needs: cmake and a C++
#                                 compiler (charls-sys builds the bundled CharLS codec)
# For the tests:
#   dcmtk (storescu, echoscu, findscu, dcmdump, dcmconv, dcmcjpeg, dcmcrle, dcmcjpls, ...),
#   dicom3tools (dciodvfy), libgdcm-tools (gdcmconv), mesa-vulkan-drivers (lavapipe, the
#   software Vulkan driver the wgpu tests run on), cmake (charls-sys builds the bundled CharLS
#   JPEG-LS codec with it when radserve is compiled), and the Python packages pydicom and
#   highdicom (scripts/results/read_with_highdicom.py reads our SR and SEG back with it), and
#   jsonschema (scripts/fhir/validate.py checks our FHIR output against HL7's R4 schema), and
#   hl7apy (scripts/emr/oru_receiver.py parses our HL7 v2 ORU^R01 strictly with it).
# Sourced or run by scripts/test.sh; safe to run again (it installs only what is missing).
set -euo pipefail

missing_packages=()
need_command() { # command debian-package
    command -v "$1" >/dev/null 2>&1 || missing_packages+=("$2")
}
build_only=false
[ "${1:-}" = "--build" ] && build_only=true

need_command cmake cmake
need_command c++ g++
if ! $build_only; then
    need_command dcmdump dcmtk
    need_command dciodvfy dicom3tools
    need_command gdcmconv libgdcm-tools
    need_command python3 python3
    need_command pip3 python3-pip
    if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
        missing_packages+=(mesa-vulkan-drivers)
    fi
fi

if ((${#missing_packages[@]})); then
    echo "install-test-deps: installing ${missing_packages[*]}" >&2
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
            echo "install-test-deps: need root (or sudo) to apt-get install ${missing_packages[*]}" >&2
            exit 1
        fi
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing_packages[@]}" >/dev/null
fi

if ! $build_only && ! python3 -c "import pydicom" >/dev/null 2>&1; then
    echo "install-test-deps: installing pydicom" >&2
    python3 -m pip install --quiet --disable-pip-version-check "pydicom>=3,<4" \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "pydicom>=3,<4"
fi

if ! $build_only && ! python3 -c "import highdicom" >/dev/null 2>&1; then
    echo "install-test-deps: installing highdicom" >&2
    python3 -m pip install --quiet --disable-pip-version-check "highdicom>=0.23" \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "highdicom>=0.23"
fi

if ! $build_only && ! python3 -c "import jsonschema" >/dev/null 2>&1; then
    echo "install-test-deps: installing jsonschema" >&2
    python3 -m pip install --quiet --disable-pip-version-check "jsonschema>=4,<5" \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "jsonschema>=4,<5"
fi

# hl7apy: the independent HL7 v2 implementation that checks our ORU^R01 (scripts/emr/oru_receiver.py).
if ! $build_only && ! python3 -c "import hl7apy" >/dev/null 2>&1; then
    echo "install-test-deps: installing hl7apy" >&2
    python3 -m pip install --quiet --disable-pip-version-check "hl7apy>=1.3,<2" \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "hl7apy>=1.3,<2"
fi
