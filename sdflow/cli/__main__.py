"""``python -m sdflow.cli``: the ``sdflow`` command."""

from .main import main

main()
