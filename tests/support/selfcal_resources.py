"""Make a self-calibrated delivery the way the ALMA pipeline does, with its selfcal restore resources.

Needs a Python with the ALMA pipeline (2024.1 or later: hif_selfcal).  Starting from a pipeline-ready
simulated delivery (simulate_delivery.py --pipeline-ready, no --selfcal-phase-rms-deg), it

1. gives DATA of each ``uid*_targets.ms`` per-antenna phase errors, constant over each execution block
   (what a self-calibration with solint inf_EB can solve; the simulator's own --selfcal-phase-rms-deg
   draws a new phase per integration, which no solution interval of hif_selfcal recovers);
2. runs the pipeline's own solver on copies of them in ``<work>/``: h_init, hifa_importdata
   (DATA = REGCAL_CONTLINE), hif_selfcal with the delivery's cont.dat; hif_selfcal writes the
   self-calibrated data into CORRECTED_DATA, records SELFCAL_CONTLINE_SCIENCE in each MS's HISTORY,
   and lists its restore resources (``<context>.selfcal.json`` and the ``sc_workdir_*`` gain tables);
3. packs the resources the way hifa_exportdata does (``h/tasks/exportdata/exportdata.py``: each resource
   added under its path relative to the working directory, with cont.dat) into
   ``<oussid>.hifa_calimage.auxproducts.tgz``;
4. puts the self-calibrated MSes in place of the delivery's (DATA = regular calibration, CORRECTED_DATA =
   self-calibrated, as a Cycle 11+ delivery holds them) and writes the tgz where ``--auxproducts`` says.

Usage (from the repository, with the pipeline's Python)::

    python tests/support/selfcal_resources.py DELIVERY [--phase-rms-deg 30] [--weblog] [--auxproducts calibration]

Prints one line 'SELFCAL_RESOURCES {"auxproducts": path, "resources": [...], "succeeded": [[field, band], ...], ...}'.
Selfcal succeeds on a 30-antenna, 2-EB simulation of a 1 Jy continuum with 30 deg phase errors (final solint int);
with 12 antennas its automasking finds nothing to clean (the PSF's sidelobes) and it stops before inf_EB.
"""
from __future__ import print_function

import argparse
import glob
import json
import math
import os
import shutil
import sys
import tarfile

import numpy as np


def corrupt_with_antenna_phases(table, ms, *, rms_deg, seed):
    """DATA *= exp(i (phi_a - phi_b)): one phase per antenna for the whole MS; returns {antenna: phase (rad)}."""
    rng = np.random.RandomState(seed)
    table.open(ms, nomodify=False)
    try:
        ant1, ant2 = table.getcol('ANTENNA1'), table.getcol('ANTENNA2')
        antennas = sorted(set(ant1.tolist()) | set(ant2.tolist()))
        phases = dict((antenna, rng.normal(0.0, math.radians(rms_deg))) for antenna in antennas)
        phases[antennas[0]] = 0.0  # a reference antenna: the solution is defined up to one phase
        error = np.array([phases[a] - phases[b] for a, b in zip(ant1, ant2)])
        for ddid in sorted(set(table.getcol('DATA_DESC_ID').tolist())):
            rows = np.where(table.getcol('DATA_DESC_ID') == ddid)[0]
            sub = table.selectrows(rows.tolist())
            try:
                data = sub.getcol('DATA')
                sub.putcol('DATA', (data * np.exp(1j * error[rows])[None, None, :]).astype(np.complex64))
            finally:
                sub.close()
    finally:
        table.close()
    return phases


def pack_auxproducts(work, resources, tgz, *, contdat='cont.dat'):
    """hifa_exportdata's auxproducts.tgz: cont.dat by its name, each selfcal resource by its relative path."""
    partial = tgz + '.partial'
    with tarfile.open(partial, 'w:gz') as tar:
        if os.path.exists(os.path.join(work, contdat)):
            tar.add(os.path.join(work, contdat), arcname=os.path.basename(contdat))
        for resource in resources:
            tar.add(os.path.join(work, resource), arcname=resource)
    os.rename(partial, tgz)
    return tgz


