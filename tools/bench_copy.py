"""The benchmark from a checkout (:mod:`mmext_init.tools.bench.copies`)."""
import sys

from mmext_init.tools.bench.copies import main

if __name__ == '__main__':
    sys.exit(main())
