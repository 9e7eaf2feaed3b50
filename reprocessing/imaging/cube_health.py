"""Cube health: channels that diverged or were left uncleaned where the others cleaned, found after tclean and
re-cleaned alone with a safer setting, then spliced back into the cube's images (plane by plane).

A channel is redone when (channel_problems):
  * it diverged: its peak residual grew through the major cycles (tclean's per-channel summary, CASA 6.5+: more
    than 3 x the lowest it had reached, tclean's own divergence rule applied to one channel; or it ended above
    1.5 x where it started);
  * it was left uncleaned where others cleaned: no clean component in it although its residual peak is over
    twice the threshold, while other channels have components (automasking found nothing in it);
  * its residual is far above its neighbours': over twice the threshold and 5 x the median of the 3 channels
    on either side (a bad mask, a diverged minor cycle).
The safer setting (REDO_SETTINGS): a mask of the primary beam above 0.3 instead of the automask, and
cyclefactor 3 (major cycles three times as often: the minor cycles stop where the PSF's sidelobes would
mislead them), to the same threshold.
"""

from ..casa.casa_engine import casa_task, opened_tool
from ..core.fileops import remove_tree

DIVERGENCE_FACTOR = 3.0
GROWTH_FACTOR = 1.5
NEIGHBOURS = 3
OUTLIER_FACTOR = 5.0
REDO_SETTINGS = dict(usemask='pb', pbmask=0.3, cyclefactor=3.0)
AUTOMASK_PARAMETERS = ('sidelobethreshold', 'noisethreshold', 'lownoisethreshold', 'negativethreshold', 'minbeamfrac',
                       'growiterations', 'dogrowprune', 'minpercentchange', 'fastnoise', 'mask')
SPLICED = ('.image', '.image.pbcor', '.residual', '.model', '.mask', '.psf', '.pb')


def channel_problems(*, residual_peaks, model_fluxes, threshold_jy, peak_histories=None):
    """[(channel, why)] of the channels to redo (pure).

    residual_peaks: each channel's largest |residual| (Jy/beam); model_fluxes: each channel's clean components
    (Jy); peak_histories: {channel: [peak residual after each minor cycle, the start first]} or None.
    """
    import statistics
    problems = {}
    for channel, history in sorted((peak_histories or {}).items()):
        history = [abs(h) for h in history if h == h]
        if len(history) < 2:
            continue
        lowest = min(history[:-1])
        if lowest > 0 and history[-1] > DIVERGENCE_FACTOR * lowest:
            problems[channel] = 'diverged (peak residual %.3g Jy/beam after reaching %.3g)' % (history[-1], lowest)
        elif history[-1] > GROWTH_FACTOR * history[0] and history[-1] > 2 * threshold_jy:
            problems[channel] = 'residual grew (%.3g Jy/beam from %.3g)' % (history[-1], history[0])
    cleaned = any(f != 0 for f in model_fluxes)
    for channel, (peak, flux) in enumerate(zip(residual_peaks, model_fluxes)):
        if channel in problems or not peak > 2 * threshold_jy:
            continue
        if flux == 0 and cleaned:
            problems[channel] = 'left uncleaned (residual peak %.3g Jy/beam, no clean component) where others ' \
                                'cleaned' % peak
            continue
        around = [residual_peaks[k] for k in range(max(0, channel - NEIGHBOURS), min(len(residual_peaks),
                                                                                   channel + NEIGHBOURS + 1))
                  if k != channel]
        if around and peak > OUTLIER_FACTOR * statistics.median(around):
            problems[channel] = 'residual %.3g Jy/beam, %.0f x its neighbours\'' % (
                peak, peak / max(statistics.median(around), 1e-30))
    return sorted(problems.items())


def peak_histories(summary):
    """{channel: [start peak residual, peak residual after each minor cycle]} of tclean's return (CASA 6.5+: its
    'summaryminor' {field: {channel: {stokes: {'peakRes': [...], 'startPeakRes': [...]}}}}), {} otherwise."""
    minor = summary.get('summaryminor') if isinstance(summary, dict) else None
    if not isinstance(minor, dict) or not minor:
        return {}
    field = minor[sorted(minor)[0]]
    histories = {}
    for channel, by_stokes in field.items():
        cycles = by_stokes.get(0) if isinstance(by_stokes, dict) else None
        if not isinstance(cycles, dict) or 'peakRes' not in cycles:
            continue
        starts = list(cycles.get('startPeakRes', []))[:1]
        histories[int(channel)] = [float(v) for v in starts + list(cycles['peakRes'])]
    return histories


def per_channel(casa, image_path, *, statistic):
    """Each channel's statistic ('maxabs' of |values|, or 'sum') of a cube, through ia.statistics per plane."""
    with opened_tool(casa.casatools.image(), image_path) as image:
        stats = image.statistics(axes=[0, 1, 2], robust=False, verbose=False, list=False)
    if statistic == 'sum':
        return [float(v) for v in stats.get('sum', [])]
    return [max(abs(float(a)), abs(float(b))) for a, b in zip(stats.get('max', []), stats.get('min', []))]


