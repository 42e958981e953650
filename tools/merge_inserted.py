"""``mmext-merge``, run as a repository script (OpenMMLab's tools/ habit)."""
import sys

from mmext_init.tools.merge_inserted import main

if __name__ == '__main__':
    sys.exit(main())
