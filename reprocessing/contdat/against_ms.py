"""cont.dat checked against the measurement sets: every problem with file:line, and what to fit."""

import collections
from pathlib import Path

from ..casa.ms_tables import read_ms_layout, same_window, same_window_name, virtual_spws
from ..core.lookalikes import lookalike_hint
from ..core.fileops import relative_path
from ..core.messages import one_line, say
from .channels import ChannelConverter, channel_string, merge_channel_ranges
from .grammar import CONTDAT_FRAMES, ContDatErrors, ContRange, Problem, describe_problem, read_contdat


# -- the checker -----------------------------------------------------------------------------------

# What to fit, per MS, field and real spw.  chan: channel selection for uvcontsub ('' = all channels);
# order_flags: the cont.dat flags that made fitorder 0 (LOWBANDWIDTH, LOWSPREAD), as the pipeline reads them,
# on cont.dat's line order_line.
FitSelection = collections.namedtuple(
    'FitSelection', 'field_name field_ids spw_id virtual_id chan n_selected nchan fitorder line reason order_flags '
                    'order_line')
FitSelection.__new__.__defaults__ = ((), None)


class ContDatAnalysis(object):
    """cont.dat checked against the measurement sets, and the channels to fit in each of them."""

    def __init__(self, contdat, layouts):
        self.contdat = contdat
        self.layouts = layouts  # in time order
        self.virtual = virtual_spws(layouts)  # virtual spw id -> (layout, SpwInfo): cont.dat's spw numbers
        self.problems = []
        self.selections = collections.OrderedDict((str(layout.path), []) for layout in layouts)

    @property
    def errors(self):
        return [problem for problem in self.problems if problem.severity == 'error']

    def layout(self, ms):
        for layout in self.layouts:
            if layout.path == Path(ms):
                return layout
        raise KeyError(str(ms))

    def virtual_id(self, layout, spw_id):
        """The virtual id of a spw of this MS, as the line MS's cont.dat block names it."""
        for selection in self.selections.get(str(layout.path), []):
            if selection.spw_id == spw_id:
                return selection.virtual_id
        return spw_id


def analyse_contdat(contdat, measurement_sets, casa):
    layouts = sorted((read_ms_layout(casa, ms) for ms in measurement_sets), key=lambda l: (l.start, l.name))
    analysis = ContDatAnalysis(contdat, layouts)
    report = _ProblemCollector(contdat.display, [layout.eb for layout in layouts])
    converter = ChannelConverter(casa)
    for field in contdat.fields.values():
        _check_field(field, layouts, converter, analysis, report)
    _check_coverage_of_science_data(contdat, layouts, analysis, report)
    # In file order; what concerns no line of the file (data cont.dat does not mention) comes last.
    analysis.problems = sorted(list(contdat.problems) + report.problems(), key=lambda p: (
        p.line is None, p.line or 0, ('error', 'warning', 'note').index(p.severity)))
    return analysis


class _ProblemCollector(object):
    """Problems found per execution block, reported once per (line, message) with the EBs they concern."""

    def __init__(self, display, ebs):
        self.display = display
        self.ebs = ebs
        self._found = collections.OrderedDict()

    def add(self, severity, line, message, eb=None, detail=None):
        """message may hold "{where}", replaced by the execution blocks the problem was found in,
        each followed by its own detail (e.g. the frequencies its spw covers) when given."""
        key = (severity, line, message)
        self._found.setdefault(key, [])
        if eb is not None and eb not in [seen for seen, _detail in self._found[key]]:
            self._found[key].append((eb, detail))

    def problems(self):
        found = []
        for (severity, line, message), ebs in self._found.items():
            found.append(Problem(severity, self.display, line, message.replace('{where}', self._where(ebs))))
        return found

    def _where(self, ebs):
        details = [detail for _eb, detail in ebs if detail]
        suffix = ''
        if details and len(set(details)) == 1 and len(details) == len(ebs):
            suffix, details = ' (%s)' % details[0], []  # the same everywhere: say it once
        if not details and len(self.ebs) > 1 and len(ebs) == len(self.ebs):
            return ('in both execution blocks' if len(ebs) == 2 else 'in all %d execution blocks' % len(ebs)) + suffix
        named = ['%s (%s)' % (eb, detail) if details and detail else eb for eb, detail in ebs]
        if len(named) > 3:
            return 'in %d execution blocks (%s, ...)%s' % (len(named), ', '.join(named[:2]), suffix)
        return 'in ' + ', '.join(named) + suffix


