#!/usr/bin/env bash
# Prerequisites of the end-to-end tier, installed only when missing; never fails the build:
# without them the browser tests skip with their reason.
#   Debian's Chromium (never a browser downloaded by a test tool), Python Playwright (driver
#   only), and frontend 1.58.1 for the Nodes 2.0 run (--front-end-root).
set -u
python=${PYTHON:-python3}
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
      >/dev/null 2>&1 || echo "setup_e2e: could not install chromium"
  else
    echo "setup_e2e: chromium missing and apt-get unavailable"
  fi
fi
"$python" -c "import playwright" 2>/dev/null \
  || "$python" -m pip install -q --disable-pip-version-check playwright \
  || echo "setup_e2e: could not install playwright"
fe=${HC_FRONTEND_158:-$HOME/fe-1.58.1}
if [ ! -f "$fe/comfyui_frontend_package/static/index.html" ]; then
  "$python" -m pip install -q --disable-pip-version-check --no-deps --target "$fe" \
    comfyui-frontend-package==1.58.1 || echo "setup_e2e: could not fetch frontend 1.58.1"
fi
exit 0
