"""``mmext-match``, run as a repository script (OpenMMLab's tools/ habit)."""
import sys

from mmext_init.tools.match_checkpoint import main

if __name__ == '__main__':
    sys.exit(main())
