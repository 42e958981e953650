"""Run mmcls's ``tools/train.py``, unchanged, in this process
(``python launch_train.py CONFIG ARGS...``), with MMEngine's ``Runner``
and ``MODELS`` registry made to fail if anything used them: the 1.x run
builds the model from mmcls's registries and trains it with mmcv's runner."""
import os
import runpy
import sys

import mmcls
from mmengine.registry import MODELS
from mmengine.runner import Runner

TRAIN = os.path.join(os.path.dirname(mmcls.__file__), '.mim', 'tools',
                     'train.py')


def _refuse(what: str):

    def refused(*args, **kwargs):
        raise AssertionError(f'the OpenMMLab 1.x run used {what}')

    return refused


Runner.__init__ = _refuse("MMEngine's Runner")
MODELS.build = _refuse("MMEngine's MODELS registry")

if __name__ == '__main__':
    sys.argv = [TRAIN] + sys.argv[1:]
    runpy.run_path(TRAIN, run_name='__main__')
