"""pytest plugin of ``tools/upstream_suites.py``: ``-p mmext_init_first``
imports mmext_init (activating it) before any test module is collected, as
a config's ``custom_imports`` would before the model is built."""
import mmext_init  # noqa: F401  (the import installs the plugin)
