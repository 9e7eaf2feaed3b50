"""The environment line and the report's engine text: CASA, pipeline, MPI, read without importing them."""

import sys

from .casa_engine import casatools_version, is_monolithic_casa
from .mpi import mpi_description


def engine_description():
    parts = []
    casatools = sys.modules.get('casatools')
    if casatools is not None:
        parts.append('CASA %s (%s)' % (casatools_version(casatools),
                                       'monolithic' if is_monolithic_casa() else 'modular'))
    if 'pipeline' in sys.modules:
        parts.append('ALMA pipeline')
    if not parts:
        parts.append('no CASA (no step of this run needed it)')
    return ', '.join(parts) + '; ' + mpi_description()


def describe_environment():
    """One line: CASA, pipeline, MPI — read without importing CASA or the pipeline."""
    return 'Environment: CASA %s; pipeline %s; %s; Python %s' % (
        _casa_version(), _pipeline_version(), mpi_description(), sys.version.split()[0])


def _casa_version():
    kind = 'monolithic' if is_monolithic_casa() else 'modular'
    if 'casatools' in sys.modules:
        return '%s (%s)' % (casatools_version(sys.modules['casatools']), kind)
    version = _distribution_version('casatools')
    return '%s (%s)' % (version, kind) if version else 'not installed'


def _pipeline_version():
    module = sys.modules.get('pipeline')
    if module is not None:
        return str(getattr(module, 'revision', None) or getattr(module, '__version__', 'unknown version'))
    import importlib.util
    try:
        found = importlib.util.find_spec('pipeline') is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return 'absent'
    return _distribution_version('pipeline') or 'installed (loaded when a step needs it)'


def _distribution_version(name):
    try:
        from importlib import metadata  # novermin (guarded: Python < 3.8 takes the except branch)
    except ImportError:  # Python < 3.8 (CASA 6.4 runs on 3.6): the dist-info folder's name says the version
        import glob
        import os
        for entry in sys.path:
            for found in sorted(glob.glob(os.path.join(entry or '.', '%s-*.dist-info' % name))):
                return os.path.basename(found)[len(name) + 1:-len('.dist-info')]
        return None
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
