"""Build step of OpenMMLab's packages (mmdet's ``add_mim_extension``): the
example configs of ``configs/`` ship in the wheel as package data, in
``mmext_init/.mim/configs``. They are copied into the build folder only,
never into the source tree (the repository keeps them in ``configs/``).
Everything else is in pyproject.toml.
"""
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithConfigs(build_py):
    """``build_py``, then ``configs/**.py`` into ``mmext_init/.mim/configs``
    of the build folder (not in editable mode: there the package is the
    checkout, whose ``configs/`` :func:`mmext_init.tools.example_configs`
    finds)."""

    def run(self) -> None:
        super().run()
        if getattr(self, 'editable_mode', False):
            return
        source = os.path.join(HERE, 'configs')
        target = os.path.join(self.build_lib, 'mmext_init', '.mim', 'configs')
        if os.path.isdir(target):
            shutil.rmtree(target)  # no stale config from an earlier build
        shutil.copytree(source, target,
                        ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))


setup(cmdclass={'build_py': BuildWithConfigs})
