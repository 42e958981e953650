"""``mmext-check``, run as a repository script (OpenMMLab's tools/ habit)."""
import sys

from mmext_init.tools.check_function_preserving import main

if __name__ == '__main__':
    sys.exit(main())
