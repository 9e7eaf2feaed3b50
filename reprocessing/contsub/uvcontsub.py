"""uvcontsub, the one way this tool fits and subtracts the continuum of one execution block (and its self-calibrated column)."""

import collections
import json
import time
from pathlib import Path

from ..casa.casa_engine import casa_task, native_stdout_silenced
from ..casa.data_columns import SELFCAL_COLUMN, add_selfcal_column
from ..casa.eb_tasks import eb_task
from ..casa.ms_tables import count_rows
from ..core.fileops import remove_tree
from ..core.messages import ReprocessingError, one_line
from .spectra import measure_spectra_pair


def build_fitspec(selections, *, fitorder=None):
    """uvcontsub's field / spw selections and fitspec dictionary for one MS (pure).

    fitspec is {'field ids': {'spw id': {'chan': 'a~b;c~d', 'fitorder': n}}}, as the pipeline's
    hif_uvcontsub builds it; chan '' fits all channels.  Fields sharing a name (mosaic
    pointings) share one entry.  Spws in no cont.dat block are not selected, so they are not
    in the line MS.
    """
    fitspec = collections.OrderedDict()
    for selection in selections:
        key = ','.join(str(field_id) for field_id in selection.field_ids)
        order = selection.fitorder if fitorder is None else fitorder
        fitspec.setdefault(key, collections.OrderedDict())[str(selection.spw_id)] = {
            'chan': selection.chan, 'fitorder': int(order)}
    field_ids = sorted({field_id for selection in selections for field_id in selection.field_ids})
    spw_ids = sorted({selection.spw_id for selection in selections})
    return (','.join(str(i) for i in field_ids), ','.join(str(i) for i in spw_ids),
            json.loads(json.dumps(fitspec)))


def uvcontsub_takes_fitspec(casa):
    """CASA 6.5+ has the uvcontsub of fitspec and outputvis; CASA 6.4's uvcontsub is the older task,
    which writes its output and scratch copies beside the MS it is given."""
    import inspect
    if list(casa.casatools.version()[:2]) >= [6, 6]:
        return True  # without importing casatasks here (CasaModules): worker processes run the tasks
    try:
        return 'fitspec' in inspect.signature(casa.casatasks.uvcontsub).parameters
    except (AttributeError, TypeError, ValueError):
        return True


def mstransform_fit_of(fitspec, *, ms_name, casa_version):
    """[fitspw, fitorder] for mstransform's douvcontsub (CASA 6.4) doing what fitspec asks (pure).

    mstransform takes one channel selection per spw for every field and one fit order; a fitspec
    that needs more is refused before anything runs.
    """
    chans, orders = collections.OrderedDict(), set()
    for spws in fitspec.values():
        for spw, entry in spws.items():
            if chans.setdefault(spw, entry['chan']) != entry['chan']:
                raise ReprocessingError(
                    'CASA %s fits one channel selection per spw for every field, but cont.dat gives the fields of %s '
                    'different channels in spw %s — use CASA 6.5 or later, or --contsub' % (casa_version, ms_name, spw))
            orders.add(entry['fitorder'])
    if len(orders) > 1:
        raise ReprocessingError('CASA %s fits one polynomial order for every spw, but %s needs orders %s (cont.dat\'s '
                                'LOWBANDWIDTH/LOWSPREAD blocks are fitted with order 0) — give --fitorder N, or use CASA '
                                '6.5 or later' % (casa_version, ms_name, ' and '.join(str(o) for o in sorted(orders))))
    fitspw = ','.join('%s:%s' % (spw, chan) if chan else spw for spw, chan in sorted(chans.items(), key=lambda i: int(i[0])))
    return [fitspw, orders.pop()]


def describe_line_columns(columns):
    if SELFCAL_COLUMN in columns:
        return 'DATA = regular calibration, CORRECTED_DATA = self-calibrated'
    return 'DATA only'


@eb_task
def subtract_continuum(casa, report, *, ms, output, field, spw, fitspec, spectra=(), selfcal_fit=None,
                       mstransform_fit=None):
    """uvcontsub of one MS into output (a temporary name), checked; then its spectra before/after.

    selfcal_fit: where the same fit of CORRECTED_DATA (the self-calibrated data) is written; it then
    becomes the line MS's CORRECTED_DATA (the pipeline's layout) and is removed.
    mstransform_fit: [fitspw, fitorder] where CASA has no fitspec uvcontsub (6.4): mstransform's
    douvcontsub fits the same polynomials, read-only on the MS, into output.
    """
    started = time.time()
    if mstransform_fit is None:
        report('uvcontsub: fitting and subtracting the continuum (field ids %s, spws %s)' % (field, spw))
    else:
        report('uvcontsub: fitting and subtracting the continuum with mstransform (CASA %s has no fitspec '
               'uvcontsub; field ids %s, spws %s, fitspw %s, order %d)' % ((casa.version, field, spw) +
                                                                          tuple(mstransform_fit)))
    uvcontsub_checked(casa, ms=ms, output=output, field=field, spw=spw, fitspec=fitspec, datacolumn='data',
                      mstransform_fit=mstransform_fit)
    written = count_rows(casa, output)
    columns = ['DATA']
    if selfcal_fit:
        report('uvcontsub: the same fit of the self-calibrated data (CORRECTED_DATA)')
        uvcontsub_checked(casa, ms=ms, output=selfcal_fit, field=field, spw=spw, fitspec=fitspec,
                           datacolumn='corrected', mstransform_fit=mstransform_fit)
        add_selfcal_column(casa, line_ms=output, selfcal_fit=selfcal_fit)
        remove_tree(selfcal_fit)
        columns.append(SELFCAL_COLUMN)
    seconds = time.time() - started
    report('continuum subtracted in %.1f s: %d rows, %s' % (seconds, written, describe_line_columns(columns)))
    measured = []
    if spectra:
        try:
            measured = measure_spectra_pair(casa, before_ms=ms, after_ms=output, requests=spectra,
                                            column=columns[-1])
        except Exception as error:  # the plots are a view of the result, not the result: carry on
            report('WARNING: no spectra for the plots (%s)' % one_line(error))
    return {'rows': written, 'seconds': round(seconds, 2), 'spw': spw, 'field': field, 'spectra': measured,
            'columns': columns}


def uvcontsub_checked(casa, *, ms, output, field, spw, fitspec, datacolumn, mstransform_fit=None):
    """uvcontsub into output (on CASA 6.4 mstransform's douvcontsub, mstransform_fit); it must have
    written every selected row."""
    if mstransform_fit is None:
        task, arguments = 'uvcontsub', dict(fitspec=fitspec)
    else:
        fitspw, fitorder = mstransform_fit
        task, arguments = 'mstransform', dict(reindex=False, douvcontsub=True, fitspw=fitspw, fitorder=fitorder,
                                              want_cont=False)
    with native_stdout_silenced():  # its C++ messages belong in the CASA log
        casa_task(casa, task, about=Path(ms).name, vis=str(ms), outputvis=str(output), field=field, spw=spw,
                  datacolumn=datacolumn, **arguments)
    if not (Path(output) / 'table.dat').is_file():
        raise ReprocessingError('uvcontsub wrote no line MS for %s — see the CASA log; your MS was not changed'
                                % Path(ms).name)
    expected = count_rows(casa, ms, field_ids=field, spw_ids=spw)
    written = count_rows(casa, output)
    if written != expected:
        raise ReprocessingError('the line MS made from %s has %d rows where %d were selected — it was not '
                                'published; see the CASA log' % (Path(ms).name, written, expected))
