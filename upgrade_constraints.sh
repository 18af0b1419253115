#!/usr/bin/env bash
# Upgrade the pinned versions: install requirements.txt and requirements-dev.txt without constraints.txt into a
# fresh virtual environment (the newest releases their ranges admit), then write what was installed to
# constraints.txt. Run the tests (python -m pytest) before committing the new constraints.txt. PYTHON names the
# interpreter to resolve for (default python3): use the Python version your deployments run.
set -euo pipefail
root="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
grep -v '^-c ' "$root/requirements.txt" > "$work/requirements.txt"
grep -v '^-r ' "$root/requirements-dev.txt" > "$work/requirements-dev.txt"
"${PYTHON:-python3}" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --upgrade pip
"$work/venv/bin/pip" install -q -r "$work/requirements.txt" -r "$work/requirements-dev.txt"
{
  sed -n '1,3p' "$root/constraints.txt"
  "$work/venv/bin/pip" freeze --all --exclude pip --exclude setuptools --exclude wheel
} > "$work/constraints.txt"
if diff -u "$root/constraints.txt" "$work/constraints.txt"; then
  echo "constraints.txt: already the newest versions"
else
  mv "$work/constraints.txt" "$root/constraints.txt"
  echo "constraints.txt: updated (the diff above); run python -m pytest before committing it"
fi
