"""The benchmark from a checkout: ``mmext-bench``
(:mod:`mmext_init.tools.bench_init`)."""
import sys

from mmext_init.tools.bench_init import main

if __name__ == '__main__':
    sys.exit(main())
