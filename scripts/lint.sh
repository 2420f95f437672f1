#!/usr/bin/env bash
# Lint the shipping files: Dockerfile (hadolint), GitHub workflows (actionlint, with shellcheck
# on their `run:` steps) and scripts/*.sh (shellcheck).
#
# The linters come from PyPI as binary wheels pinned by hash in scripts/lint-requirements.txt and
# are installed once into a virtualenv under .cache/lint (ignored by git); later runs reuse it
# until the requirements file changes. Override the location with LINT_CACHE_DIR.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${LINT_CACHE_DIR:-$repo/.cache/lint}"
reqs="$repo/scripts/lint-requirements.txt"
venv="$cache/venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$reqs" | cut -d' ' -f1)"

if [ ! -x "$venv/bin/hadolint" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "lint: installing pinned linters into $venv" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --only-binary=:all: --require-hashes -r "$reqs"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"

cd "$repo"
status=0
echo "== hadolint Dockerfile Dockerfile.bake ($(hadolint --version | head -1))"
hadolint --no-color --failure-threshold style Dockerfile Dockerfile.bake || status=1

echo "== actionlint .github/workflows ($(actionlint --version | head -1))"
actionlint -no-color .github/workflows/*.yml || status=1

echo "== shellcheck scripts/*.sh"
shellcheck --severity=style scripts/*.sh || status=1

exit "$status"
