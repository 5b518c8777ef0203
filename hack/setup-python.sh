#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and links it as .venv.
#
# The environment lives in the cache outside the repository, keyed by the Python version and a hash of
# pyproject.toml's dependency lists, so a fresh clone (as CI makes) reuses an environment whose dependencies are
# already installed; only the editable install of this checkout is redone, which takes seconds.
#
# The environment holds the dependencies and one editable install of the checkout that ran this script last, never a
# copy of the `kaizen` package: a copy in site-packages comes before the editable install's path entry and would
# shadow every checkout. So the dependencies are installed from pyproject.toml's lists, without the project.
# Usage: hack/setup-python.sh [EXTRAS]   (default: test,trainer,report,drift — the tests train tiny models with torch,
#                                        draw the report and embed inputs for drift)
#        hack/setup-python.sh trainer-s3 (the trainer's own environment, linked as .venv-trainer-s3: the trainer
#                                         contract's dependencies, the trainer and s3 extras and moto's S3 server;
#                                         botocore's python-dateutil < 3 cannot share an environment with kubernetes
#                                         37's >= 3. No kaizen install: its users put the checkout on PYTHONPATH, as
#                                         the trainer image does)
#        hack/setup-python.sh mlflow-server (MLflow's tracking server for the experiment-tracking test, linked as
#                                         .venv-mlflow-server: the mlflow-server extra alone; its graphene needs
#                                         python-dateutil < 3, as botocore does)
#        hack/setup-python.sh --check    (only check that Python is there and new enough)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd -P)
extras=${1:-test,trainer,report,drift}
cache=${KAIZEN_CACHE:-$HOME/.cache/kaizen}
python=${PYTHON:-python3}

fail() { echo "setup-python: $*" >&2; exit 1; }
command -v "$python" >/dev/null || fail "$python is missing: install Python >= 3.11 (or set PYTHON to one)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  fail "$("$python" -V 2>&1) is too old: install Python >= 3.11 (or set PYTHON to one)"
[ "$extras" != --check ] || exit 0

# pyproject.toml's dependency lists (the project's and those of the extras): "key" prints the environment's name,
# "requirements" the lists one requirement a line. The key is unchanged by edits to other parts of pyproject.toml.
pyproject() {
  "$python" - "$root/pyproject.toml" "$extras" "$1" <<'PY'
import hashlib, json, sys, tomllib
import re
pyproject = tomllib.load(open(sys.argv[1], "rb"))
project = pyproject["project"]
if sys.argv[2] == "trainer-s3":
    # Only the project dependencies the trainer contract needs ([tool.kaizen]), at the project's pins.
    contract = set(pyproject["tool"]["kaizen"]["trainer-contract"])
    deps = [[d for d in project["dependencies"] if re.split(r"[\[=<>!~; ]", d)[0] in contract]]
    deps += [project["optional-dependencies"][e] for e in ("trainer", "s3", "s3-test")]
elif sys.argv[2] == "mlflow-server":
    deps = [project["optional-dependencies"]["mlflow-server"]]
else:
    deps = [project["dependencies"]] + [project["optional-dependencies"][e] for e in sys.argv[2].split(",")]
if sys.argv[3] == "key":
    digest = hashlib.sha256(json.dumps(deps).encode()).hexdigest()[:12]
    print("py%d.%d-%s-%s" % (*sys.version_info[:2], digest, sys.argv[2].replace(",", "-")))
else:
    print("\n".join(requirement for group in deps for requirement in group))
PY
}
venv="$cache/venvs/$(pyproject key)"
mkdir -p "$cache/venvs"
# Checkouts share the environment: one set-up at a time, so none sees another's half-made environment.
exec 9>"$cache/venvs/.lock"
flock 9
# A venv cannot be moved (its scripts name its path), so completeness is marked by a file written last.
if [ ! -f "$venv/.complete" ]; then
  echo "setup-python: creating $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  # setuptools in the environment lets the editable install below skip pip's isolated build (and the network).
  "$venv/bin/pip" install --quiet --upgrade pip==26.3 setuptools==80.9.0
  pyproject requirements > "$venv/requirements.txt"
  "$venv/bin/pip" install --quiet --requirement "$venv/requirements.txt"
  touch "$venv/.complete"
fi
# The environments of their own hold no kaizen install: their users put the checkout on PYTHONPATH, if they need it.
if [ "$extras" = trainer-s3 ] || [ "$extras" = mlflow-server ]; then
  ln -sfn "$venv" "$root/.venv-$extras"
  echo "setup-python: $root/.venv-$extras -> $venv" >&2
  exit 0
fi
"$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e "$root"
# From another folder and without make's PYTHONPATH, as `.venv/bin/kaizen` runs: the package must be this checkout's.
imported() {
  (cd / && env -u PYTHONPATH "$venv/bin/python" -c 'import kaizen, os; print(os.path.realpath(kaizen.__file__))')
}
imported=$(imported)
if [[ $imported == "$(cd "$venv" && pwd -P)"/* ]]; then
  # A copy that an environment made by an earlier version of this script kept beside the editable install: no
  # installed distribution owns it any more (the editable install replaced the one that did), and it shadows every
  # checkout, so it goes.
  echo "setup-python: removing the copy of kaizen in ${imported%/__init__.py}, which shadowed $root" >&2
  rm -rf "${imported%/__init__.py}"
  imported=$(imported)
fi
[ "$imported" = "$root/operator/kaizen/__init__.py" ] ||
  fail "$venv imports kaizen from $imported, not from $root: remove $venv and run \`make setup\` again"
ln -sfn "$venv" "$root/.venv"
echo "setup-python: $root/.venv -> $venv (kaizen from $root/operator)" >&2
