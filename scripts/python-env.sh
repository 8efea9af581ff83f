# Sourced by scripts/python-tests.sh and bench/python_bulk.sh: makes (or reuses)
# the cached venv with clients/python/requirements-test.txt, then builds the
# kindex wheel from this checkout and installs it there. Sets $vpy (the venv's
# python) and $kindex_work (a temp dir, removed by the caller's EXIT trap).
#
# The venv lives in ~/.cache/kindex/venv-python-<hash>, the hash covering the
# requirements file and the Python version: a change of either makes a new one.
kindex_python_env() {
  local root py req hash cache venv
  root=$(pwd)
  py=${PYTHON:-python3}
  "$py" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
    || { echo "python-env: need Python >= 3.10 ($py)" >&2; return 1; }
  req=clients/python/requirements-test.txt
  hash=$( { cat "$req"; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-12)
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/kindex"
  venv="$cache/venv-python-$hash"
  if [ ! -f "$venv/.complete" ]; then
    echo "python-env: creating $venv"
    # No .complete marker: absent or half-made (an interrupted install); start over.
    rm -rf "$venv"
    mkdir -p "$cache"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$req"
    touch "$venv/.complete"
  else
    echo "python-env: reusing $venv"
  fi
  vpy="$venv/bin/python"
  # Build from a copy: setuptools leaves build/ and *.egg-info next to its input.
  kindex_work=$(mktemp -d)
  cp -r clients/python "$kindex_work/src"
  rm -rf "$kindex_work/src/build" "$kindex_work/src/src/"*.egg-info
  KINDEX_PROTO_DIR="$root/proto/proto" "$vpy" -m pip wheel --quiet --no-build-isolation --no-deps \
    --disable-pip-version-check -w "$kindex_work/dist" "$kindex_work/src"
  "$vpy" -m pip install --quiet --force-reinstall --no-deps --disable-pip-version-check \
    "$kindex_work/dist"/kindex-*.whl
  echo "python-env: installed $(basename "$kindex_work"/dist/kindex-*.whl) into $venv"
}
