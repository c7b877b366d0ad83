#!/usr/bin/env bash
# Install sdflow into ./.venv: the torch build that fits this machine first (CUDA where an NVIDIA GPU
# answers nvidia-smi, else the CPU build, since a bare "torch" on Linux pulls a multi-GB CUDA build),
# then sdflow (editable) and its test tools. Safe to re-run: a fitting torch is kept, not reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH=2.13.0
CPU_INDEX=https://download.pytorch.org/whl/cpu
pip() { .venv/bin/python -m pip --quiet --disable-pip-version-check "$@"; }

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  pip install --upgrade pip
fi

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then want=cuda; else want=cpu; fi
# "VERSION cuda|cpu" of the torch already in .venv, or nothing.
have=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0], 'cuda' if torch.version.cuda else 'cpu')" 2>/dev/null || true)

if [ "$have" = "$TORCH $want" ] || { [ "$want" = cpu ] && [ "${have%% *}" = "$TORCH" ]; }; then
  echo "torch $TORCH: already installed (${have#* } build)"
elif [ "$want" = cuda ]; then
  echo "torch $TORCH: NVIDIA GPU found, installing the CUDA build"
  [ -n "$have" ] && pip uninstall --yes torch
  pip install "torch==$TORCH"
else
  # PyTorch's own CPU index, with the configured index beside it for torch's dependencies. Where the
  # CPU index cannot be reached (offline mirrors, firewalls), the configured index is used instead.
  index=$(pip config list 2>/dev/null | sed -n "s/^[^.]*\.index-url='\(.*\)'$/\1/p" | tail -n 1)
  index=${index:-https://pypi.org/simple}
  if .venv/bin/python -c "import urllib.request; urllib.request.urlopen('$CPU_INDEX/torch/', timeout=10)" 2>/dev/null; then
    echo "torch $TORCH: no NVIDIA GPU, installing the CPU build from $CPU_INDEX"
    pip install --timeout 30 --retries 1 --index-url "$CPU_INDEX" --extra-index-url "$index" "torch==$TORCH"
  else
    echo "torch $TORCH: no NVIDIA GPU; $CPU_INDEX unreachable, installing from the configured index"
    pip install "torch==$TORCH"
  fi
fi

# setuptools boxes a warning on every editable install (folders named like the package could shadow
# it); sdflow's layout has none, so the box only alarms.
PYTHONWARNINGS="ignore:Editable installation" pip install -e ".[test]"
echo "sdflow installed in .venv ($(.venv/bin/python -c "import torch; print('torch', torch.__version__ + ',',
      'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU only')"))."
echo "Run it:   .venv/bin/sdflow prompt=\"a small red circle on the left, blue background\" seed=0"
echo "Tests:    .venv/bin/python -m pytest -q -n 2 --dist loadfile"
echo "Or first: source .venv/bin/activate   (then plain 'sdflow ...', 'sdflow-info nodes')"
