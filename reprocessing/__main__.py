"""python -m reprocessing: the package run as itself, exactly as the generated scriptForReprocessing.py.

(reprocessing_prep.py's entry is python -m reprocessing.apps.prep.)
"""
import sys

from .apps.reprocess import main

if __name__ == '__main__':
    sys.exit(main())
