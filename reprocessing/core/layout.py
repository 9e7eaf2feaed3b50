"""The delivery's layout: the names this tool reads and writes in calibrated_final/, and Delivery.

Pure (the file system only): which MSes a delivery holds, how their line MSes and this tool's own
files and folders are named.
"""

import fnmatch
from pathlib import Path

from .fileops import PARTIAL_TAG
from .messages import ReprocessingError, UsageError


SCRIPT_NAME = 'scriptForReprocessing.py'        # the reprocessing script, run in calibrated_final/
PREP_SCRIPT_NAME = 'reprocessing_prep.py'      # the script that builds calibrated_final/ from working/
MS_DIR_NAME = 'measurement_sets'
CALTABLES_DIR_NAME = 'caltables'
WORK_DIR_NAME = 'working_reprocess'
LOCK_NAME = '.scriptForReprocessing.lock'
JOURNAL_NAME = '.scriptForReprocessing.journal'
SHADOW_MARKER = '.reprocessing-shadow'
# Inside working_reprocess/: every path under it is decided by Delivery (its *_dir attributes).
REPORT_DIR_NAME = 'report'
STAGING_DIR_NAME = 'staging'
LOGS_DIR_NAME = 'logs'
IMAGING_DIR_NAME = 'imaging'
KNOWN_BEAMS_NAME = 'known-beams.json'


