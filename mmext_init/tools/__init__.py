"""The command-line tools, installed as console scripts with the package:

* ``mmext-match`` (:mod:`~mmext_init.tools.match_checkpoint`): dry-run a
  ``Pretrained`` entry or ``load_from`` (what would load, from names and
  shapes only) and, with ``--optim``, the trainable report;
* ``mmext-merge`` (:mod:`~mmext_init.tools.merge_inserted`): fold the
  foldable insert entries (LoRA, DoRA, SSF) into the weights, proven on a
  seeded input;
* ``mmext-check`` (:mod:`~mmext_init.tools.check_function_preserving`):
  prove inserted modules keep a pretrained model's function at step 0;
* ``mmext-zoo-sweep`` (:mod:`~mmext_init.tools.zoo_sweep`): the shipped
  configs of the installed packages, as shipped, stock against the plugin;
* ``mmext-bench`` (:mod:`~mmext_init.tools.bench_init`) and
  ``mmext-bench-train`` (:mod:`~mmext_init.tools.bench.train`): config to
  initialized model against stock and the floor, and a training step with
  LoRA or DoRA against PEFT's.

Each is also ``python -m mmext_init.tools.<module>``. They share
:mod:`~mmext_init.tools.cli`'s conventions: ``--cfg-options``, ``--atol``
(default 1e-5), ``--json PATH`` (``-``: stdout) and errors as
``<tool>: error: <message>`` on stderr with exit status 2.

The example configs ship inside the package, in ``mmext_init/.mim/configs``
(OpenMMLab's place for them, as mmdet's ``mmdet/.mim/configs``):
:func:`example_configs` gives the folder.

Example:
    >>> import os
    >>> os.path.isfile(os.path.join(
    ...     example_configs(), 'mmdet', 'retinanet_r18_adapters_ft_tiny.py'))
    True
"""
import os

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def example_configs() -> str:
    """The folder of the example configs: ``mmext_init/.mim/configs`` of an
    installed wheel, else (an editable install, a checkout) the
    repository's ``configs/`` next to the package.

    Raises:
        FileNotFoundError: neither folder exists.
    """
    candidates = [os.path.join(PACKAGE, '.mim', 'configs'),
                  os.path.join(os.path.dirname(PACKAGE), 'configs')]
    for path in candidates:
        if os.path.isdir(path):
            return path
    raise FileNotFoundError(
        f'no example configs: neither {candidates[0]} (a wheel) nor '
        f'{candidates[1]} (a checkout) exists')
