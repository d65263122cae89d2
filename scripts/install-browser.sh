#!/usr/bin/env bash
# Debian's Chromium and its ChromeDriver, for the real-browser test of `starflow serve`
# (tests/serve/test_browser.py drives /usr/bin/chromium through /usr/bin/chromedriver with Selenium;
# no browser is downloaded by a test tool). Needs root (or sudo) and the Debian package mirror.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  echo "chromium and chromedriver already installed: $(/usr/bin/chromedriver --version)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-browser.sh: run as root (apt-get install chromium chromium-driver)" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q chromium chromium-driver
/usr/bin/chromedriver --version
