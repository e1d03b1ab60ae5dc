#!/usr/bin/env bash
# Makes headless Chromium and its WebDriver available for the browser tests
# (pytest -m browser: tests/browser_support.py); does nothing where both are installed.
#
#   scripts/install-browser.sh
#
# As root, and only when /usr/bin/chromium or /usr/bin/chromedriver is missing: installs
# Debian's chromium and chromium-driver with apt-get. As another user with them missing it
# says how to install them and exits 0: the browser tests then skip and say why (or fail
# under MCTQ_REQUIRE_BROWSER=1). Idempotent: safe to run again at any time.
#
# Nothing is downloaded but Debian's packages: selenium is always given the driver's path,
# so it never fetches a browser or a driver of its own.
set -euo pipefail

browser=/usr/bin/chromium
driver=/usr/bin/chromedriver

say() { echo "install-browser: $*" >&2; }

if [[ -x $browser && -x $driver ]]; then
  say "chromium and chromedriver are installed ($browser, $driver)"
  exit 0
fi

if [[ $(id -u) != 0 ]]; then
  say "chromium and chromedriver are missing; install them with"
  say "  sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium chromium-driver"
  say "(or run this script as root); until then the browser tests skip"
  exit 0
fi

say "installing chromium and chromium-driver"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null

for path in "$browser" "$driver"; do
  if [[ ! -x $path ]]; then
    say "$path is still missing after apt-get install"
    exit 1
  fi
done
say "installed: $("$browser" --version 2>/dev/null || echo chromium), $("$driver" --version 2>/dev/null | head -n 1 || echo chromedriver)"
