"""cont.dat grammar: read v1, v2 and v3 files into ContDat (pure: no CASA)."""

import collections
from pathlib import Path

from ..core.messages import ReprocessingError, shorten


#
# The format, as the pipeline writes and reads it (pipeline/infrastructure/contfilehandler.py):
#
#   v1:  FIELDNAME            v2:  Field: FIELDNAME        v3:  Field: FIELDNAME
#        SPW25                     SpectralWindow: 25           SpectralWindow: 25 X1#ALMA_RB_06#BB_1#SW-01#FULL_RES
#        215.1~215.6GHz            215.1~215.6GHz LSRK          Flags: LOWBANDWIDTH
#                                  NONE                         215.1~215.6GHz LSRK
#
# The pipeline's reader turns any line it does not recognise into a field name, so a typo
# silently becomes a field.  This reader is strict instead: every line must be one of the
# forms above, and an error names the line and says what to write.

CONTDAT_FRAMES = ('LSRK', 'SOURCE', 'TOPO')
CONTDAT_KEYWORDS = ('NONE', 'ALL', 'ALLCONT')
CONTDAT_FLAGS = ('ALLCONT', 'LOWBANDWIDTH', 'LOWSPREAD')
HZ_PER_UNIT = collections.OrderedDict([('Hz', 1.0), ('kHz', 1e3), ('MHz', 1e6), ('GHz', 1e9)])

ContRange = collections.namedtuple('ContRange', 'lo_hz hi_hz frame line')
Problem = collections.namedtuple('Problem', 'severity path line message')  # severity: error, warning, note


def describe_problem(problem):
    """'caltables/cont.dat:12: error: what — what to do': how every problem of cont.dat is reported."""
    where = '%s:%d' % (problem.path, problem.line) if problem.line else problem.path
    return '%s: %s: %s' % (where, problem.severity, problem.message)


class ContDatErrors(ReprocessingError):
    """cont.dat has errors: every one (Problems, in file order) and, as the message, one line that counts them."""

    def __init__(self, display, problems):
        self.problems = list(problems)
        count = len(self.problems)
        ReprocessingError.__init__(self, '%s has %d error%s (listed above) — correct %s and run again; nothing was '
                                         'written' % (display, count, '' if count == 1 else 's',
                                                      'it' if count == 1 else 'them'))

    def lines(self):
        return [describe_problem(problem) for problem in self.problems]


class ContDatSpw(object):
    """One spectral-window block: the pipeline's virtual spw id, its name (v3), ranges, flags."""

    def __init__(self, *, virtual_id, name, line):
        self.virtual_id = virtual_id
        self.name = name
        self.line = line
        self.ranges = []
        self.keywords = []  # [(word, line)] for NONE / ALL / ALLCONT lines
        self.flags = []
        self.flags_line = None  # the line of its (last) Flags: line
        self.implicit_topo = False  # a v1 (SPWn) block: its ranges carry no frame and are TOPO

    @property
    def fit_all_channels(self):
        """NONE, ALL, ALLCONT or an empty block: the pipeline fits the continuum over every channel."""
        return not self.ranges

    @property
    def low_bandwidth(self):
        """Flags for which the pipeline fits a constant (fit order 0) instead of a slope."""
        return 'LOWBANDWIDTH' in self.flags or 'LOWSPREAD' in self.flags

    @property
    def selection_word(self):
        """What a block without ranges says: NONE, ALL or ALLCONT (an empty block means NONE)."""
        if 'ALLCONT' in self.flags:
            return 'ALLCONT'
        return self.keywords[-1][0] if self.keywords else 'NONE'

    def label(self):
        return 'spw %d%s' % (self.virtual_id, ' (%s)' % self.name if self.name else '')


class ContDatField(object):
    def __init__(self, *, name, line):
        self.name = name
        self.line = line
        self.spws = collections.OrderedDict()  # virtual spw id -> ContDatSpw


class ContDat(object):
    """cont.dat, read: field name -> virtual spw id -> ranges, plus what reading noticed."""

    def __init__(self, *, path, display):
        self.path = Path(path)
        self.display = display  # how messages name the file, e.g. caltables/cont.dat
        self.version = 2
        self.fields = collections.OrderedDict()  # field name -> ContDatField
        self.problems = []  # warnings found while reading (duplicate blocks, unknown flags)

    def blocks(self):
        """(field, spw) for every spw block, in file order."""
        return [(field, spw) for field in self.fields.values() for spw in field.spws.values()]

    def warn(self, line, message):
        self.problems.append(Problem('warning', self.display, line, message))


