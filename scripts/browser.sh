#!/usr/bin/env bash
# Installs Debian's chromium for the browser tests (tests/browser) when it is missing; Playwright drives it through
# executable_path, since Playwright's own browser downloads are not available everywhere we test.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