def _check_field(field, layouts, converter, analysis, report):
    present = [layout for layout in layouts if field.name in layout.fields]
    if not present and any(field.name in layout.fields_without_rows for layout in layouts):
        # importasdm keeps the calibrators in FIELD; the pipeline reads blocks for fields it images only
        report.add('note', field.line, 'field "%s" has no data in any measurement set (it is only a row of their '
                   'FIELD tables, as calibrators are) — its block is not used' % field.name)
        return
    if not present:
        known = sorted({name for layout in layouts for name in layout.fields})
        report.add('error', field.line, 'field "%s" is in none of the measurement sets (they have %s) —%s correct '
                   'the name or delete its block' % (field.name, ', '.join(known) or 'no fields',
                                                     lookalike_hint(field.name, known)))
        return
    if not field.spws:
        report.add('warning', field.line, 'field "%s" has no spectral windows, so it is left out of the line '
                   'MSes — add its "SpectralWindow:" blocks' % field.name)
    for spw in field.spws.values():
        _check_ranges_among_themselves(spw, report)
        _check_spw_name(field, spw, analysis.virtual, report)
        # Like a target an execution block did not observe, a window an execution block does not have:
        # the block applies to the execution blocks that have it; only a window no EB has is an error.
        having = [layout for layout in layouts if map_spw(spw, layout, analysis.virtual) is not None]
        for layout in present:
            if having and layout not in having:
                report.add('note', spw.line, 'field "%s": %s is not {where}: the block applies to the execution '
                           'blocks that have it' % (field.name, _window_text(spw)), layout.eb,
                           'it has spws %s' % ', '.join(str(i) for i in layout.spws))
                continue
            _check_spw_in_ms(field, spw, layout, converter, analysis, report)


def _check_ranges_among_themselves(spw, report):
    if spw.ranges and spw.keywords:
        word, line = spw.keywords[0]
        report.add('warning', line, '%s stands beside frequency ranges in %s; like the pipeline, the ranges are '
                   'used — delete one of them' % (word, spw.label()))
    for frame in CONTDAT_FRAMES:
        ordered = sorted((r for r in spw.ranges if r.frame == frame), key=lambda r: r.lo_hz)
        for before, after in zip(ordered, ordered[1:]):
            if after.lo_hz < before.hi_hz:
                report.add('warning', after.line, 'in %s, %s overlaps %s (line %d); their union is fitted — '
                           'merge them into one range' % (spw.label(), _range_text(after), _range_text(before),
                                                          before.line))


def _check_spw_name(field, spw, virtual, report):
    if spw.name and spw.virtual_id in virtual and not same_window_name(virtual[spw.virtual_id][1].name, spw.name):
        defining, window = virtual[spw.virtual_id]
        report.add('warning', spw.line, 'spw %d is named %s in %s, not %s; like the pipeline, the name decides '
                   'which spw the block means — check the number'
                   % (spw.virtual_id, window.name, defining.eb, spw.name))


def map_spw(spw, layout, virtual):
    """The real spw id in layout of a cont.dat block, or None.

    The number in cont.dat is the pipeline's virtual id (virtual: virtual_spws of the execution
    blocks): the id in the first execution block with that window.  Other EBs may number the same
    window differently, so it is found there by name (the v3 name, else the name of the window that
    defines the id) and by number only when names say nothing.
    """
    name, spw_id = spw.name, spw.virtual_id
    if name is None:
        if spw.virtual_id not in virtual:
            return None
        defining, window = virtual[spw.virtual_id]
        if layout is defining:
            return window.id
        name, spw_id = window.name, window.id
    # A v3 name that no window of this EB has means another window: no fall-back to the number.
    return same_window(layout, name=name, spw_id=spw_id, by_number=spw.name is None)


def _check_spw_in_ms(field, spw, layout, converter, analysis, report):
    real_id = map_spw(spw, layout, analysis.virtual)
    if real_id is None:
        what = 'named %s' % spw.name if spw.name else 'numbered %d' % spw.virtual_id
        has = 'spws %s' % ', '.join('%d %s' % (i, s.name) if spw.name else str(i) for i, s in layout.spws.items())
        report.add('error', spw.line, 'field "%s": no spectral window %s {where} — correct the spw number%s or '
                   'delete the block' % (field.name, what, ' and name' if spw.name else ''), layout.eb,
                   'it has ' + has)
        return
    field_ids = layout.fields[field.name]
    if not layout.has_data(field_ids, real_id):
        return  # this field was not observed in that spw here: nothing to fit
    fitorder = 0 if spw.low_bandwidth else 1
    order_flags = tuple(flag for flag in spw.flags if flag in ('LOWBANDWIDTH', 'LOWSPREAD'))
    order_line = spw.flags_line or spw.line
    nchan = layout.spws[real_id].nchan
    if spw.fit_all_channels:
        report.add('note', spw.line, 'field "%s" %s: %s — the continuum is fitted over all channels, as the '
                   'pipeline does' % (field.name, spw.label(), spw.selection_word))
        analysis.selections[str(layout.path)].append(FitSelection(
            field.name, field_ids, real_id, spw.virtual_id, '', nchan, nchan, fitorder, spw.line,
            spw.selection_word, order_flags, order_line))
        return
    channel_ranges = _channels_of_ranges(field, spw, layout, real_id, converter, report)
    merged = merge_channel_ranges(channel_ranges)
    selected = sum(last - first + 1 for first, last in merged)
    if channel_ranges and selected < fitorder + 1:
        report.add('error', spw.line, 'field "%s" %s selects too few channels {where} for a fit of order %d — '
                   'widen the ranges' % (field.name, spw.label(), fitorder), layout.eb,
                   '%d channel%s' % (selected, '' if selected == 1 else 's'))
    if merged and selected >= fitorder + 1:
        analysis.selections[str(layout.path)].append(FitSelection(
            field.name, field_ids, real_id, spw.virtual_id, channel_string(merged), selected, nchan, fitorder,
            spw.line, 'ranges', order_flags, order_line))


