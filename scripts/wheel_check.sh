#!/usr/bin/env bash
# Build the wheel, install it (not editable) in a fresh venv, and migrate a temporary SQLite
# file from a directory outside the source tree: proves the migrations ship in the wheel.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip wheel -q --no-deps -w "$work/dist" "$root"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$work"/dist/within_db-*.whl
cd "$work"
url="sqlite:///$work/wheel.db"
"$work/venv/bin/within-db" --database-url "$url" migrate up
"$work/venv/bin/within-db" --database-url "$url" migrate status
"$work/venv/bin/within-db" --database-url "$url" inspect tables --format csv >/dev/null
echo "wheel check passed"