def read_contdat(path, *, display=None):
    """Read a cont.dat of any version (v1, v2, v3); raise ContDatErrors listing every error with its line
    (ReprocessingError when the file cannot be read as text)."""
    path = Path(path)
    display = display or str(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ReprocessingError('cannot read %s (%s) — restore cont.dat from the delivery'
                                % (display, error.strerror or error))
    return parse_contdat(contdat_text(data, display=display), path=path, display=display)


def contdat_text(data, *, display):
    """cont.dat's bytes as text, as editors write it: a UTF-8 byte-order mark is dropped.

    A file that is not text (NUL bytes, not UTF-8) is described, never echoed to the terminal.
    """
    if b'\x00' in data:
        raise ReprocessingError('%s is not a text file (it holds %d NUL bytes) — restore cont.dat from the '
                                'delivery' % (display, data.count(b'\x00')))
    if data.startswith(b'\xef\xbb\xbf'):
        data = data[3:]
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as error:
        raise ReprocessingError('%s is not UTF-8 text (byte %d is 0x%02x) — save it as plain text (UTF-8), or '
                                'restore it from the delivery' % (display, error.start, data[error.start]))


class _LineError(Exception):
    """One line's error while reading: (what, what to do); reading goes on with the next line."""


def _fail(number, what, todo):
    raise _LineError(what, todo)


def parse_contdat(text, *, path, display):
    """cont.dat text -> ContDat.  Every line is read whatever errors earlier lines had (a line with an
    error is left out; a bad "Field:" or "SpectralWindow:" line opens a block that is not kept, so the
    lines under it are still read without follow-on errors); then ContDatErrors lists them all."""
    import re
    contdat = ContDat(path=path, display=display)
    lines = text.splitlines()
    # A file that uses "Field:" anywhere is v2/v3, where a bare line is a mistake, not a field (v1).
    bare_lines_are_fields = not any(line.strip().startswith('Field:') for line in lines)
    state = {'field': None, 'spw': None}
    saw = {'v1_spw': False, 'v3': False}
    errors = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        try:
            _read_line(contdat, line, number, state, saw, bare_lines_are_fields, errors)
        except _LineError as error:
            what, todo = error.args
            errors.append(Problem('error', display, number, '%s — %s' % (what, todo)))
            opens = line.lower().replace(' ', '')
            if opens.startswith('field:'):
                state['field'], state['spw'] = ContDatField(name='', line=number), None  # not kept
            elif opens.startswith('spectralwindow:') or re.match(r'^SPW\s*\d+$', line):
                state['spw'] = ContDatSpw(virtual_id=-1, name=None, line=number)  # not kept
    if errors:
        raise ContDatErrors(display, errors)
    contdat.version = 1 if saw['v1_spw'] else 3 if saw['v3'] else 2
    return contdat


def _read_line(contdat, line, number, state, saw, bare_lines_are_fields, errors):
    """Read one stripped, non-empty line into contdat (state: the open field and spw block); _LineError
    on the line's first error, range errors (one line may hold several ranges) appended to errors."""
    import re
    fail = _fail
    keyword = re.match(r'^(field|spectralwindow|flags)\s*:', line, re.IGNORECASE)
    if keyword and not line.startswith(('Field:', 'SpectralWindow:', 'Flags:')):
        proper = {'field': 'Field:', 'spectralwindow': 'SpectralWindow:', 'flags': 'Flags:'}[keyword.group(1).lower()]
        fail(number, '"%s": cont.dat keywords are case-sensitive, and the pipeline reads this line as a field '
                     'name' % shorten(line), 'write "%s"' % proper)
    if any(not (character.isprintable() or character.isspace()) for character in line):
        fail(number, 'the line holds characters that are not printable (%s)' % shorten(ascii(line)),
             'delete them, or restore cont.dat from the delivery')
    v1_spw = re.match(r'^SPW\s*(\d+)$', line)
    spw = state['spw']
    if line.startswith('#'):
        fail(number, '"%s" starts with "#", but cont.dat has no comments (the pipeline would read the line '
                     'as a field name)' % shorten(line), 'delete the line')
    elif line.startswith('Field:'):
        state['spw'] = None
        state['field'] = _start_field(contdat, _dequote(line[len('Field:'):].strip()), number, fail)
    elif line.startswith('SpectralWindow:'):
        words = line.split()
        if len(words) not in (2, 3) or not words[1].isdigit():
            fail(number, '"%s" is not "SpectralWindow: ID" nor "SpectralWindow: ID NAME"' % shorten(line),
                 'write e.g. "SpectralWindow: 25" or "SpectralWindow: 25 X1#ALMA_RB_06#BB_1#SW-01#FULL_RES"')
        saw['v3'] = saw['v3'] or len(words) == 3
        state['spw'] = _start_spw(contdat, state['field'], int(words[1]), words[2] if len(words) == 3 else None,
                                  number, fail)
    elif v1_spw:
        saw['v1_spw'] = True
        state['spw'] = _start_spw(contdat, state['field'], int(v1_spw.group(1)), None, number, fail)
        state['spw'].implicit_topo = True
    elif line.startswith('Flags:'):
        saw['v3'] = True
        _need_spw(spw, number, 'a Flags: line', fail)
        spw.flags_line = number
        for flag in line[len('Flags:'):].split():
            if flag not in CONTDAT_FLAGS:
                contdat.warn(number, 'unknown flag "%s" (the pipeline writes %s) — it is ignored; delete it'
                             % (flag, ', '.join(CONTDAT_FLAGS)))
            elif flag not in spw.flags:
                spw.flags.append(flag)
    elif line in CONTDAT_KEYWORDS:
        _need_spw(spw, number, line, fail)
        spw.keywords.append((line, number))
    elif '~' in line:
        _need_spw(spw, number, 'a frequency range', fail)
        for part in line.split(';'):
            if part.strip():
                try:
                    spw.ranges.append(_parse_range(part.strip(), number, spw.implicit_topo, fail))
                except _LineError as error:
                    what, todo = error.args
                    errors.append(Problem('error', contdat.display, number, '%s — %s' % (what, todo)))
    elif bare_lines_are_fields:
        state['spw'] = None
        state['field'] = _start_field(contdat, _dequote(line), number, fail)
    else:
        fail(number, '"%s" is not a cont.dat line' % shorten(line),
             'expected "Field: NAME", "SpectralWindow: ID [NAME]", "Flags: ...", NONE, ALL, ALLCONT or '
             'ranges like "215.1~215.6GHz LSRK"; correct or delete the line')


def _start_field(contdat, name, number, fail):
    if not name:
        fail(number, '"Field:" has no field name', 'write the MS field name after "Field:"')
    if name in contdat.fields:
        contdat.warn(number, 'field "%s" appears again (first at line %d); like the pipeline, only this later '
                             'block is used — merge the two blocks into one' % (name, contdat.fields[name].line))
    field = ContDatField(name=name, line=number)
    contdat.fields[name] = field
    return field


def _start_spw(contdat, field, virtual_id, name, number, fail):
    if field is None:
        fail(number, 'spectral window %d comes before any field' % virtual_id,
             'add a "Field: NAME" line above it')
    if virtual_id in field.spws:
        contdat.warn(number, 'spw %d of field "%s" appears again (first at line %d); like the pipeline, only this '
                             'later block is used — merge the two blocks into one'
                     % (virtual_id, field.name, field.spws[virtual_id].line))
    spw = ContDatSpw(virtual_id=virtual_id, name=name, line=number)
    field.spws[virtual_id] = spw
    return spw


def _need_spw(spw, number, what, fail):
    if spw is None:
        fail(number, '%s comes before any spectral window of its field' % what,
             'add a "SpectralWindow: ID" line above it')


def _parse_range(text, number, implicit_topo, fail):
    """'215.1~215.6GHz LSRK' -> ContRange in Hz.  v1 ranges carry no frame: they are TOPO."""
    import re
    number_pattern = r'(\d+(?:\.\d*)?|\.\d+)'
    match = re.match(r'^%s\s*~\s*%s\s*([A-Za-z]+)\s*(\S*)$' % (number_pattern, number_pattern), text)
    if not match:
        fail(number, 'cannot read the range "%s"' % shorten(text),
             'write it as LOW~HIGH with plain decimals, a unit and a frame, e.g. "215.1~215.6GHz LSRK"')
    low, high, unit, frame = match.groups()
    if unit not in HZ_PER_UNIT:
        fail(number, 'unit "%s" in "%s"' % (unit, shorten(text)),
             'use one of %s, spelled exactly so' % ', '.join(HZ_PER_UNIT))
    if not frame:
        if not implicit_topo:
            fail(number, 'the range "%s" has no frame' % shorten(text),
                 'add LSRK after it (SOURCE for ephemeris targets, TOPO if you mean topocentric)')
        frame = 'TOPO'
    if frame == 'REST':
        fail(number, 'the REST frame ("%s") is not supported' % shorten(text),
             'give the range in LSRK (SOURCE for ephemeris targets)')
    if frame not in CONTDAT_FRAMES:
        fail(number, 'unknown frame "%s" in "%s"' % (frame, shorten(text)),
             'use LSRK, SOURCE or TOPO, in capitals (the pipeline compares them exactly)')
    scale = HZ_PER_UNIT[unit]
    lo_hz, hi_hz = float(low) * scale, float(high) * scale
    # Equal ends are what findcont writes for a one-channel range: like the pipeline (advisechansel), the
    # range selects the channel holding that frequency (two where it is the edge between two).
    if lo_hz > hi_hz:
        fail(number, 'the range "%s" is reversed' % shorten(text), 'write the lower frequency first')
    return ContRange(lo_hz, hi_hz, frame, number)


def _dequote(text):
    if len(text) >= 2 and text[0] == text[-1] and text[0] in '"\'':
        return text[1:-1].strip()
    return text


# -- cont.dat in the grammar a pipeline release reads ------------------------------------------------
#
# Measured in each tag's pipeline/infrastructure/contfilehandler.py, ContFileHandler.read():
# * up to 2024.0.0.95 (PL2022, PL2023): v1 and v2 only.  Lines are not stripped (" SpectralWindow: 25"
#   or "ALL " match nothing); "SpectralWindow: 25 NAME" makes the spw id "25 NAME", which no spw has
#   (hif_uvcontfit: "No continuum region detection attempted"); "Flags: ..." and "ALLCONT" lines become
#   field names, so the ranges after them are dropped; NONE means "no continuum found", ALL "every channel".
# * from 2024.0.0.96 on (PL2024 and later): v1, v2 and v3.
# (which release reads which grammar: casa/pipeline_calls.py, contdat_grammar_read_by)


def contdat_in_grammar(text, grammar):
    """(text, changes): cont.dat text, read without errors, as a pipeline reading `grammar` (2 or 3) reads it.

    For grammar 3 the text is unchanged.  For grammar 2 every line is stripped and blank lines dropped;
    "SpectralWindow: N NAME" becomes "SpectralWindow: N", "Flags:" lines are left out, and ALLCONT (the
    line, or the flag of a block without ranges) becomes ALL.  changes: what was rewritten, in words
    ([] when only spacing changed).
    """
    import re
    if grammar >= 3:
        return text, []
    out = []
    counts = collections.Counter()
    block = {'allcont': False, 'selects': False}  # the current spw block: its ALLCONT flag, a range/keyword line

    def end_block():
        if block['allcont'] and not block['selects']:
            out.append('ALL')
            counts['allcont'] += 1

    for line in (raw.strip() for raw in text.splitlines()):
        if not line:
            continue
        if line.startswith(('Field:', 'SpectralWindow:')) or re.match(r'^SPW\s*\d+$', line):
            end_block()
            block = {'allcont': False, 'selects': False}
            words = line.split()
            if line.startswith('SpectralWindow:') and len(words) == 3:
                counts['names'] += 1
                line = ' '.join(words[:2])
        elif line.startswith('Flags:'):
            counts['flags'] += 1
            block['allcont'] = block['allcont'] or 'ALLCONT' in line.split()[1:]
            continue
        else:
            block['selects'] = True
            if line == 'ALLCONT':
                counts['allcont'] += 1
                line = 'ALL'
        out.append(line)
    end_block()
    def plural(number):
        return '' if number == 1 else 's'

    changes = []
    if counts['names']:
        changes.append('the spw names taken off %d "SpectralWindow: N NAME" line%s' % (counts['names'], plural(counts['names'])))
    if counts['flags']:
        changes.append('%d "Flags:" line%s left out' % (counts['flags'], plural(counts['flags'])))
    if counts['allcont']:
        changes.append('ALLCONT written as ALL (every channel is continuum)')
    return '\n'.join(out) + '\n', changes


# The delivered cont.dat's fingerprint, recorded by reprocessing_prep.py (in caltables/) or by the
# first --contsub_fast run that applies the delivered tables (in working_reprocess/): "edited or not"
# is then decided by content, not by modification times, which a cp -r rewrites.
CONTDAT_FINGERPRINT_NAME = '.cont.dat.delivered.sha256'


def contdat_fingerprint(path):
    """sha256 of cont.dat's text as the pipeline reads it: a byte-order mark and CRLF line ends do not count."""
    import hashlib
    data = Path(path).read_bytes()
    if data.startswith(b'\xef\xbb\xbf'):
        data = data[3:]
    return hashlib.sha256(data.replace(b'\r\n', b'\n')).hexdigest()


def recorded_contdat_fingerprint(places):
    """(fingerprint, where) of the first readable record among places, or (None, None)."""
    for place in places:
        try:
            value = Path(place).read_text(encoding='ascii').strip()
        except (OSError, UnicodeDecodeError):
            continue
        if len(value) == 64 and all(c in '0123456789abcdef' for c in value):
            return value, Path(place)
    return None, None