def _channels_of_ranges(field, spw, layout, real_id, converter, report):
    """[(first, last)] channels of this MS that the block's ranges select, each problem reported at its line.

    Linear in the ranges: they go to advisechansel in groups, a group being ranges whose gaps are
    narrower than 0.9 channel.  No channel fits in such a gap, so the channels of the group's span are
    those of its ranges together; a group's call costs what one range's did (advisechansel reads the
    MS's times each time: 4,000 ranges took minutes, one call per range).  The spw's coverage in the
    frame, which tells a range outside or reaching beyond the spw, is asked (once) only for a group
    whose channels reach the spw's first or last channel, or that selects none: advisechansel clips a
    range at the spw's edges, so a group that stays off them lies inside.  Measured on the 4-EB bench
    delivery: 48 calls became 40 (8 blocks have a range at an edge) and the check's CPU 0.41 -> 0.33 s.
    """
    field_id = layout.fields[field.name][0]
    info = layout.spws[real_id]
    width = abs(info.high_hz - info.low_hz) / (info.nchan - 1) if info.nchan > 1 and info.high_hz is not None else 0.0
    channel_ranges = []
    for frame in CONTDAT_FRAMES:
        ranges = sorted((r for r in spw.ranges if r.frame == frame), key=lambda r: (r.lo_hz, r.hi_hz))
        if not ranges:
            continue
        groups = []
        for cont_range in ranges:
            if groups and cont_range.lo_hz - groups[-1][1] < 0.9 * width:
                groups[-1][1] = max(groups[-1][1], cont_range.hi_hz)
                groups[-1][2].append(cont_range)
            else:
                groups.append([cont_range.lo_hz, cont_range.hi_hz, [cont_range]])
        for low, high, members in groups:
            try:
                channels = converter.channels(layout.path, field_id, real_id, ContRange(low, high, frame,
                                                                                        members[0].line))
            except Exception as error:  # CASA raises plain RuntimeErrors
                _cannot_convert(members[0], field, layout, error, report)
                continue
            if channels is not None and channels[0] > 0 and channels[1] < info.nchan - 1:
                channel_ranges.append(channels)
                continue
            try:  # asked once per MS, field, spw and frame: the converter keeps the answer
                coverage = converter.coverage(layout.path, field_id, real_id, frame, casa_exact=False)
            except Exception as error:
                for cont_range in members:
                    _cannot_convert(cont_range, field, layout, error, report)
                continue
            covered = 'it covers %s %s' % (_ghz_text(*coverage), frame)
            for cont_range in members:
                outside = cont_range.hi_hz < coverage[0] or cont_range.lo_hz > coverage[1]
                if not outside and (cont_range.lo_hz < coverage[0] or cont_range.hi_hz > coverage[1]):
                    report.add('warning', cont_range.line, '%s reaches beyond %s of field "%s" {where}; only the '
                               'channels inside are fitted — trim the range' % (_range_text(cont_range), spw.label(),
                                                                              field.name), layout.eb, covered)
                if outside or channels is None:  # a group selecting no channel lies outside all the same
                    report.add('error', cont_range.line, '%s lies outside %s of field "%s" {where} — correct the '
                               'range' % (_range_text(cont_range), spw.label(), field.name), layout.eb, covered)
            if channels is not None:
                channel_ranges.append(channels)
    return channel_ranges


def _cannot_convert(cont_range, field, layout, error, report):
    report.add('error', cont_range.line, 'cannot convert %s of field "%s" to channels {where} (%s) — check the '
               'frame (SOURCE is for ephemeris targets only)' % (_range_text(cont_range), field.name,
                                                                  one_line(error)), layout.eb)


