#!/usr/bin/env bash
# Creates .venv with Python 3.12 and installs jaxdepth with the exact tested versions
# (constraints.txt), plus the extras named (comma-separated; see pyproject.toml).
#   scripts/setup.sh          # the library, its CLI, the offline demo data and plots (extra "demo")
#   scripts/setup.sh test     # + pytest, xdist, hypothesis (extra "test", what CI installs)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-demo}"

find_python312() {
  # jax 0.12 / flax 0.12.12 need Python 3.12; `python3` may well be 3.11.
  # A pyenv shim answers for every version but only runs the selected ones, so
  # each candidate is asked to run rather than just looked up.
  local c
  for c in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 python3.12 \
           /usr/local/bin/python3.12 /usr/bin/python3.12; do
    if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
      echo "$c"; return 0
    fi
  done
  echo "setup: Python 3.12 not found (jax 0.12 needs 3.12 or newer, and constraints.txt pins the" \
       "versions tested on 3.12); install it, e.g. 'pyenv install 3.12'" >&2
  return 1
}

# A .venv is reused only when it is 3.12 with a working pip: a venv made without pip (an
# interrupted ensurepip, a python3.12 without its venv package) is made again.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null \
   || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  py="$(find_python312)"
  echo "setup: creating .venv with $py" >&2
  rm -rf .venv
  "$py" -m venv .venv
fi
# pip would compile the installed modules to bytecode one file after another (about a minute);
# compileall does the same on every core. Without bytecode on disk every Python process would
# compile its imports again wherever PYTHONDONTWRITEBYTECODE is set.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-compile -c constraints.txt -e ".[$extras]" 2>&1 \
  | sed '/is ignored/d'   # pipefail keeps pip's exit status
.venv/bin/python -m compileall -q -j 0 .venv/lib >/dev/null
.venv/bin/python -c 'import jaxdepth, jax, flax; print(f"setup: jaxdepth ready (jax {jax.__version__}, flax {flax.__version__})")'
