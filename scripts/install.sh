#!/usr/bin/env bash
# Install sdflow into ./.venv: the torch build that fits this machine first (CUDA where an NVIDIA GPU answers
# nvidia-smi, else the CPU build: a bare "torch" on Linux is a multi-GB CUDA build), then sdflow (editable) with
# the extras the README's commands need, at the versions CI ran (constraints.txt). Safe to re-run: a fitting torch
# is kept, not reinstalled.
#
#   SDFLOW_EXTRAS   extras to install (default "test": everything, what the test command needs; "" the core only;
#                   "ui", "cluster", "ui,cluster")
#   SDFLOW_VENV     where the venv goes (default .venv)
#   SDFLOW_CONSTRAINTS  the pins to install with (default constraints.txt; empty: the newest versions pyproject allows)
#   SDFLOW_TORCH_CPU_INDEX  PyTorch's CPU wheel index, or a mirror of it (default https://download.pytorch.org/whl/cpu)
#   SDFLOW_PIP      the pip command (default: the venv's python -m pip; tests/test_install_script.py records it)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${SDFLOW_VENV:-.venv}
EXTRAS=${SDFLOW_EXTRAS-test}
CONSTRAINTS=${SDFLOW_CONSTRAINTS-constraints.txt}
CPU_INDEX=${SDFLOW_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
TORCH=$(sed -n 's/^torch==//p' constraints.txt)  # the torch CI ran, whatever the constraints used
if [ -n "${SDFLOW_PIP:-}" ]; then read -ra PIP <<< "$SDFLOW_PIP"; else PIP=("$VENV/bin/python" -m pip); fi
pip() { "${PIP[@]}" --quiet --disable-pip-version-check "$@"; }
pinned=()
[ -n "$CONSTRAINTS" ] && pinned=(--constraint "$CONSTRAINTS")
pinned() { pip "$@" ${pinned[@]+"${pinned[@]}"}; }  # pip install with the constraints, if any

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  pip install --upgrade pip
fi

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then want=cuda; else want=cpu; fi
# "VERSION cuda|cpu" of the torch already in the venv, or nothing.
have=$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0], 'cuda' if torch.version.cuda else 'cpu')" 2>/dev/null || true)

if [ "$have" = "$TORCH $want" ] || { [ "$want" = cpu ] && [ "${have%% *}" = "$TORCH" ]; }; then
  echo "torch $TORCH: already installed (${have#* } build)"
elif [ "$want" = cuda ] || [ "$(uname -s)" = Darwin ]; then  # macOS: PyPI's torch is the CPU (MPS) build
  echo "torch $TORCH: installing the ${want/cuda/CUDA} build"
  [ -n "$have" ] && pip uninstall --yes torch
  pinned install "torch==$TORCH"
else
  # The CPU build is torch==VERSION+cpu: asked for by its build tag, so no index can answer with a CUDA build.
  # From PyTorch's CPU index, the configured index beside it for torch's dependencies; where that cannot be
  # reached (offline mirrors, firewalls), from the configured index alone (a mirror or find-links may hold it).
  if "$VENV/bin/python" -c "import urllib.request; urllib.request.urlopen('$CPU_INDEX/torch/', timeout=10)" 2>/dev/null; then
    echo "torch $TORCH: no NVIDIA GPU, installing the CPU build from $CPU_INDEX"
    index=$(pip config list 2>/dev/null | sed -n "s/^[^.]*\.index-url='\(.*\)'$/\1/p" | tail -n 1)
    pinned install --timeout 30 --retries 1 --index-url "$CPU_INDEX" --extra-index-url "${index:-https://pypi.org/simple}" \
      "torch==$TORCH+cpu"
  else
    echo "torch $TORCH: no NVIDIA GPU; $CPU_INDEX cannot be reached, looking for torch==$TORCH+cpu in the configured index"
    pinned install "torch==$TORCH+cpu" || {
      echo "install.sh: no CPU build of torch $TORCH here: $CPU_INDEX cannot be reached and the configured index has" \
           "no torch==$TORCH+cpu. Either reach that index (or a mirror: SDFLOW_TORCH_CPU_INDEX=URL), put the wheel" \
           "in a folder named by PIP_FIND_LINKS, or install a torch $TORCH into $VENV yourself" \
           "($VENV/bin/python -m pip install torch==$TORCH ...): install.sh keeps it." >&2
      exit 1
    }
  fi
fi
if [ "$want" = cuda ] && ! "$VENV/bin/python" -c "import torch, sys; sys.exit(not torch.version.cuda)" 2>/dev/null; then
  echo "install.sh: the configured index gave a torch $TORCH without CUDA (a mirror or find-links with the CPU" \
       "build?); for the GPU: $VENV/bin/python -m pip install torch==$TORCH --index-url" \
       "https://download.pytorch.org/whl/cuXYZ (XYZ: a CUDA version your driver supports, see pytorch.org)" >&2
fi

# setuptools boxes a warning on every editable install (folders named like the package could shadow
# it); sdflow's layout has none, so the box only alarms.
PYTHONWARNINGS="ignore:Editable installation" pinned install -e ".${EXTRAS:+[$EXTRAS]}"
echo "sdflow installed in $VENV ($("$VENV/bin/python" -c "import torch; print('torch', torch.__version__ + ',',
      'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU only')" 2>/dev/null || echo "no torch"))."
echo "Run it:   $VENV/bin/sdflow prompt=\"a small red circle on the left, blue background\" seed=0"
echo "Tests:    $VENV/bin/python -m pytest -q -n 2 --dist loadfile"
echo "Or first: source $VENV/bin/activate   (then plain 'sdflow ...', 'sdflow-info nodes')"
