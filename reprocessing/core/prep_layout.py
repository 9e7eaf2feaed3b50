"""reprocessing_prep.py's names: the output it builds, its modes, and the actions of its steps (pure)."""

from pathlib import PurePosixPath

from .layout import CALTABLES_DIR_NAME, MS_DIR_NAME


DEFAULT_OUTPUT_NAME = 'calibrated_final'

MODE_COPY, MODE_LINK, MODE_MOVE = 'copy', 'link', 'move'

# What a plan step does.  DELIVER follows the mode (copy, link or move); COPY is
# always a copy (the reprocessing script: small, and users edit it);
# CONVERT writes a new MS from one data column of a pre-Cycle-9 MS.
ACTION_DELIVER, ACTION_COPY, ACTION_CONVERT = 'deliver', 'copy', 'convert'

MS_DIR = PurePosixPath(MS_DIR_NAME)
# Inside the partial output: copies and conversions are written here under their
# final names (an MS keeps its own name in its history), then renamed into place.
STAGING_DIR = PurePosixPath('.incomplete')
CALTABLES_DIR = PurePosixPath(CALTABLES_DIR_NAME)


def step_verb(step, *, mode):
    if step.action == ACTION_CONVERT:
        return 'convert DATA' if step.datacolumn == 'data' else 'convert CORRECTED_DATA'
    return MODE_COPY if step.action == ACTION_COPY else mode
