#!/usr/bin/env bash
# Creates the project's virtual environment with the pinned stack (see ../shared/ENVIRONMENT.md),
# installs Detectron2 0.6 from the pb1-detectron2 sdist without its C++ extension, then this project
# (editable). Called by `make install`, which stamps success so that later runs are instant.
set -euo pipefail
VENV=${1:-.venv}
HERE=$(cd "$(dirname "$0")/.." && pwd)
cd "$HERE"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# torch/torchvision first: the Detectron2 build needs torch importable (no build isolation).
"${PIP[@]}" install torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import torch, torchvision" || { echo "install: torch did not install" >&2; exit 1; }
# The project's pinned dependencies, read from pyproject.toml, plus the dev tools.
deps=$("$VENV/bin/python" - <<'PY'
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(p["dependencies"] + p["optional-dependencies"]["dev"]))
PY
)
mapfile -t DEPS <<<"$deps"
"${PIP[@]}" install "${DEPS[@]}" 2>&1 | grep -v "^WARNING: Location" || true
if ! "$VENV/bin/python" -c "import detectron2" 2>/dev/null; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "${PIP[@]}" download --no-deps --no-binary :all: --no-build-isolation pb1-detectron2==0.6 -d "$work" \
    2>&1 | grep -v "^WARNING: Location" || true
  tar -xzf "$work"/pb1-detectron2-0.6.tar.gz -C "$work"
  # The sdist ships no C++/CUDA sources: build it as pure Python (detection/d2compat.py covers _C).
  sed -i 's/ext_modules=get_extensions(),/ext_modules=[],/' "$work"/pb1-detectron2-0.6/setup.py
  "${PIP[@]}" install --no-deps --no-build-isolation "$work"/pb1-detectron2-0.6 2>&1 | grep -v "^WARNING: Location" || true
fi
"${PIP[@]}" install --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
# Let plain `import detectron2.modeling` work in this venv: the _C stand-in hook loads at start-up.
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "import detection.d2compat" > "$site/us3l_d2compat.pth"
"$VENV/bin/python" -c "import torch, torchvision, detectron2.modeling, detectron2.evaluation, pycocotools, submitit, us3l" \
  || { echo "install: the environment in $VENV is incomplete (see the pip output above)" >&2; exit 1; }
echo "install: $VENV ready (torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'))"
