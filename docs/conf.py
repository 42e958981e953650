"""Sphinx configuration of the mmext_init documentation site (MyST
Markdown pages, API reference by autodoc with Google-style docstrings).

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``
(``tests/test_docs.py`` builds it so, warnings as errors).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the package, from a clone
sys.path.insert(0, os.path.join(HERE, '_ext'))

import mmext_init  # noqa: E402

project = 'mmext_init'
author = 'mmext_init contributors'
copyright = 'mmext_init contributors'
release = version = mmext_init.__version__

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'mmext_docs',
]
source_suffix = {'.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build']

myst_heading_anchors = 3

autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
autodoc_default_options = {'show-inheritance': False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

smartquotes = False  # config values ('Zero') stay as written
highlight_language = 'text'  # the guides' plain blocks are output, not code
html_theme = 'alabaster'
html_static_path = []
html_title = f'mmext_init {release}'