def _check_coverage_of_science_data(contdat, layouts, analysis, report):
    """Fields and spws with data that cont.dat does not mention, and what happens to them."""
    for layout in layouts:
        selections = analysis.selections[str(layout.path)]
        chosen_spws = {s.spw_id for s in selections}
        for name, field_ids in layout.fields.items():
            if name not in contdat.fields:
                report.add('warning', None, 'field "%s" has data {where} but no block in cont.dat, so it is left '
                           'out of the line MSes — add a "Field: %s" block (NONE fits all channels)' % (name, name),
                           layout.eb)
                continue
            for spw_id in sorted(chosen_spws):
                mentioned = any(s.field_name == name and s.spw_id == spw_id for s in selections)
                if layout.has_data(field_ids, spw_id) and not mentioned and _block_maps_here(
                        contdat.fields[name], spw_id, layout, analysis.virtual) is None:
                    # uvcontsub selects spws for all fields at once: the window is in the line MS anyway.
                    virtual = analysis.virtual_id(layout, spw_id)
                    report.add('warning', contdat.fields[name].line, 'field "%s" has no block for spw %d, which '
                               'other fields have; its continuum there is fitted over all channels {where} — add '
                               'a "SpectralWindow: %d" block for it' % (name, virtual, virtual), layout.eb)
                    nchan = layout.spws[spw_id].nchan
                    selections.append(FitSelection(name, field_ids, spw_id, virtual, '', nchan, nchan, 1,
                                                   contdat.fields[name].line, 'absent'))
        for spw in layout.spws.values():
            if spw.id not in chosen_spws and any(name in contdat.fields for name in layout.fields):
                report.add('note', None, 'spw %d (%s) is in no cont.dat block {where}: it is left out of the line '
                           'MSes, as the pipeline does' % (spw.id, spw.name), layout.eb)


def _block_maps_here(field, spw_id, layout, virtual):
    for spw in field.spws.values():
        if map_spw(spw, layout, virtual) == spw_id:
            return spw
    return None


def _window_text(spw):
    return 'spw %d (%s)' % (spw.virtual_id, spw.name) if spw.name else 'spw %d' % spw.virtual_id


def _range_text(cont_range):
    return '%s %s' % (_ghz_text(cont_range.lo_hz, cont_range.hi_hz), cont_range.frame)


def _ghz_text(lo_hz, hi_hz):
    return '%.6f~%.6fGHz' % (lo_hz / 1e9, hi_hz / 1e9)


def contdat_preflight(plan, casa):
    """Check cont.dat against the measurement sets before anything is written; stop on errors.

    Every continuum subtraction path calls this first.  It needs CASA (advisechansel and
    table reads), which the plan is made without, so it is the first thing the contsub step
    does; the plan itself already read cont.dat, so syntax errors stop even --dry-run.
    """
    analysis = plan.contdat_analysis
    if analysis is None:
        delivery = plan.delivery
        contdat = plan.read_contdat()
        say('  checking %s against %d measurement set(s)' % (contdat.display, len(delivery.targets)))
        analysis = analyse_contdat(contdat, delivery.targets, casa)
        for problem in analysis.problems:
            say('  ' + describe_problem(problem))
        plan.contdat_analysis = analysis
    errors = analysis.errors
    if errors:
        raise ContDatErrors(analysis.contdat.display, errors)
    return analysis


def read_delivery_contdat(delivery):
    """The delivery's caltables/cont.dat, read (pure Python).  On errors every one is printed as
    "caltables/cont.dat:LINE: error: ...", then ContDatErrors (one ERROR line counting them) is raised."""
    try:
        return read_contdat(delivery.contdat, display=relative_path(delivery.contdat, delivery.root))
    except ContDatErrors as errors:
        for line in errors.lines():
            say('  ' + line)
        raise


def say_fit_table(analysis, *, fitorder=None):
    for layout in analysis.layouts:
        selections = analysis.selections[str(layout.path)]
        if not selections:
            say('  %s: nothing to fit' % layout.eb)
            continue
        for s in selections:
            chosen = 'all %d channels' % s.nchan if not s.chan else 'channels %s (%d of %d)' % (
                s.chan, s.n_selected, s.nchan)
            say('  %s: field %s spw %d%s: %s, fit order %d%s' % (
                layout.eb, s.field_name, s.spw_id, ' (cont.dat spw %d)' % s.virtual_id if s.virtual_id != s.spw_id
                else '', chosen, s.fitorder if fitorder is None else fitorder, _order_reason(s, fitorder)))


def _order_reason(selection, fitorder):
    """Why a fit is of order 0 when cont.dat's flags chose it, and how to change that."""
    if fitorder is not None or not selection.order_flags:
        return ''
    return (' because of %s (cont.dat:%d, as the pipeline does) — remove the flag, or give --fitorder, to change '
            'it' % (' and '.join(selection.order_flags), selection.order_line))
