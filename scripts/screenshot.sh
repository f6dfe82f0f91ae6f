#!/usr/bin/env bash
# Runs the console window (`rac`, the embedded lab) under Xvfb and saves a PNG of the screen.
# Usage: scripts/screenshot.sh [OUTPUT.png] [extra xdotool key presses, e.g. "ctrl+f"]
# Needs: Xvfb, ImageMagick's `import`, xdotool (apt-get install -y xvfb imagemagick xdotool).
set -euo pipefail

out="${1:-docs/screenshot.png}"
shift || true
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/release/rac"
display=":99"
wait_secs="${SCREENSHOT_WAIT_SECS:-8}"

[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
mkdir -p "$(dirname "$out")"

Xvfb "$display" -screen 0 1600x1000x24 -nolisten tcp &
xvfb=$!
app=""
cleanup() {
    [ -n "$app" ] && kill "$app" 2>/dev/null || true
    kill "$xvfb" 2>/dev/null || true
}
trap cleanup EXIT

# Wait for the X server.
for _ in $(seq 50); do
    DISPLAY="$display" xdotool getdisplaygeometry >/dev/null 2>&1 && break
    sleep 0.1
done

# A settings dir of its own, so the picture does not depend on this machine's profile.
export XDG_CONFIG_HOME="$(mktemp -d)"
DISPLAY="$display" WAYLAND_DISPLAY= "$bin" &
app=$!

# Wait for the window, then give the lab time to start and the list to fill.
for _ in $(seq 100); do
    DISPLAY="$display" xdotool search --name "Remote Access Console" >/dev/null 2>&1 && break
    sleep 0.1
done
window="$(DISPLAY="$display" xdotool search --name "Remote Access Console" | head -1 || true)"
if [ -n "$window" ]; then
    DISPLAY="$display" xdotool windowmove "$window" 0 0 windowsize "$window" 1600 1000 || true
fi
sleep "$wait_secs"
# No window manager runs under Xvfb: give the window the keyboard focus by hand.
if [ -n "$window" ] && [ "$#" -gt 0 ]; then
    DISPLAY="$display" xdotool windowfocus "$window" || true
    sleep 0.5
fi
for keys in "$@"; do
    # shellcheck disable=SC2086 # several key names in one argument, on purpose
    DISPLAY="$display" xdotool key --delay 100 $keys
    sleep 2
done

DISPLAY="$display" import -window root "$out"
echo "saved $out"
