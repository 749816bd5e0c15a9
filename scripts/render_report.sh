#!/usr/bin/env bash
# Screenshot a report card with headless Chromium (Debian: apt-get install -y chromium).
#   scripts/render_report.sh runs/shakespeare/report.html [out.png] [WIDTH,HEIGHT]
set -euo pipefail
html=${1:?usage: render_report.sh REPORT.html [OUT.png] [WIDTH,HEIGHT]}
out=${2:-${html%.html}.png}
size=${3:-1280,2400}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "render_report.sh: no chromium found (Debian: apt-get install -y chromium)" >&2
  exit 1
fi
rm -f "$out"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
  --user-data-dir="$profile" --window-size="$size" \
  --screenshot="$(realpath -m "$out")" "file://$(realpath "$html")" >/dev/null 2>&1
if [ ! -s "$out" ]; then
  echo "render_report.sh: $browser wrote no screenshot" >&2
  exit 1
fi
echo "wrote $out"
