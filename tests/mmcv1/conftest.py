"""The OpenMMLab 1.x tests run only where mmcv 1.x is installed (the venv of
``tools/setup_env_mmcv1.sh``; ``tools/test.sh`` runs them there after the
main suite); next to mmcv 2.x none of these files is collected."""
from mmext_init.mmcv1 import mmcv1_installed

collect_ignore_glob = [] if mmcv1_installed() else ['*.py']
