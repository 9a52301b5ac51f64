#!/usr/bin/env bash
# Installs promtool (the Prometheus rule checker and rule unit-test runner) from Debian's prometheus package.
# Idempotent: does nothing when promtool is already on PATH. Needs root (apt-get), as CI and the dev machines have.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "promtool.sh: promtool is missing and installing it needs root (apt-get)" >&2
    exit 1
fi

# The package's postinst starts the Prometheus server through invoke-rc.d when nothing forbids it; only the
# checker is wanted here, so a policy-rc.d that denies service starts is put in place for the install
# (unless the machine already has one, as container images do) and removed after.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing or stale on a fresh machine; refresh them only then.
if ! apt-get install -y -qq --no-install-recommends prometheus >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

promtool --version | head -n 1
