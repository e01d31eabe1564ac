#!/usr/bin/env bash
# Mutation testing on SQLite and PostgreSQL (docs/mutation.md): scripts/mutation.sh [MODULE ...]
# [--backends sqlite,postgres] [--sample N] [--seed S] [--budget MIN] [--diffs]. Needs the
# mutation extra: pip install -e '.[dev,mutation]'.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/mutation.py "$@"