def make_selfcal_delivery(delivery, work, *, phase_rms_deg=30.0, seed=3, auxproducts='calibration', weblog=False):
    import casatools
    delivery = os.path.abspath(delivery)
    work = os.path.abspath(work)
    ms_dir = os.path.join(delivery, 'measurement_sets')
    targets = sorted(glob.glob(os.path.join(ms_dir, 'uid*_targets.ms')))
    if not targets:
        raise SystemExit('no uid*_targets.ms in %s' % ms_dir)
    os.makedirs(work)
    table = casatools.table()
    phases = {}
    for index, ms in enumerate(targets):
        copy = os.path.join(work, os.path.basename(ms))
        shutil.copytree(ms, copy)
        phases[os.path.basename(ms)] = corrupt_with_antenna_phases(table, copy, rms_deg=phase_rms_deg,
                                                                   seed=seed + index)
    shutil.copy(os.path.join(delivery, 'caltables', 'cont.dat'), os.path.join(work, 'cont.dat'))

    import pipeline
    tasks = {}
    pipeline.initcli(tasks)
    here = os.getcwd()
    os.chdir(work)
    try:
        # weblog=False: hif_selfcal's weblog draws every gain table per antenna (3066 plotms calls for 30 antennas,
        # most of a run); h_init sets pipeline.infrastructure.basetask.DISABLE_WEBLOG from it
        tasks['h_init'](weblog=weblog)
        tasks['hifa_importdata'](vis=[os.path.basename(ms) for ms in targets], dbservice=False,
                                 datacolumns={'data': 'regcal_contline'})
        tasks['hif_selfcal']()
        from pipeline.h.cli import utils as cli_utils
        context = cli_utils.get_context()
        tasks['h_save']()
    finally:
        os.chdir(here)
    resources = list(getattr(context, 'selfcal_resources', None) or [])
    targets_info = getattr(context, 'selfcal_targets', None) or []
    succeeded = [[target['field'], target['sc_band']] for target in targets_info
                 if not target.get('sc_exception') and target['sc_lib'].get('SC_success')]
    oussid = context.get_oussid()
    tgz_name = '%s.hifa_calimage.auxproducts.tgz' % oussid
    if auxproducts:
        destination = os.path.join(delivery, auxproducts) if not os.path.isabs(auxproducts) else auxproducts
        if not os.path.isdir(destination):
            os.makedirs(destination)
        tgz = pack_auxproducts(work, resources, os.path.join(destination, tgz_name))
    else:
        tgz = None
    for ms in targets:  # the self-calibrated MSes replace the delivery's
        shutil.rmtree(ms)
        shutil.copytree(os.path.join(work, os.path.basename(ms)), ms)
    return {'auxproducts': tgz, 'resources': resources, 'succeeded': succeeded, 'oussid': oussid,
            'phases': dict((ms, dict((str(a), p) for a, p in antenna_phases.items()))
                           for ms, antenna_phases in phases.items())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('delivery')
    parser.add_argument('--work', help='where the pipeline runs (default: DELIVERY/../selfcal-pipeline)')
    parser.add_argument('--phase-rms-deg', type=float, default=30.0)
    parser.add_argument('--weblog', action='store_true', help='render the weblog (slow: plots of every gain table)')
    parser.add_argument('--seed', type=int, default=3)
    parser.add_argument('--auxproducts', default='calibration',
                        help='folder for the .auxproducts.tgz, relative to DELIVERY (default calibration); '
                             '"" for none')
    args = parser.parse_args(argv)
    work = args.work or os.path.join(os.path.dirname(os.path.abspath(args.delivery)), 'selfcal-pipeline')
    result = make_selfcal_delivery(args.delivery, work, phase_rms_deg=args.phase_rms_deg, seed=args.seed,
                                   auxproducts=args.auxproducts, weblog=args.weblog)
    print('SELFCAL_RESOURCES ' + json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