class Delivery(object):
    """What a calibrated_final/ directory holds."""

    def __init__(self, root):
        self.root = Path(root)
        self.ms_dir = self.root / MS_DIR_NAME
        self.caltables = self.root / CALTABLES_DIR_NAME
        self.contdat = self.caltables / 'cont.dat'
        self.work_dir = self.root / WORK_DIR_NAME
        self.report_dir = self.work_dir / REPORT_DIR_NAME      # the reprocessing report (one folder per run)
        self.spectra_dir = self.report_dir / 'spectra'         # before/after spectra of the continuum subtraction
        self.staging_dir = self.work_dir / STAGING_DIR_NAME    # shadows and copies of the user's MSes
        self.logs_dir = self.work_dir / LOGS_DIR_NAME          # CASA's logs and what CASA printed
        self.imaging_dir = self.work_dir / IMAGING_DIR_NAME    # the CASA engine's tclean products before publishing
        # each image the CASA engine finished, with its record, until the run publishes them all: what a stopped
        # run keeps for the same command again (imaging/image_resume.py)
        self.finished_images_dir = self.work_dir / (IMAGING_DIR_NAME + '-finished')
        # each channel chunk of a split cube (--split-cube) once made, with its record, until its cube is joined
        # (imaging/cube_split.py): a stopped run's chunks are reused by the same command again
        self.chunks_dir = self.work_dir / (IMAGING_DIR_NAME + '-chunks')
        # the beams of the PSFs that set the cells, for the same data and settings again (imaging/cell_beams.py)
        self.known_beams_file = self.work_dir / KNOWN_BEAMS_NAME
        self.targets = self._list_ms('uid*_targets.ms')
        self.targets_line = self._list_ms('uid*_targets_line.ms')
        self.target_cycle8 = self._list_ms('uid*_target.ms')
        # The development pipeline's hif_mstransform can also write uid*_imaging.ms and uid*_imaging_line.ms
        # (PIPE-3003): the targets regridded to the source's frame for imaging, one data column, no
        # continuum fit to redo.  This tool reads uid*_targets*.ms; these are named, never used.
        self.imaging_ms = self._list_ms('uid*_imaging.ms') + self._list_ms('uid*_imaging_line.ms')
        self.uvcont_tables = sorted(self.caltables.glob('*uvcont.tbl')) if self.caltables.is_dir() else []

    def _list_ms(self, pattern):
        if not self.ms_dir.is_dir():
            return []
        return sorted(p for p in self.ms_dir.iterdir()
                      if fnmatch.fnmatch(p.name, pattern) and p.is_dir() and PARTIAL_TAG not in p.name)

    def check_layout(self):
        if not self.ms_dir.is_dir():
            here = [p.name for p in self.root.glob('uid*_target*.ms') if p.is_dir()]
            if self.root.name == MS_DIR_NAME and here:
                raise ReprocessingError(
                    '%s is the measurement_sets/ folder of a delivery — point --delivery at its parent, %s (or run '
                    'the script there)' % (self.root, self.root.parent))
            if here:
                raise ReprocessingError(
                    '%s looks like the pipeline\'s working/ directory (it holds %s, not measurement_sets/) — make a '
                    'calibrated_final/ from it first with "python reprocessing_prep.py --working %s", then run '
                    'this script there' % (self.root, here[0], self.root))
            raise ReprocessingError(
                'no measurement_sets/ directory in %s — run the script in a delivery\'s calibrated_final/ '
                'directory, or point at one with --delivery DIR' % self.root)
        if not self.targets:
            if self.imaging_ms:
                raise ReprocessingError(
                    'measurement_sets/ holds only the pipeline\'s imaging MSes (%s: regridded for imaging by '
                    'hif_mstransform, PIPE-3003), not the uid*_targets.ms this tool reprocesses — not supported '
                    'yet: continuum subtraction and imaging need the calibrated targets; request uid*_targets.ms '
                    'from the archive, or image these with CASA directly' % self.imaging_ms[0].name)
            if self.target_cycle8:
                raise ReprocessingError(
                    'measurement_sets/ holds only pre-Cycle 9 uid*_target.ms — convert them with '
                    '"python reprocessing_prep.py --working %s" first (it writes uid*_targets.ms and, from the '
                    'CORRECTED column, uid*_targets_line.ms)' % self.ms_dir)
            raise ReprocessingError(
                'no uid*_targets.ms in %s — run the script in a delivery\'s calibrated_final/ directory, '
                'or point at one with --delivery DIR' % self.ms_dir)

    def output(self, name):
        return self.ms_dir / name

    def check_output_folder(self, folder, flag, *, also=()):
        """An output folder (--image DIR) may be none of the user's paths, be in none, and hold none: not a
        measurement set, measurement_sets/, caltables/, the delivery itself, the tool's working_reprocess/
        (nor a folder inside them, nor one above the delivery), nor the paths in also (--archive-products)."""
        import os
        chosen = os.path.realpath(str(folder))
        users = list(self.targets) + list(self.targets_line) + [self.output(n) for n in (
            'calibrated_final.ms', 'calibrated_final_line.ms')] + [self.ms_dir, self.caltables, self.work_dir, self.root]
        root = os.path.realpath(str(self.root))
        in_delivery = chosen.startswith(root.rstrip('/') + '/')
        inputs = [Path(p) for p in also if p is not None]
        for user in [path for path in users if path is not None] + inputs:
            real = os.path.realpath(str(user))
            inside = chosen == real or chosen.startswith(real.rstrip('/') + '/')
            # an input folder may hold the delivery (--archive-products at the member folder that holds
            # calibrated/ and product/): a folder inside the delivery is then fine
            allowed = real == root or (user in inputs and in_delivery and not root.startswith(chosen + '/'))
            if inside and not allowed or chosen == real:
                raise UsageError('%s %s would write into %s — choose a new folder for the products, e.g. %s images'
                                 % (flag, folder, user, flag))
        if root.startswith(chosen.rstrip('/') + '/'):
            raise UsageError('%s %s holds the delivery %s — choose a new folder for the products, e.g. %s images'
                             % (flag, folder, self.root, flag))


def line_ms_path(targets_ms):
    return targets_ms.with_name(targets_ms.name[:-len('.ms')] + '_line.ms')


def eb_name(ms):
    """uid___A002_X1_X2 for uid___A002_X1_X2_targets.ms (or _targets_line.ms)."""
    name = Path(ms).name
    for suffix in ('_targets_line.ms', '_targets.ms', '_target.ms', '.ms'):
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


STAGED_COPY_MARKER = '.reprocessing-staged-copy'

