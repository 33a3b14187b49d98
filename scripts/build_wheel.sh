#!/usr/bin/env bash
# Build the gimefive wheel into DIST_DIR from a clean copy of the working tree.
#
# Why a copy: setuptools builds in-tree under build/ and keeps modules from earlier builds
# there, so a wheel built in a used checkout can hold files the tree no longer has (or
# hide a file that setup.cfg forgot). The copy holds what git sees (tracked and untracked
# files, minus .gitignore'd ones such as venvs and results), as a fresh clone with the
# same edits would. Dependencies are not built (--no-deps); the build backend comes from
# the same package index that scripts/setup.sh installs from.
#
# Usage: bash scripts/build_wheel.sh DIST_DIR    (prints the wheel's path)
set -euo pipefail
cd "$(dirname "$0")/.."
DIST="${1:?usage: scripts/build_wheel.sh DIST_DIR}"
mkdir -p "$DIST"
DIST="$(cd "$DIST" && pwd)"
SRC="$(mktemp -d "${TMPDIR:-/tmp}/gimefive-wheel-src.XXXXXX")"
trap 'rm -rf "$SRC"' EXIT
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "build_wheel: error: $(pwd) is not a git checkout (the copy is what git sees)" >&2
  exit 1
fi
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf - | tar -xf - -C "$SRC"
rm -f "$DIST"/gimefive-*.whl
python -m pip wheel --no-deps -q -w "$DIST" "$SRC" >&2
ls "$DIST"/gimefive-*.whl
