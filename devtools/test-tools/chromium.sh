#!/usr/bin/env bash
# Installs headless Chromium and its WebDriver from Debian's chromium and chromium-driver packages, for the page's
# browser test (tests/integration/test_page.py drives /usr/bin/chromium through /usr/bin/chromedriver).
# Idempotent: does nothing when both are already there. Needs root (apt-get), as CI and the dev machines have.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "chromium.sh: chromium or chromedriver is missing and installing them needs root (apt-get)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing or stale on a fresh machine; refresh them only then.
if ! apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi

/usr/bin/chromium --version
