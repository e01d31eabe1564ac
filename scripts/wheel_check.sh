#!/usr/bin/env bash
# Build the wheel, install it (not editable) in a fresh venv, and migrate a temporary SQLite
# file from a directory outside the source tree: proves the migrations ship in the wheel, and
# that `migrate create` outside a project refuses instead of writing into site-packages.
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
shipped=$("$work/venv/bin/python" -c 'import within_db.migrate as m; print(m.migrations_dir())')
before=$(ls "$shipped")
if "$work/venv/bin/within-db" migrate create add_priority 2>"$work/create.err"; then
    echo "migrate create wrote a file outside any project" >&2
    exit 1
fi
grep -q "no project found" "$work/create.err"
[ "$(ls "$shipped")" = "$before" ]
"$work/venv/bin/within-db" --database-url "$url" migrate status >/dev/null  # still 0 pending
echo "wheel check passed"
