#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and links it as .venv.
#
# The environment lives in the cache outside the repository, keyed by the Python version and a hash of
# pyproject.toml, so a fresh clone (as CI makes) reuses an environment whose dependencies are already installed;
# only the editable install of this checkout is redone, which takes seconds.
# Usage: hack/setup-python.sh [EXTRAS]   (default: test,trainer — the tests train tiny models with torch)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
extras=${1:-test,trainer}
cache=${KAIZEN_CACHE:-$HOME/.cache/kaizen}
python=${PYTHON:-python3}
# Keyed by the dependency lists only, so editing other parts of pyproject.toml keeps the environment.
key=$("$python" - "$root/pyproject.toml" "$extras" <<'PY'
import hashlib, json, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
deps = [project["dependencies"]] + [project["optional-dependencies"][e] for e in sys.argv[2].split(",")]
digest = hashlib.sha256(json.dumps(deps).encode()).hexdigest()[:12]
print("py%d.%d-%s-%s" % (*sys.version_info[:2], digest, sys.argv[2].replace(",", "-")))
PY
)
venv="$cache/venvs/$key"
# A venv cannot be moved (its scripts name its path), so completeness is marked by a file written last.
if [ ! -f "$venv/.complete" ]; then
  echo "setup-python: creating $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  # setuptools in the environment lets the editable install below skip pip's isolated build (and the network).
  "$venv/bin/pip" install --quiet --upgrade pip==26.3 setuptools==80.9.0
  "$venv/bin/pip" install --quiet "$root[$extras]"
  touch "$venv/.complete"
fi
"$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e "$root"
ln -sfn "$venv" "$root/.venv"
echo "setup-python: $root/.venv -> $venv" >&2
