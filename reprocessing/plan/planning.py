"""What every part of the plan shares: the Plan, its Steps, the free-space and writability checks, CASA for planning."""

import collections
import os
import sys

from ..casa.casa_engine import is_monolithic_casa, load_casa
from ..contdat.against_ms import read_delivery_contdat
from ..core.fileops import file_count, relative_path, require_free_space
from ..core.messages import ReprocessingError


Step = collections.namedtuple('Step', 'name summary inputs outputs extra_bytes function')


class Plan(object):
    """What this run will do: the user's request (never changed), the steps, and what planning decided."""

    def __init__(self, request, delivery):
        self.request = request         # RunRequest: what the user asked for
        self.delivery = delivery
        self.steps = []
        self.notes = []
        self.contdat = None            # ContDat, read (pure Python) while planning a contsub or --check
        self.contdat_analysis = None   # ContDatAnalysis, made by the first step that checks cont.dat with CASA
        self.column_surveys = []       # ColumnSurvey of every uid*_targets.ms (preflight_data_columns)
        self.replace_line_ms = False   # existing uid*_targets_line.ms are replaced (--overwrite-line, --update)
        self.contsub_jobs = 1          # processes of the continuum subtraction: the disk check's and the run's
        self.image_jobs = 1            # processes making images at once (preflight_images): the checks' and the run's
        self.imaging_engine = None     # 'pipeline' or 'casa', with --image
        self.image_estimate = None     # ImageEstimate, with --image (preflight_images)
        self.image_resources = None    # ImageResources: memory and time of each image (preflight_images)
        self.combination = None        # Combination, with --combine (preflight_combination)

    @property
    def imaging(self):
        return self.request.image

    @property
    def extra_bytes(self):
        return sum(step.extra_bytes for step in self.steps)

    def read_contdat(self):
        """caltables/cont.dat read once (pure Python); its syntax errors stop the run where first read."""
        if self.contdat is None:
            self.contdat = read_delivery_contdat(self.delivery)
        return self.contdat


def require_writable_folder(delivery, output):
    """Outputs go beside the user's MSes: a measurement_sets/ the user may not write stops the plan."""
    if not os.access(str(output.parent), os.W_OK | os.X_OK):
        raise ReprocessingError('%s would be written into %s, which is not writable for you — make it writable '
                                '(chmod u+w %s) if it is yours, or reprocess a copy of the delivery'
                                % (output.name, relative_path(output.parent, delivery.root) + '/', output.parent))


def check_free_space(plan):
    """Bytes and files: each step that writes copies of its inputs (line MSes, a concatenated MS) makes
    about as many files as they have."""
    files = file_count([ms for step in plan.steps if step.extra_bytes for ms in step.inputs if os.path.exists(str(ms))])
    require_free_space(plan.delivery.root, plan.extra_bytes, what='this plan', files=files,
                       advice='free some space or run fewer steps at once')


def casa_for_planning():
    if is_monolithic_casa() or 'casatools' in sys.modules:
        return load_casa()
    return load_casa(logfile=os.devnull)