def check_and_repair(casa, report, *, arguments, summary=None, threshold_jy, histories=None, before_redo=None):
    """Find the channels to redo in the cube tclean just made (arguments: its tclean call; summary: its return, or
    histories: peak_histories of it), re-clean each run of them alone with REDO_SETTINGS and splice them back.
    before_redo(): called when there are channels to redo, before the first tclean (a split cube keeps its chunk
    there: the redone channels took half of the cube's CPU, 32 of 60 s on bench_split_run's cube).  Returns
    [(channel, why)] of the channels redone."""
    imagename = arguments['imagename']
    residuals = per_channel(casa, imagename + '.residual', statistic='maxabs')
    models = per_channel(casa, imagename + '.model', statistic='sum')
    problems = channel_problems(residual_peaks=residuals, model_fluxes=models, threshold_jy=threshold_jy,
                                peak_histories=peak_histories(summary) if histories is None else histories)
    if not problems:
        return []
    if before_redo is not None:
        before_redo()
    report('%d channel%s to clean again (%s): %s' % (
        len(problems), '' if len(problems) == 1 else 's', ', '.join(
            '%s%s' % (k, v['what']) for k, v in sorted(REDO_DESCRIPTION.items())),
        '; '.join('channel %d %s' % (channel, why) for channel, why in problems)))
    for first, count in _runs([channel for channel, _why in problems]):
        _redo(casa, arguments, first=first, count=count)
    after = per_channel(casa, imagename + '.residual', statistic='maxabs')
    report('after cleaning them again: %s' % ', '.join(
        'channel %d residual peak %.3g Jy/beam (was %.3g)' % (channel, after[channel], residuals[channel])
        for channel, _why in problems))
    return problems


REDO_DESCRIPTION = {'usemask': {'what': "='pb' inside the primary beam above 0.3"}, 'cyclefactor': {'what': '=3'}}


def _runs(channels):
    """[(first, count)] of consecutive channels."""
    runs = []
    for channel in sorted(channels):
        if runs and channel == runs[-1][0] + runs[-1][1]:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((channel, 1))
    return runs


def _redo(casa, arguments, *, first, count):
    """tclean of channels first..first+count-1 and one on each side (the cube's own channel centres), the first
    ones spliced into the cube."""
    imagename = arguments['imagename']
    with opened_tool(casa.casatools.image(), imagename + '.image') as image:
        nchan = int(image.shape()[3])
        # a channel on each side too (spliced back only the asked ones): briggsbwtaper needs a bandwidth
        low, high = max(0, first - 1), min(nchan - 1, first + count)
        coordinates = image.coordsys()
        axis = int(coordinates.findcoordinate('spectral')['pixel'][0])
        pixel = [0.0] * len(image.shape())
        pixel[axis] = low
        start = coordinates.toworld(pixel)['numeric'][axis]
        step = coordinates.increment(type='spectral')['numeric'][0]
        coordinates.done()
    part = '%s.redo%d' % (imagename, first)
    redo = dict(arguments, imagename=part, start='%.4fHz' % start, width='%.4fHz' % step, nchan=high - low + 1,
                calcpsf=True, calcres=True, restart=False, **REDO_SETTINGS)
    for name in AUTOMASK_PARAMETERS:
        redo.pop(name, None)
    redo.pop('fullsummary', None)
    casa_task(casa, 'tclean', about='%s channels %d-%d' % (imagename, first, first + count - 1), **redo)
    for suffix in SPLICED:
        _splice(casa, part + suffix, imagename + suffix, first=first, count=count, offset=first - low)
    for suffix in SPLICED + ('.sumwt', '.weight'):
        remove_tree(part + suffix) if _exists(part + suffix) else None


def _exists(path):
    import os
    return os.path.exists(path)


def _splice(casa, source, destination, *, first, count, offset=0):
    """Copy planes offset..offset+count-1 of source into planes first.. of destination, with their restoring beams."""
    if not (_exists(source) and _exists(destination)):
        return
    with opened_tool(casa.casatools.image(), source) as part, opened_tool(casa.casatools.image(), destination) as cube:
        shape = [int(n) for n in part.shape()]
        beams = part.restoringbeam()
        whole = cube.restoringbeam()
        for k in range(count):
            plane = part.getchunk(blc=[0, 0, 0, offset + k], trc=[shape[0] - 1, shape[1] - 1, shape[2] - 1, offset + k])
            cube.putchunk(plane, blc=[0, 0, 0, first + k])
            if 'beams' in whole:
                beam = beams['beams']['*%d' % (offset + k)]['*0'] if 'beams' in beams else beams
                cube.setrestoringbeam(beam=beam, channel=first + k, polarization=0)
