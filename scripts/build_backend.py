"""setuptools' build backend, building in a temporary folder (pyproject's build-system names it).

setuptools builds in ./build and ./sdflow.egg-info and keeps both: a ``pip install .`` left an untracked build/ in
the checkout, and its copies of files since deleted from the sources went into the next wheel built there. Here
both lie in a temporary folder, named by an extra distutils config file (DIST_EXTRA_CONFIG, read after setup.cfg).
"""

import os
import tempfile
from contextlib import contextmanager

from setuptools import build_meta
from setuptools.build_meta import *  # noqa: F401,F403  (the hooks not wrapped below are setuptools' own)


@contextmanager
def _elsewhere():
    with tempfile.TemporaryDirectory(prefix="sdflow-build-") as folder:
        config = os.path.join(folder, "setup.cfg")
        with open(config, "w", encoding="utf-8") as f:
            f.write(f"[build]\nbuild_base = {folder}/build\n[egg_info]\negg_base = {folder}\n")
        before = os.environ.get("DIST_EXTRA_CONFIG")
        os.environ["DIST_EXTRA_CONFIG"] = config
        try:
            yield
        finally:
            if before is None:
                del os.environ["DIST_EXTRA_CONFIG"]
            else:
                os.environ["DIST_EXTRA_CONFIG"] = before


def _wrapped(hook):
    def run(*args, **kwargs):
        with _elsewhere():
            return hook(*args, **kwargs)

    run.__name__ = run.__qualname__ = hook.__name__
    return run


build_wheel = _wrapped(build_meta.build_wheel)
build_sdist = _wrapped(build_meta.build_sdist)
build_editable = _wrapped(build_meta.build_editable)
prepare_metadata_for_build_wheel = _wrapped(build_meta.prepare_metadata_for_build_wheel)
prepare_metadata_for_build_editable = _wrapped(build_meta.prepare_metadata_for_build_editable)
