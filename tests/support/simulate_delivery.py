#!/usr/bin/env python3
"""Simulate small, realistic ALMA-like deliveries with real CASA, for tests and demos.

Usage (CLI)::

    python tests/support/simulate_delivery.py OUTDIR [--n-ebs 2] [--layout working] [--with-line-ms] ...

Usage (Python)::

    from simulate_delivery import simulate_delivery, cached_delivery, copy_delivery
    truth = simulate_delivery('/tmp/d', n_ebs=2, with_uvcont=True)

What is made (one ``uid___A002_X<hex>_X<hex>`` execution block, EB, per ``n_ebs``; the
uids sort in chronological order):

``layout='calibrated_final'`` (Cycle 9/10 delivery, what users unpack)::

    OUTDIR/caltables/cont.dat
    OUTDIR/caltables/<uid>_targets.ms.hif_uvcontfit.s10_1.uvcont.tbl   (with_uvcont)
    OUTDIR/measurement_sets/<uid>_targets.ms        DATA = continuum + line + noise
    OUTDIR/measurement_sets/<uid>_targets_line.ms   DATA = line + noise  (with_line_ms)

``layout='working'`` (a restored pipeline working/ directory)::

    OUTDIR/working/<uid>_targets.ms, <uid>_targets_line.ms, cont.dat, uvcont tables
    plus clutter a preparation tool must ignore: the calibrated full MS <uid>.ms
    (all scratch columns, science data only), <uid>.ms.flagversions/,
    pipeline-20240101T000000/html/index.html and casa-20240101-000000.log

``layout='cycle8'`` (pre-Cycle-9 delivery, calibrated_final layout)::

    OUTDIR/caltables/cont.dat (+ uvcont tables named after <uid>_target.ms)
    OUTDIR/measurement_sets/<uid>_target.ms   (singular "target")
        DATA = continuum + line + noise, CORRECTED_DATA = line + noise (continuum
        subtracted exactly, same noise); no MODEL_DATA.  Also usable as a working MS.

``layout='cycle8_working'``: the same ``<uid>_target.ms`` + ``cont.dat`` (+ clutter)
in ``OUTDIR/working/``.

Everything is real CASA (``casatools.simulator`` + ``mstransform``); the visibilities
are computed here with numpy from the MS's own UVW (V = S exp(+2 pi i (ul + vm + w(n-1))
nu/c), checked against tclean).  ``OUTDIR/truth.json`` (also returned) records the
injected model.  Model details worth knowing:

* Science spws get the requested ids (default 25, 27) by padding the SPECTRAL_WINDOW
  table with data-less windows named like real ALMA ones (``WVR#NOMINAL``, calibration
  set-ups, the ``#CH_AVG`` partner of each science spw).  Science spws are
  ``X<n>#ALMA_RB_06#BB_<k>#SW-01#FULL_RES``; every other one is lower-sideband with a
  negative channel width (CHAN_FREQ descending; TOTAL_BANDWIDTH, EFFECTIVE_BW and
  RESOLUTION positive; NET_SIDEBAND 1 = LSB, 2 = USB as in the ASDM enumeration).
  One POLARIZATION row (XX YY), STATE OBS_MODE ``OBSERVE_TARGET#ON_SOURCE``, SOURCE
  rows per (source, science spw) with the line's rest frequency, ALMA-like scan numbers
  (gaps where calibrator scans would be), OBSERVATION PROJECT/SCHEDULE filled in.
* Every EB uses the same TOPO spw frequencies, the dates differ (a few days), so a
  line fixed in LSRK moves by ~2 channels per EB (``truth['ebs'][i]['spws'][j]
  ['line_topo_channel']``); all frame conversions use ``casatools.measures``.
* Source per field: point source at the phase centre + ``offset_arcsec`` (east, north);
  continuum S = continuum_jy * (nu_LSRK / continuum_reffreq)**spectral_index, where
  continuum_reffreq is the mean of the science spw centres (recorded); plus a Gaussian
  line (peak line_peak_jy, FWHM line_fwhm_kms) fixed in LSRK, by default one line at
  each science spw's centre (not in 128-channel TDM windows beside FDM ones: those are the
  continuum windows), else one at line_restfreq_ghz (systemic velocity 0).
  Channels are point-sampled at their centre frequency; primary-beam attenuation only in
  mosaics.  New shapes (keywords of simulate_delivery): ACA 7 m, full polarization, per-spw
  channel counts (TDM 128 beside 1920/3840 FDM), per-target spw set-ups, hexagonal mosaics,
  execution blocks that left a target out (``eb_fields``).
* Noise: complex Gaussian, sigma = noise_jy on each of the real and imaginary parts
  of every channel and correlation; WEIGHT = 1/sigma**2, SIGMA = sigma, FLAG false.
* Eras (``alma_cycle``): the cycle's dates and project code, and its spw names, with the
  GroupingID first from Cycle 12 (``X100001#X900000004#ALMA_RB_06#BB_1#SW-01#FULL_RES``).
  Lines of known LSRK velocity, width and integrated flux (``lines``), with the SOURCE table's
  REST_FREQUENCY and TRANSITION per spw; truth.json's ``lines`` lists every line (also the default one).
* cont.dat: the pipeline format (v2 default, v1, v3 with window names and ``Flags:`` lines); ranges lie inside every EB's
  LSRK coverage (one channel in from the edges) and keep 1.5 line FWHM clear on each
  side of each line (3 FWHM in all), narrowed (down to 1.0 FWHM) only when needed to
  keep >= 40 % of the band; the clearance used is in the truth.  The default line
  FWHM (line_fwhm_kms=None) is 10 km/s, or nchan/8 channels if narrower (16 channels:
  2.5 km/s), so that both hold for 2 EBs: with 20 km/s in 64 x 0.98 MHz the clearance
  drops to ~1.1 FWHM and the line wings bias an AMueller continuum fit by ~1.5 mJy
  (3 % of the default continuum).  A spw with no room left gets ``NONE``.
* uvcont tables (``with_uvcont``): the Cycle-5..9 pipeline's AMueller ('A') solution,
  solved per EB on a scratch copy over the cont.dat channels (per field, per scan);
  ``applycal`` of it subtracts the continuum.
"""
from __future__ import absolute_import, division, print_function

import argparse
import contextlib
import datetime
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np

__all__ = ['simulate_delivery', 'cached_delivery', 'copy_delivery', 'hexagonal_mosaic_offsets', 'main', 'LAYOUTS']

SIMULATOR_VERSION = 1
LAYOUTS = ('calibrated_final', 'working', 'cycle8', 'cycle8_working')

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # tests/support/..
_C_MS = 299792458.0
_C_KMS = _C_MS / 1000.0
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_ARCSEC = math.pi / 180.0 / 3600.0
# Measured with tclean: a source put at +offset with this sign images at +offset.
_PHASE_SIGN = +1.0

_CHAN_WIDTH_HZ = 976562.5          # 1.875 GHz / 1920, a common ALMA FDM width
_INTEGRATION_S = 6.048             # ALMA's usual integration time
_INTEGRATIONS_PER_SCAN = 5
_VISITS_PER_FIELD = 2
_GAP_BETWEEN_SCANS_S = 90.0        # stands in for the phase-calibrator scans
_FIRST_DATE = (2023, 4, 10)        # Cycle 9
_SPECTRAL_SPEC = 'X1189462395'     # science spectral spec; calibration set-ups use others
_CAL_SPECS = ('X1189461850', 'X1189462101')
_PROJECT = '2022.1.01234.S'
# alma_cycle=N: Cycle N observes from October of 2013 + N to September; its projects are (2013 + N).1.xxxxx.
# From Cycle 12 every ALMA spw name starts with the GroupingID before the SpectralSpec (PIPE-2697), as in
# the pipeline's example "X100001#X900000004#ALMA_RB_06#BB_1#SW-01#FULL_RES"; these ids are that example's.
_CYCLES = range(4, 14)             # 4..13: spw names carry a SpectralSpec since Cycle 3
_GROUPING_FROM_CYCLE = 12
_GROUPING_ID = 'X100001'
_GROUPING_SPECTRAL_SPEC = 'X900000004'
_GROUPING_CAL_SPECS = ('X900000001', 'X900000002')
# Gaussian line: integral = peak * FWHM * sqrt(pi / (4 ln 2))
_GAUSS_AREA = math.sqrt(math.pi / (4.0 * math.log(2.0)))
_LINE_KEYS = ('spw', 'velocity_kms', 'fwhm_kms', 'flux_jykms', 'rest_ghz', 'transition')
_SB_UID = 'uid://A001/X3570/X10f'
_ANTENNA_CFG = 'alma.cycle10.1.cfg'
_ANTENNA_NAMES = (['DA%02d' % i for i in range(41, 66)] + ['DV%02d' % i for i in range(1, 26)])
# The arrays: simmos configuration, antenna names, dish diameter (m), primary-beam FWHM in
# lambda / D (CASA's models, measured at 50 % on tclean .pb images at 217 GHz: 12 m 1.162,
# 7 m 1.175).  ACA 7 m antennas are CMnn and the MS still says TELESCOPE_NAME ALMA, as
# delivered 7 m data do.
_ARRAYS = {'12m': (_ANTENNA_CFG, _ANTENNA_NAMES, 12.0, 1.16),
           '7m': ('aca.cycle10.cfg', ['CM%02d' % i for i in range(1, 13)], 7.0, 1.175)}
_TDM_CHAN_WIDTH_HZ = 15.625e6      # 128-channel TDM windows: 2 GHz
_WIDE_FDM_BANDWIDTH_HZ = 1.875e9   # 1920 or 3840 channels over 1.875 GHz
_CORRELATIONS = {False: 'XX YY', True: 'XX XY YX YY'}
_EPHEMERIS_NAME = 'Ceres'
_EPHEMERIS_TEMPLATE = os.path.join('ephemerides', 'JPL-Horizons', 'Ceres_59214-62866dUTC_J2000.tab')
_AU_KM = 149597870.7
# (centre GHz, sideband) per science window, in order BB_1..BB_4, then SW-02 windows.
_SPW_PLAN = ((216.95, 'LSB'), (230.55, 'USB'), (218.95, 'LSB'), (232.55, 'USB'),
             (217.45, 'LSB'), (231.05, 'USB'), (219.45, 'LSB'), (233.05, 'USB'))
# Ophiuchus targets, close enough on the sky to share one SB.
_FIELDS = (('IRAS_16293-2422', '16h32m22.870s', '-24d28m36.40s'),
           ('Elias_2-27', '16h26m45.022s', '-24d23m07.70s'),
           ('WL_17', '16h27m06.770s', '-24d38m15.00s'),
           ('DoAr_25', '16h26m23.680s', '-24d43m13.90s'),
           ('Oph_IRS_63', '16h31m35.650s', '-24d01m29.50s'),
           ('VLA_1623-2417', '16h26m26.420s', '-24d24m30.00s'),
           ('WL_20', '16h27m15.900s', '-24d38m43.00s'),
           ('Elias_2-24', '16h26m24.080s', '-24d16m13.50s'))


# --------------------------------------------------------------------------- CASA

def _load_casa(logfile):
    """CASA configured for offline use through the project's loader."""
    if _REPO_ROOT not in sys.path:
        sys.path.insert(0, _REPO_ROOT)
    from scriptForReprocessing import load_casa
    return load_casa(logfile=logfile)


class _Casa(object):
    """The CASA tools one simulation uses."""

    def __init__(self, logfile):
        mods = _load_casa(logfile)
        self.ct = mods.casatools
        self.tk = mods.casatasks
        self.me = self.ct.measures()
        self.qa = self.ct.quanta()
        self.tb = self.ct.table()

    def done(self):
        for tool in (self.me, self.tb):
            try:
                tool.done()
            except Exception:
                pass


@contextlib.contextmanager
def _opened(tb, path, nomodify=True):
    tb.open(path, nomodify=nomodify)
    try:
        yield tb
    finally:
        tb.close()


# --------------------------------------------------------------------------- helpers

def _mjd_days(dt):
    return (dt - datetime.datetime(1858, 11, 17)).total_seconds() / 86400.0


def _iso(mjd_days):
    dt = datetime.datetime(1858, 11, 17) + datetime.timedelta(days=mjd_days)
    return dt.strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]


def _hms(rad):
    h = (math.degrees(rad) / 15.0) % 24.0
    hh = int(h)
    mm = int((h - hh) * 60)
    ss = (h - hh - mm / 60.0) * 3600.0
    return '%02dh%02dm%07.4fs' % (hh, mm, ss)


def _dms(rad):
    d = math.degrees(rad)
    sign = '-' if d < 0 else '+'
    d = abs(d)
    dd = int(d)
    mm = int((d - dd) * 60)
    ss = (d - dd - mm / 60.0) * 3600.0
    return '%s%02dd%02dm%06.3fs' % (sign, dd, mm, ss)


def _read_cfg(path):
    """(local east, north, up offsets [m], diameters, pads) from a simmos cfg (LOC)."""
    rows = []
    with open(path) as fh:
        for line in fh:
            line = line.split('#')[0].split()
            if len(line) >= 5:
                rows.append((float(line[0]), float(line[1]), float(line[2]), float(line[3]), line[4]))
    return rows


def _antenna_cfg(casa, name=_ANTENNA_CFG):
    rel = os.path.join('alma', 'simmos', name)
    try:
        import casadata
        path = os.path.join(casadata.datapath, rel)
    except ImportError:                       # monolithic CASA
        path = casa.ct.ctsys.resolve(rel)
    if not os.path.isfile(path):
        raise RuntimeError('cannot find the ALMA antenna file %s in the CASA data' % rel)
    return path


def _enu_to_itrf(obs_itrf, e, n, u):
    lon = obs_itrf['m0']['value']
    lat = obs_itrf['m1']['value']
    r = obs_itrf['m2']['value']
    x0 = r * math.cos(lat) * math.cos(lon)
    y0 = r * math.cos(lat) * math.sin(lon)
    z0 = r * math.sin(lat)
    e, n, u = (np.asarray(v, float) for v in (e, n, u))
    x = x0 - math.sin(lon) * e - math.sin(lat) * math.cos(lon) * n + math.cos(lat) * math.cos(lon) * u
    y = y0 + math.cos(lon) * e - math.sin(lat) * math.sin(lon) * n + math.cos(lat) * math.sin(lon) * u
    z = z0 + math.cos(lat) * n + math.sin(lat) * u
    return x, y, z


class _Frames(object):
    """LSRK/TOPO ratios at ALMA via casatools.measures (nu_LSRK = ratio * nu_TOPO)."""

    def __init__(self, casa):
        self.me = casa.me
        self.qa = casa.qa
        self.obs = self.me.observatory('ALMA')
        self._cache = {}

    def ratio(self, mjd_days, ra, dec):
        key = (round(mjd_days * 86400.0, 3), ra, dec)
        if key not in self._cache:
            me = self.me
            me.doframe(self.obs)
            me.doframe(me.epoch('UTC', self.qa.quantity(mjd_days, 'd')))
            me.doframe(me.direction('J2000', self.qa.quantity(ra, 'rad'), self.qa.quantity(dec, 'rad')))
            f0 = 230e9
            lsrk = me.measure(me.frequency('TOPO', self.qa.quantity(f0, 'Hz')), 'LSRK')
            self._cache[key] = lsrk['m0']['value'] / f0
        return self._cache[key]

    def last_hours(self, mjd_days):
        me = self.me
        me.doframe(self.obs)
        last = me.measure(me.epoch('UTC', self.qa.quantity(mjd_days, 'd')), 'LAST')
        return (last['m0']['value'] % 1.0) * 24.0

    def transit(self, mjd_day0, ra):
        """UTC (MJD days) of the first transit of right ascension ``ra`` after mjd_day0."""
        ra_h = math.degrees(ra) / 15.0
        t = mjd_day0
        for _ in range(3):
            dh = (ra_h - self.last_hours(t)) % 24.0
            if dh > 23.9:
                dh -= 24.0
            t += dh / 24.0 / 1.0027379093
        return t


# --------------------------------------------------------------------------- planning

def _validate(kw):
    if kw['layout'] not in LAYOUTS:
        raise ValueError('layout must be one of %s, not %r' % (', '.join(LAYOUTS), kw['layout']))
    if kw['contdat_version'] not in (1, 2, 3):
        raise ValueError('contdat_version must be 1, 2 or 3')
    spw_ids = [int(s) for s in kw['spw_ids']]
    most = len(_SPW_PLAN) if kw.get('spw_centres_ghz') is None else 2 * len(_SPW_PLAN)  # 16 with centres given
    if not spw_ids or len(spw_ids) > most:
        raise ValueError('give 1 to %d science spw ids' % most)
    if sorted(set(spw_ids)) != spw_ids or spw_ids[0] < 0:
        raise ValueError('spw_ids must be increasing non-negative integers, got %r' % (kw['spw_ids'],))
    if not 1 <= kw['n_fields'] <= len(_FIELDS):
        raise ValueError('n_fields must be 1..%d' % len(_FIELDS))
    if kw['n_ebs'] < 1:
        raise ValueError('n_ebs must be >= 1')
    if kw['nchan'] < 8:
        raise ValueError('nchan must be >= 8')
    if kw.get('array', '12m') not in _ARRAYS:
        raise ValueError('array must be one of %s' % ', '.join(sorted(_ARRAYS)))
    per_spw = kw.get('spw_nchan')
    if per_spw is not None and (len(per_spw) != len(spw_ids) or min(per_spw) < 8):
        raise ValueError('spw_nchan must give one channel count >= 8 per science spw (%d)' % len(spw_ids))
    per_field = kw.get('field_spw_ids')
    if per_field is not None:
        if len(per_field) != kw['n_fields'] or any(not ids or not set(ids) <= set(spw_ids) for ids in per_field):
            raise ValueError('field_spw_ids must give, per field (n_fields), a non-empty list of ids from spw_ids')
        if set(s for ids in per_field for s in ids) != set(spw_ids):
            raise ValueError('field_spw_ids must use every id of spw_ids')
    per_eb = kw.get('eb_fields')
    if per_eb is not None:
        if (len(per_eb) != kw['n_ebs'] or any(not ids or sorted(set(ids)) != list(ids) for ids in per_eb)
                or set(i for ids in per_eb for i in ids) != set(range(kw['n_fields']))):
            raise ValueError('eb_fields must give, per EB (n_ebs), a non-empty increasing list of field indices '
                             '0..n_fields-1, every field in at least one EB')
        if kw.get('mosaic_offsets_arcsec') or kw.get('ephemeris_radvel_kms') is not None:
            raise ValueError('eb_fields: not with a mosaic or an ephemeris target')
    if kw.get('ephemeris_radvel_kms') is not None and (kw.get('mosaic_offsets_arcsec') or kw['with_uvcont']
                                                        or kw['contdat_version'] == 1):
        raise ValueError('ephemeris_radvel_kms: not with a mosaic, uvcont tables or a v1 (TOPO) cont.dat')
    if kw.get('integrations_per_scan', 1) < 1:
        raise ValueError('integrations_per_scan must be >= 1')
    if not 0.0 <= kw.get('continuum_pol_fraction', 0.0) <= 1.0:
        raise ValueError('continuum_pol_fraction must be 0..1')
    if kw['n_antennas'] < 2:
        raise ValueError('n_antennas must be >= 2')
    centres = kw.get('spw_centres_ghz')
    if centres is not None and (len(centres) != len(spw_ids) or min(centres) <= 0):
        raise ValueError('spw_centres_ghz must give one positive centre frequency (GHz) per science spw (%d)'
                         % len(spw_ids))
    names = kw.get('field_names')
    if names is not None and (len(names) != kw['n_fields'] or len(set(names)) != len(names)
                              or not all(name.strip() for name in names)):
        raise ValueError('field_names must give n_fields (%d) different, non-blank names' % kw['n_fields'])
    if kw['noise_jy'] <= 0:
        raise ValueError('noise_jy must be > 0 (WEIGHT = 1/noise_jy**2)')
    if kw['with_line_ms'] and kw['layout'].startswith('cycle8'):
        raise ValueError('with_line_ms: Cycle 8 deliveries had no _line.ms (the _target.ms '
                         'CORRECTED_DATA holds the continuum-subtracted data)')
    if kw['line_fwhm_kms'] is not None and kw['line_fwhm_kms'] <= 0:
        raise ValueError('line_fwhm_kms must be > 0')
    if len(kw['offset_arcsec']) != 2:
        raise ValueError('offset_arcsec must be (east, north) arcsec')
    if kw.get('selfcal_phase_rms_deg', 0.0) and (kw['selfcal_phase_rms_deg'] < 0 or kw['layout'].startswith('cycle8')):
        raise ValueError('selfcal_phase_rms_deg must be >= 0, and self-calibrated deliveries are Cycle 11+ '
                         '(not the cycle8 layouts)')
    mosaic = kw.get('mosaic_offsets_arcsec')
    if mosaic is not None and (len(mosaic) < 2 or any(len(p) != 2 for p in mosaic)):
        raise ValueError('mosaic_offsets_arcsec must list 2 or more (east, north) pointing offsets, arcsec')
    _validate_era(kw, spw_ids)
    return spw_ids


def _validate_era(kw, spw_ids):
    """alma_cycle, lines and contdat_flags."""
    cycle = kw.get('alma_cycle')
    if cycle is not None:
        if cycle not in _CYCLES:
            raise ValueError('alma_cycle must be %d..%d' % (_CYCLES[0], _CYCLES[-1]))
        if kw['layout'].startswith('cycle8') != (cycle <= 8):
            raise ValueError('alma_cycle %d: the %s layout is Cycle %s' % (
                cycle, kw['layout'], '8 or earlier' if kw['layout'].startswith('cycle8') else '9 or later'))
        if kw.get('selfcal_phase_rms_deg') and cycle < 11:
            raise ValueError('selfcal_phase_rms_deg: self-calibrated deliveries are Cycle 11+, not %d' % cycle)
    for spec in kw.get('lines') or []:
        if (set(spec) - set(_LINE_KEYS) or not set(_LINE_KEYS[:4]) <= set(spec)
                or spec['spw'] not in spw_ids or spec['fwhm_kms'] <= 0 or spec['flux_jykms'] == 0):
            raise ValueError('lines: each is a dict of spw (one of spw_ids), velocity_kms, fwhm_kms (> 0), '
                             'flux_jykms (not 0) and optionally rest_ghz and transition, not %r' % (spec,))
    if kw.get('lines') and (kw['line_restfreq_ghz'] is not None or kw['line_fwhm_kms'] is not None
                            or kw.get('ephemeris_radvel_kms') is not None):
        raise ValueError('lines: not with line_restfreq_ghz, line_fwhm_kms or an ephemeris target (each line '
                         'says its own)')
    flags = kw.get('contdat_flags')
    if flags:
        if kw['contdat_version'] != 3:
            raise ValueError('contdat_flags: the pipeline writes Flags: lines in cont.dat v3 only')
        names = [_FIELDS[i][0] for i in range(kw['n_fields'])]
        if kw.get('ephemeris_radvel_kms') is not None:
            names[0] = _EPHEMERIS_NAME
        for name, per_spw in flags.items():
            index = names.index(name) if name in names else None
            spws = kw['field_spw_ids'][index] if index is not None and kw.get('field_spw_ids') else spw_ids
            if (index is None or not set(per_spw) <= set(spws)
                    or any(not set(f) <= {'LOWBANDWIDTH', 'LOWSPREAD', 'ALLCONT'} for f in per_spw.values())):
                raise ValueError('contdat_flags: {field name (one of %s): {spw id: [LOWBANDWIDTH, LOWSPREAD, '
                                 'ALLCONT]}}, not %r' % (', '.join(names), flags))


def _make_uids(rng, n_ebs, first_date):
    base = 0xe00000 + ((first_date.year - 2022) * 366 + first_date.timetuple().tm_yday) * 0x80
    base += int(rng.randint(0, 0x40))
    uids = []
    a = base
    for k in range(n_ebs):
        if k:
            a += int(rng.randint(0x100, 0x4000))   # increasing: sorted order = time order
        uids.append('uid___A002_X%06x_X%04x' % (a, int(rng.randint(0x1000, 0xffff))))
    return uids


def _science_chan_width(nchan):
    """ALMA-like channel width for a science window of nchan channels: 128 = TDM (15.625 MHz),
    3840 = 1.875 GHz / 3840; otherwise the 1920-channel FDM width (976.5625 kHz)."""
    if nchan == 128:
        return _TDM_CHAN_WIDTH_HZ
    return min(_CHAN_WIDTH_HZ, _WIDE_FDM_BANDWIDTH_HZ / nchan)


def _cycle_era(alma_cycle):
    """(first observing date, project code, science spectral spec, calibration specs, spw name prefix)."""
    if alma_cycle is None:
        return datetime.datetime(*_FIRST_DATE), _PROJECT, _SPECTRAL_SPEC, _CAL_SPECS, ''
    year = 2013 + alma_cycle        # Cycle 9 observes from October 2022 to September 2023, its projects 2022.1.*
    first = datetime.datetime(year, 11, 10)     # in its second month (Cycle 13's has passed: casadata knows it)
    project = '%d.1.01234.S' % year
    if alma_cycle >= _GROUPING_FROM_CYCLE:
        return first, project, _GROUPING_SPECTRAL_SPEC, _GROUPING_CAL_SPECS, _GROUPING_ID + '#'
    return first, project, _SPECTRAL_SPEC, _CAL_SPECS, ''


def _spw_table(spw_ids, nchan, spw_nchan=None, alma_cycle=None, centres_ghz=None):
    """All SPECTRAL_WINDOW rows 0..max(spw_ids): dicts for the simulator and the fix-ups.

    ``nchan`` channels of 976.5625 kHz in every science spw, or ``spw_nchan`` (one count per
    science spw) with the widths of _science_chan_width; centred as _SPW_PLAN, or at ``centres_ghz``.  Names as in
    ``alma_cycle`` (_cycle_era).
    """
    _date, _project, science_spec, cal_specs, prefix = _cycle_era(alma_cycle)
    rows = []
    science = {}
    for k, sid in enumerate(spw_ids):
        centre, sideband = _SPW_PLAN[k % len(_SPW_PLAN)]
        if centres_ghz is not None:
            centre = centres_ghz[k]
        science[sid] = (k, centre * 1e9, sideband)
    for sid in range(max(spw_ids) + 1):
        if sid in science:
            k, centre, sideband = science[sid]
            n_k = nchan if spw_nchan is None else int(spw_nchan[k])
            width = (_CHAN_WIDTH_HZ if spw_nchan is None else _science_chan_width(n_k)) * (
                -1.0 if sideband == 'LSB' else 1.0)
            rows.append(dict(id=sid, science=True, index=k, nchan=n_k, width=width, centre=centre,
                             sideband=sideband, bb=k % 4 + 1,
                             name='%s%s#ALMA_RB_06#BB_%d#SW-%02d#FULL_RES' % (prefix, science_spec, k % 4 + 1,
                                                                               k // 4 + 1)))
        elif sid == 0:
            rows.append(dict(id=0, science=False, nchan=4, width=1.5e9, centre=183.31e9 - 2.25e9,
                             sideband='USB', bb=0, name='WVR#NOMINAL'))
        elif sid - 1 in science:
            k, centre, sideband = science[sid - 1]
            rows.append(dict(id=sid, science=False, nchan=1, width=1.875e9, centre=centre, sideband=sideband,
                             bb=k % 4 + 1,
                             name='%s%s#ALMA_RB_06#BB_%d#SW-%02d#CH_AVG' % (prefix, science_spec, k % 4 + 1,
                                                                             k // 4 + 1)))
        else:
            # Calibration set-ups (pointing, ATM, ...): pairs FULL_RES / CH_AVG over 4 basebands.
            j = (sid - 1) % 8
            bb = j // 2 + 1
            centre, sideband = _SPW_PLAN[(bb - 1) % 4]
            spec = prefix + cal_specs[((sid - 1) // 8) % len(cal_specs)]
            if j % 2 == 0:
                rows.append(dict(id=sid, science=False, nchan=128, width=15.625e6, centre=centre * 1e9,
                                 sideband=sideband, bb=bb,
                                 name='%s#ALMA_RB_06#BB_%d#SW-01#FULL_RES' % (spec, bb)))
            else:
                rows.append(dict(id=sid, science=False, nchan=1, width=2e9, centre=centre * 1e9,
                                 sideband=sideband, bb=bb,
                                 name='%s#ALMA_RB_06#BB_%d#SW-01#CH_AVG' % (spec, bb)))
    for r in rows:
        if r['sideband'] == 'LSB':
            r['width'] = -abs(r['width'])
        r['chan_freq'] = r['centre'] + (np.arange(r['nchan']) - (r['nchan'] - 1) / 2.0) * r['width']
    return rows


def _schedule(frames, fields, n_ebs, sci_spws, first_date):
    """Start time (MJD days) of each EB: same hour angle, dates chosen so the line moves
    by ~2 channels per EB (searched day by day with the measures tool)."""
    ra0, dec0 = fields[0]['ra'], fields[0]['dec']
    spw = sci_spws[0]
    f_centre = spw['centre']
    dchan = abs(spw['width'])
    lead = 0.3 / 24.0    # start 18 min before transit of the first field

    def start_on(day):
        return frames.transit(day, ra0) - lead

    day0 = _mjd_days(datetime.datetime(*first_date))
    starts = [start_on(day0)]
    r0 = frames.ratio(starts[0], ra0, dec0)
    prev_day = day0
    for k in range(1, n_ebs):
        best = None
        for d in range(1, 300):
            day = prev_day + d
            t = start_on(day)
            # channel shift of a fixed LSRK frequency relative to EB 0
            shift = f_centre * (r0 / frames.ratio(t, ra0, dec0) - 1.0) / dchan
            err = abs(abs(shift) - 2.0 * k)
            if best is None or err < best[0] - 1e-9:
                best = (err, day, t)
            if err < 0.2:
                break
        prev_day = best[1]
        starts.append(best[2])
    return starts


def _scan_plan(n_fields, integrations=_INTEGRATIONS_PER_SCAN):
    """[(field index, start offset s, stop offset s, scan number)] for one EB."""
    plan = []
    t = 0.0
    scan = 5
    length = integrations * _INTEGRATION_S
    for _ in range(_VISITS_PER_FIELD):
        for f in range(n_fields):
            plan.append((f, t, t + length, scan))
            t += length + 10.0
            scan += 1
        t += _GAP_BETWEEN_SCANS_S
        scan += 2    # phase-calibrator scans in between
    return plan


# --------------------------------------------------------------------------- MS creation

def _simulate_raw(casa, path, plan, eb):
    """An MS from casatools.simulator with the right antennas, spws, fields and times."""
    ct, me, qa = casa.ct, casa.me, casa.qa
    sm = ct.simulator()
    sm.open(path)
    try:
        ants = plan['antennas']
        obs = me.observatory('ALMA')
        sm.setconfig(telescopename='ALMA', x=list(ants['x']), y=list(ants['y']), z=list(ants['z']),
                     dishdiameter=[plan['dish_m']] * len(ants['names']), mount=['alt-az'],
                     antname=list(ants['names']), padname=list(ants['pads']),
                     coordsystem='global', referencelocation=obs)
        for r in plan['spw_rows']:
            sm.setspwindow(spwname='spw%d' % r['id'], freq='%.6fHz' % r['chan_freq'][0],
                           deltafreq='%.6fHz' % r['width'], freqresolution='%.6fHz' % abs(r['width']),
                           nchannels=r['nchan'], stokes=plan['correlations'], refcode='TOPO')
        sm.setfeed(mode='perfect X Y', pol=[''])
        for f in plan['fields']:
            # mosaic pointings get unique names here (observe selects by name); _fix_metadata restores them
            sm.setfield(sourcename=f.get('sim_name', f['name']),
                        sourcedirection=me.direction('J2000', qa.quantity(f['ra'], 'rad'),
                                                     qa.quantity(f['dec'], 'rad')))
        sm.setlimits(shadowlimit=0.001, elevationlimit='3deg')
        sm.setauto(autocorrwt=0.0)
        sm.settimes(integrationtime='%.3fs' % _INTEGRATION_S, usehourangle=False,
                    referencetime=me.epoch('UTC', qa.quantity(eb['start_mjd'], 'd')))
        for fidx, t0, t1, _scan in plan['scans']:
            for r in plan['spw_rows']:
                field = plan['fields'][fidx]
                if r['science'] and r['id'] in field['spw_ids']:
                    sm.observe(sourcename=field.get('sim_name', field['name']), spwname='spw%d' % r['id'],
                               starttime='%.3fs' % t0, stoptime='%.3fs' % t1)
    finally:
        sm.close()
        sm.done()


def _fix_metadata(casa, path, plan, eb):
    """Make the simulator's subtables look like ALMA's."""
    tb = casa.tb
    with _opened(tb, path + '/SPECTRAL_WINDOW', nomodify=False):
        for r in plan['spw_rows']:
            i = r['id']
            tb.putcell('NAME', i, r['name'])
            tb.putcell('TOTAL_BANDWIDTH', i, abs(r['width']) * r['nchan'])
            tb.putcell('EFFECTIVE_BW', i, np.abs(tb.getcell('EFFECTIVE_BW', i)))
            tb.putcell('RESOLUTION', i, np.abs(tb.getcell('RESOLUTION', i)))
            tb.putcell('NET_SIDEBAND', i, 1 if r['sideband'] == 'LSB' else 2)
            tb.putcell('FREQ_GROUP', i, r['bb'])
            tb.putcell('FREQ_GROUP_NAME', i, 'BB_%d' % r['bb'] if r['bb'] else 'WVR')
    # The simulator writes one (identical XX YY) POLARIZATION row per spw; ALMA has one,
    # and the duplicates make concat invent extra DATA_DESCRIPTION rows.
    with _opened(tb, path + '/DATA_DESCRIPTION', nomodify=False):
        tb.putcol('POLARIZATION_ID', np.zeros(tb.nrows(), dtype=np.int32))
    with _opened(tb, path + '/POLARIZATION', nomodify=False):
        if tb.nrows() > 1:
            tb.removerows(list(range(1, tb.nrows())))
    with _opened(tb, path + '/STATE', nomodify=False):
        tb.putcell('OBS_MODE', 0, 'OBSERVE_TARGET#ON_SOURCE')
    with _opened(tb, path + '/OBSERVATION', nomodify=False):
        tb.putcell('OBSERVER', 0, 'jdoe')
        tb.putcell('PROJECT', 0, plan['project'])
        tb.putcell('SCHEDULE_TYPE', 0, 'ALMA')
        tb.putcell('SCHEDULE', 0, np.array(['SchedulingBlock %s' % _SB_UID,
                                            'ExecBlock %s' % eb['uid'].replace('uid___', 'uid://').replace('_', '/')]))
    # Mosaic pointings share a name and, as ALMA writes them, one SOURCE_ID (the simulator gives each
    # field its own: the pipeline's mosaicOverlapFactorMS, which finds a mosaic's pointings through its
    # source, then saw one pointing and returned 1.0).
    names = [f['name'] for f in plan['fields']]
    source_of_name = {}
    source_ids = [source_of_name.setdefault(name, len(source_of_name)) for name in names]
    first_field = dict((source_id, names.index(name)) for name, source_id in source_of_name.items())
    with _opened(tb, path + '/FIELD', nomodify=False):
        tb.putcol('CODE', np.array(['none'] * tb.nrows()))
        tb.putcol('NAME', np.array(names))
        tb.putcol('SOURCE_ID', np.array(source_ids, dtype=np.int32))
    # SOURCE: one row per (source, science spw) with the line's rest frequency.
    sci = [r for r in plan['spw_rows'] if r['science']]
    with _opened(tb, path + '/SOURCE', nomodify=False):
        tb.putcol('NAME', np.array([str(n).split('#')[0] for n in tb.getcol('NAME')]))
        cols = [c for c in tb.colnames()]
        by_field = dict((int(tb.getcell('SOURCE_ID', i)), i) for i in range(tb.nrows()))  # one row per field
        base = []
        for source_id in range(len(source_of_name)):
            i = by_field[first_field[source_id]]
            row_values = dict((c, tb.getcell(c, i)) for c in cols if tb.iscelldefined(c, i))
            row_values['SOURCE_ID'] = source_id
            base.append(row_values)
        tb.removerows(list(range(tb.nrows())))
        tb.addrows(len(base) * len(sci))
        row = 0
        for src in base:
            for r in sci:
                for c, v in src.items():
                    tb.putcell(c, row, v)
                tb.putcell('SPECTRAL_WINDOW_ID', row, r['id'])
                lines = plan['line_params'].get(r['id'], [])
                # one entry per line of the spw, as ALMA fills them from the spectral set-up
                rests = [line['rest'] for line in lines] or [r['centre']]
                tb.putcell('NUM_LINES', row, len(rests))
                tb.putcell('REST_FREQUENCY', row, np.array(rests))
                tb.putcell('SYSVEL', row, np.array([0.0] * len(rests)))
                tb.putcell('TRANSITION', row, np.array([line['transition'] for line in lines] or ['none']))
                row += 1
    # Main table: one scan number per (field, visit) for all spws, ALMA-like gaps.
    with _opened(tb, path, nomodify=False):
        times = tb.getcol('TIME')
        fids = tb.getcol('FIELD_ID')
        # The simulator's times start TAI-UTC (37 s) after referencetime: work relative.
        t_start = times.min() - tb.getcol('INTERVAL')[0] / 2.0
        scans = np.zeros(len(times), dtype=np.int32)
        for fidx, t0, t1, scan in plan['scans']:
            sel = (fids == fidx) & (times >= t_start + t0 - 1.0) & (times <= t_start + t1 + 1.0)
            scans[sel] = scan
        if (scans == 0).any():
            raise RuntimeError('internal error: rows outside the scan plan')
        tb.putcol('SCAN_NUMBER', scans)
        tb.putcol('STATE_ID', np.zeros(len(times), dtype=np.int32))


def _attach_ephemeris(casa, path, plan, scratch):
    """Attach an ephemeris table to field 0 of the MS; return its SOURCE/TOPO frequency ratio.

    The table has the columns and keywords of casadata's JPL-Horizons Ceres table (copied, rows
    replaced): every 0.05 d from a day before to a day after the EB, RA/DEC constant at the
    field's direction, Rho 1000 AU, RadVel the requested geocentric radial velocity.
    """
    tb, field = casa.tb, plan['fields'][0]
    try:
        import casadata
        template = os.path.join(casadata.datapath, _EPHEMERIS_TEMPLATE)
    except ImportError:
        template = casa.ct.ctsys.resolve(_EPHEMERIS_TEMPLATE)
    with _opened(tb, path):
        times = tb.getcol('TIME')
    first, last = times.min() / 86400.0, times.max() / 86400.0
    with _opened(tb, path + '/FIELD', nomodify=False):
        tb.putcell('TIME', 0, float(times.min()))     # addephemeris wants it inside the observation
    table = os.path.join(scratch, '%s_%d.tab' % (_EPHEMERIS_NAME, int(first)))
    if os.path.exists(table):
        shutil.rmtree(table)
    with _opened(tb, template):
        tb.copy(table, deep=True, valuecopy=True).close()
    step = 0.05
    mjd = np.arange(first - 1.0, last + 1.0 + step, step)
    n = len(mjd)
    with _opened(tb, table, nomodify=False):
        tb.removerows(list(range(tb.nrows())))
        tb.addrows(n)
        tb.putcol('MJD', mjd)
        tb.putcol('RA', np.full(n, math.degrees(field['ra']) % 360.0))
        tb.putcol('DEC', np.full(n, math.degrees(field['dec'])))
        tb.putcol('Rho', np.full(n, 1000.0))     # far: a diurnal parallax < 0.01 arcsec
        tb.putcol('RadVel', np.full(n, field['ephemeris_radvel_kms'] / _AU_KM * 86400.0))
        for col in ('NP_ang', 'NP_dist', 'DiskLong', 'DiskLat', 'Sl_lon', 'Sl_lat', 'r', 'rdot', 'phang'):
            tb.putcol(col, np.zeros(n))
        tb.putkeyword('MJD0', float(mjd[0] - step))
        tb.putkeyword('dMJD', step)
        tb.putkeyword('NAME', _EPHEMERIS_NAME)
        # without it CASA reads the positions as apparent (of date): 0.35 deg of precession away
        tb.putkeyword('posrefsys', 'ICRF/ICRS')
        for key, value in (('earliest', mjd[0]), ('latest', mjd[-1])):
            tb.putkeyword(key, {'m0': {'unit': 'd', 'value': float(value)}, 'refer': 'UTC', 'type': 'epoch'})
    ms = casa.ct.ms()
    ms.open(path, nomodify=False)
    try:
        if not ms.addephemeris(id=0, ephemerisname=table, comment=_EPHEMERIS_NAME, field=0):
            raise RuntimeError('ms.addephemeris failed on %s (see the CASA log)' % path)
    finally:
        ms.close()
    # With an ephemeris, CASA reads the FIELD directions as offsets from the ephemeris position
    # (measured: left at the field's direction, msmd.phasecenter moved to RA 143 deg, Dec +16 deg).
    with _opened(tb, path + '/FIELD', nomodify=False):
        for column in ('DELAY_DIR', 'PHASE_DIR', 'REFERENCE_DIR'):
            tb.putcell(column, 0, np.zeros_like(tb.getcell(column, 0)))
    spw = plan['sci_spws'][0]['id']
    ms.open(path)
    try:
        mid = casa.qa.time(casa.qa.quantity((first + last) / 2.0, 'd'), form='ymd')[0]
        topo = ms.cvelfreqs(spwids=[spw], fieldids=[0], mode='channel', outframe='TOPO', obstime=mid)
        source = ms.cvelfreqs(spwids=[spw], fieldids=[0], mode='channel', outframe='SOURCE', obstime=mid)
    finally:
        ms.close()
        ms.done()
    return float(source[0] / topo[0])


def _fill(casa, frames, plan, path, rng, noise=True):
    """Write DATA (= continuum + line + noise), CORRECTED_DATA (= line + noise), WEIGHT,
    SIGMA, FLAG.  Returns nothing; the noise is drawn from rng."""
    tb = casa.tb
    ddspw = _ddid_to_spw(casa, path)
    sigma = plan['noise_jy']
    with _opened(tb, path, nomodify=False):
        for ddid in sorted(set(tb.getcol('DATA_DESC_ID').tolist())):
            sub = tb.query('DATA_DESC_ID==%d' % ddid)
            try:
                for start, count in _row_chunks(sub.nrows(), plan['spw_by_id'][ddspw[ddid]]['nchan']):
                    cont, line = _model(frames, plan, sub, ddspw[ddid], start, count)
                    npol, nchan, nrow = cont.shape
                    if noise:
                        nz = (rng.normal(0.0, sigma, cont.shape) + 1j * rng.normal(0.0, sigma, cont.shape))
                    else:
                        nz = np.zeros(cont.shape, complex)
                    rows = dict(startrow=start, nrow=count)
                    sub.putcol('DATA', (cont + line + nz).astype(np.complex64), **rows)
                    sub.putcol('CORRECTED_DATA', (line + nz).astype(np.complex64), **rows)
                    sub.putcol('MODEL_DATA', np.zeros(cont.shape, np.complex64), **rows)
                    sub.putcol('WEIGHT', np.full((npol, nrow), 1.0 / sigma ** 2, np.float32), **rows)
                    sub.putcol('SIGMA', np.full((npol, nrow), sigma, np.float32), **rows)
                    sub.putcol('FLAG', np.zeros(cont.shape, bool), **rows)
                    sub.putcol('FLAG_ROW', np.zeros(nrow, bool), **rows)
            finally:
                sub.close()


def _row_chunks(nrows, nchan, values=4000000):
    """(start, count) pieces of about `values` visibilities per correlation, so that big
    deliveries (bench/) are written in bounded memory."""
    step = max(1, values // max(1, nchan))
    return [(start, min(step, nrows - start)) for start in range(0, nrows, step)]


def _pol_factors(plan):
    """Per correlation: (continuum, line) factors.  Linear feeds see an unpolarized source in XX
    and YY only; with full polarization the continuum has Stokes U = continuum_pol_fraction * I
    (Q = V = 0), so XY = YX = U, and the line is unpolarized (0 in XY and YX)."""
    if plan['correlations'] == 'XX YY':
        return np.ones(2), np.ones(2)
    u = plan['continuum_pol_fraction']
    return np.array([1.0, u, u, 1.0]), np.array([1.0, 0.0, 0.0, 1.0])


def _model(frames, plan, tb, spw_id, startrow=0, nrow=-1):
    """(continuum, line) visibilities, shape (ncorr, nchan, nrow), for those rows of tb."""
    spw = plan['spw_by_id'][spw_id]
    uvw = tb.getcol('UVW', startrow=startrow, nrow=nrow)
    times = tb.getcol('TIME', startrow=startrow, nrow=nrow)
    fids = tb.getcol('FIELD_ID', startrow=startrow, nrow=nrow)
    f_topo = spw['chan_freq']
    nrow = len(times)
    ratio = np.empty(nrow)
    for key in set(zip(times.tolist(), fids.tolist())):
        t, fid = key
        fld = plan['fields'][fid]
        sel = (times == t) & (fids == fid)
        if 'ephemeris_radvel_kms' in fld:       # the line is fixed in the body's rest frame
            ratio[sel] = plan['source_over_topo']
        else:
            ratio[sel] = frames.ratio(t / 86400.0, fld['ra'], fld['dec'])
    f_lsrk = ratio[None, :] * f_topo[:, None]                         # (nchan, nrow)
    amp_c = plan['continuum_jy'] * (f_lsrk / plan['continuum_reffreq']) ** plan['spectral_index']
    amp_l = np.zeros_like(f_lsrk)
    for line in plan['line_params'].get(spw_id, []):
        # Gaussian in radio velocity about the rest frequency: dv = c df / rest
        sig = line['fwhm_kms'] / _C_KMS * line['rest'] * _FWHM_TO_SIGMA
        amp_l += line['peak'] * np.exp(-0.5 * ((f_lsrk - line['nu']) / sig) ** 2)
    attenuation = _primary_beam(plan, fids, f_topo)                  # (nchan, nrow), 1 without a mosaic
    amp_c = amp_c * attenuation
    amp_l = amp_l * attenuation
    lmn = np.array([plan['fields'][fid]['lmn'] for fid in fids])      # (nrow, 3)
    path_m = uvw[0] * lmn[:, 0] + uvw[1] * lmn[:, 1] + uvw[2] * (lmn[:, 2] - 1.0)
    phase = np.exp(_PHASE_SIGN * 2j * math.pi * path_m[None, :] * f_topo[:, None] / _C_MS)
    cont_factors, line_factors = _pol_factors(plan)
    cont = cont_factors[:, None, None] * (amp_c * phase)[None, :, :]
    line = line_factors[:, None, None] * (amp_l * phase)[None, :, :]
    return cont, line




def _placed_lines(specs, sci, frames, starts, t_mid_off, field):
    """{spw id: [line, ...]} for the ``lines`` asked for.  A line sits at rest * (1 - v / c) in LSRK (v: the
    radio velocity), is a Gaussian in radio velocity of FWHM fwhm_kms, and its peak makes its integral over
    velocity flux_jykms; it must lie, with a FWHM on each side, inside every EB's LSRK coverage."""
    by_id = dict((r['id'], r) for r in sci)
    ratios = [frames.ratio(s + t_mid_off, field['ra'], field['dec']) for s in starts]
    placed = {}
    for spec in specs:
        r = by_id[spec['spw']]
        rest = spec['rest_ghz'] * 1e9 if spec.get('rest_ghz') is not None else r['centre']
        nu = rest * (1.0 - spec['velocity_kms'] / _C_KMS)
        half = spec['fwhm_kms'] / _C_KMS * rest
        lo, hi = r['chan_freq'].min(), r['chan_freq'].max()
        if not all(lo * q <= nu - half and nu + half <= hi * q for q in ratios):
            raise ValueError('the line at %g km/s (rest %.6f GHz, FWHM %g km/s) does not lie inside spw %d (%.4f to '
                             '%.4f GHz LSRK) with a FWHM on each side'
                             % (spec['velocity_kms'], rest / 1e9, spec['fwhm_kms'], r['id'], lo * min(ratios) / 1e9,
                                hi * max(ratios) / 1e9))
        placed.setdefault(r['id'], []).append(dict(
            nu=nu, rest=rest, fwhm_kms=spec['fwhm_kms'], velocity_kms=spec['velocity_kms'],
            flux_jykms=spec['flux_jykms'], peak=spec['flux_jykms'] / (spec['fwhm_kms'] * _GAUSS_AREA),
            transition=spec.get('transition') or 'simulated_line'))
    return placed


def _mosaic_pointings(fields, offsets):
    """Field 0 as one entry per mosaic pointing (same name and source, own direction and field id)."""
    first, rest = fields[0], fields[1:]
    pointings = []
    for k, (east, north) in enumerate(offsets):
        dec = first['dec'] + north * _ARCSEC
        ra = first['ra'] + east * _ARCSEC / math.cos(first['dec'])
        sra, sdec = first['source_ra'], first['source_dec']
        dra = sra - ra
        lmn = (math.cos(sdec) * math.sin(dra),
               math.sin(sdec) * math.cos(dec) - math.cos(sdec) * math.sin(dec) * math.cos(dra),
               math.sin(sdec) * math.sin(dec) + math.cos(sdec) * math.cos(dec) * math.cos(dra))
        separation = math.degrees(math.acos(min(1.0, lmn[2]))) * 3600.0
        pointings.append(dict(first, field_id=k, ra=ra, dec=dec, lmn=lmn, sim_name='%s#%d' % (first['name'], k),
                              pointing_offset_arcsec=[east, north], pb_separation_arcsec=separation))
    for i, field in enumerate(rest):
        pointings.append(dict(field, field_id=len(offsets) + i))
    return pointings


def hexagonal_mosaic_offsets(n_pointings, freq_ghz=230.0, dish_m=12.0):
    """[(east, north) arcsec] of an ALMA-like hexagonal mosaic: the n_pointings points of a
    hexagonal grid nearest its centre, in raster order (rows south to north, west to east).

    Spacing lambda / (sqrt(3) D), the Nyquist spacing of a hexagonal grid for a dish D (the
    ALMA OT's default, 0.511 x its 1.13 lambda / D beam), at freq_ghz.
    """
    n_pointings = int(n_pointings)
    if n_pointings < 2:
        raise ValueError('a mosaic needs at least 2 pointings')
    spacing = _C_MS / (freq_ghz * 1e9) / (math.sqrt(3.0) * dish_m) / _ARCSEC
    rings = int(math.ceil(math.sqrt(n_pointings))) + 1
    grid = []
    for j in range(-rings, rings + 1):
        for i in range(-rings, rings + 1):
            east = (i + 0.5 * (j % 2)) * spacing
            north = j * spacing * math.sqrt(3.0) / 2.0
            grid.append((round(math.hypot(east, north), 6), north, east))
    chosen = sorted(grid)[:n_pointings]
    return [(east, north) for _r, north, east in sorted(chosen, key=lambda p: (p[1], p[2]))]


def _primary_beam(plan, fids, f_topo):
    """Primary-beam gain of the source in each row's pointing, per channel (mosaics only): CASA's own beam
    (plan['pb_profile'], measured by _casa_primary_beam_profile), scaled to each channel's frequency."""
    separations = np.array([plan['fields'][fid].get('pb_separation_arcsec', 0.0) for fid in fids])
    if not separations.any():
        return np.ones((len(f_topo), len(fids)))
    radius_arcsec, gain, f0 = plan['pb_profile']
    # a beam's pattern scales with wavelength: the gain at separation r and frequency f is the profile's at r f / f0
    return np.interp(separations[None, :] * (f_topo[:, None] / f0), radius_arcsec, gain, right=0.0)


def _casa_primary_beam_profile(casa, raw, plan, scratch):
    """The primary-beam profile of the raw MS's first science spw (casa_primary_beam_profile)."""
    spw = plan['sci_spws'][0]
    return casa_primary_beam_profile(casa, raw, spw_id=spw['id'], centre_hz=spw['centre'], dish_m=plan['dish_m'],
                                     fwhm_lambda_over_d=plan['pb_fwhm_lambda_over_d'],
                                     imagename=os.path.join(scratch, 'primary-beam'))


def casa_primary_beam_profile(casa, ms, *, spw_id, centre_hz, dish_m, fwhm_lambda_over_d, imagename):
    """(radius arcsec, gain, frequency Hz): the radial profile of the primary beam CASA images with, read
    off a tclean .pb image of one pointing (field 0) of ms in spw_id (standard gridder, niter=0).

    Why not a Gaussian of CASA's FWHM: the models are Airy patterns, whose wings fall faster.  Measured on
    7 m at 217 GHz: a Gaussian of the same FWHM (1.175 lambda / D) gives 0.336 at 30" where CASA's beam is
    0.316 (6% more), so a source far from every pointing would come out too bright.  One tclean call with
    niter=0 (about 2 s).  Also used by simulate_combine, per execution block.
    """
    fwhm = fwhm_lambda_over_d * _C_MS / centre_hz / dish_m / _ARCSEC
    cell = fwhm / 50.0
    casa.tk.tclean(vis=ms, imagename=imagename, field='0', spw=str(spw_id), specmode='mfs', gridder='standard',
                   imsize=[256, 256], cell='%.4farcsec' % cell, niter=0, pblimit=1e-4, weighting='natural')
    image = casa.ct.image()
    try:
        image.open(imagename + '.pb')
        pb = image.getchunk(dropdeg=True)
        f0 = float(image.coordsys().referencevalue(format='n', type='spectral')['numeric'][0])
    finally:
        image.close()
    row = np.nan_to_num(np.asarray(pb[128:, 128], dtype=float))
    return np.arange(len(row)) * cell, row / row[0], f0


def _eb_plan(plan, eb):
    """The plan as one EB sees it: its own fields (FIELD rows) and scans."""
    return dict(plan, fields=eb['field_plan'], scans=eb['scan_plan'])


def _spws_of(plan, field):
    """The science spws (plan rows) a field is observed in."""
    return [spw for spw in plan['sci_spws'] if spw['id'] in field['spw_ids']]


def _unique_by_name(fields):
    """One entry per field name (a mosaic's pointings share theirs)."""
    seen, unique = set(), []
    for field in fields:
        if field['name'] not in seen:
            seen.add(field['name'])
            unique.append(field)
    return unique


def _ddid_to_spw(casa, path):
    with _opened(casa.tb, path + '/DATA_DESCRIPTION'):
        return dict(enumerate(casa.tb.getcol('SPECTRAL_WINDOW_ID').tolist()))


def _mstransform(casa, src, dst, datacolumn, noise_jy):
    casa.tk.mstransform(vis=src, outputvis=dst, datacolumn=datacolumn, reindex=False)
    if not os.path.isdir(dst):
        raise RuntimeError('mstransform did not write %s (see the CASA log)' % dst)
    # mstransform(datacolumn='data') rewrites WEIGHT as 1/SIGMA**2 from the float32
    # SIGMA (249999.97 instead of 250000): put the exact value back.
    with _opened(casa.tb, dst, nomodify=False):
        w = casa.tb.getcol('WEIGHT')
        casa.tb.putcol('WEIGHT', np.full(w.shape, 1.0 / noise_jy ** 2, np.float32))


def _add_corrected(casa, frames, plan, path):
    """Cycle 8: CORRECTED_DATA = DATA - continuum model (exact), no MODEL_DATA."""
    cb = casa.ct.calibrater()
    cb.open(path, compress=False, addcorr=True, addmodel=False)
    cb.close()
    cb.done()
    tb = casa.tb
    ddspw = _ddid_to_spw(casa, path)
    with _opened(tb, path, nomodify=False):
        for ddid in sorted(set(tb.getcol('DATA_DESC_ID').tolist())):
            sub = tb.query('DATA_DESC_ID==%d' % ddid)
            try:
                for start, count in _row_chunks(sub.nrows(), plan['spw_by_id'][ddspw[ddid]]['nchan']):
                    cont, _line = _model(frames, plan, sub, ddspw[ddid], start, count)
                    data = sub.getcol('DATA', startrow=start, nrow=count)
                    sub.putcol('CORRECTED_DATA', (data - cont).astype(np.complex64), startrow=start, nrow=count)
            finally:
                sub.close()


def _antenna_phase_errors(casa, path, rms_deg, rng):
    """{(TIME, antenna): phase (rad)}: the regular calibration's residual phase errors, drawn once per EB."""
    with _opened(casa.tb, path):
        times = sorted(set(casa.tb.getcol('TIME').tolist()))
        antennas = sorted(set(casa.tb.getcol('ANTENNA1').tolist()) | set(casa.tb.getcol('ANTENNA2').tolist()))
    draws = rng.normal(0.0, math.radians(rms_deg), (len(times), len(antennas)))
    return dict(((t, a), draws[i, j]) for i, t in enumerate(times) for j, a in enumerate(antennas))


def _split_into_regcal_and_selfcal(casa, path, phases):
    """hif_selfcal's layout: CORRECTED_DATA = DATA as it is (self-calibrated), DATA = it with phase errors."""
    cb = casa.ct.calibrater()
    cb.open(path, compress=False, addcorr=True, addmodel=False)
    cb.close()
    cb.done()
    tb = casa.tb
    with _opened(tb, path, nomodify=False):
        for ddid in sorted(set(tb.getcol('DATA_DESC_ID').tolist())):
            sub = tb.query('DATA_DESC_ID==%d' % ddid)
            try:
                data = sub.getcol('DATA')
                sub.putcol('CORRECTED_DATA', data)
                ant1, ant2, times = sub.getcol('ANTENNA1'), sub.getcol('ANTENNA2'), sub.getcol('TIME')
                error = np.array([phases[(t, a)] - phases[(t, b)] for t, a, b in zip(times, ant1, ant2)])
                sub.putcol('DATA', (data * np.exp(1j * error)[None, None, :]).astype(np.complex64))
            finally:
                sub.close()


def _solve_uvcont(casa, ms_path, table_path, plan, eb, scratch):
    """AMueller continuum fit over the cont.dat channels (per field), as hif_uvcontfit."""
    work = os.path.join(scratch, 'uvcont-%s' % eb['uid'])
    os.makedirs(work)
    copy = os.path.join(work, os.path.basename(ms_path))
    shutil.copytree(ms_path, copy, symlinks=True)
    tab = os.path.join(work, os.path.basename(table_path))
    cb = casa.ct.calibrater()
    try:
        cb.setvi(old=True, quiet=True)
        cb.open(copy, compress=False, addcorr=False, addmodel=False)
        first = True
        for fld in _unique_by_name(plan['fields']):
            fitspw = eb['fitspw'][fld['name']]
            if not fitspw:          # cont.dat says NONE everywhere: no fit (as the pipeline)
                continue
            cb.reset()
            cb.selectvis(field=fld['name'], spw=fitspw)
            cb.setsolve(type='A', t='inf', table=tab, append=not first, fitorder=plan['uvcont_fitorder'])
            cb.solve()
            first = False
    finally:
        cb.close()
        cb.done()
    if not os.path.isdir(tab):
        raise ValueError('with_uvcont: cont.dat leaves no continuum channels for %s (line too wide '
                         'for the band? lower line_fwhm_kms or raise nchan)' % eb['uid'])
    shutil.move(tab, table_path)
    shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- cont.dat

def _subtract(intervals, holes):
    out = list(intervals)
    for lo, hi in holes:
        nxt = []
        for a, b in out:
            if hi <= a or lo >= b:
                nxt.append((a, b))
                continue
            if lo > a:
                nxt.append((a, lo))
            if hi < b:
                nxt.append((hi, b))
        out = nxt
    return [(a, b) for a, b in out if b > a]


def _cont_ranges(plan, ebs):
    """Per field, per science spw: LSRK ranges (Hz), TOPO ranges for v1 (Hz), and the
    clearance used; plus per EB the TOPO channel selection (fitspw)."""
    result = {}
    for fld in plan['fields']:
        per_spw = {}
        for spw in _spws_of(plan, fld):
            f = spw['chan_freq']
            dw = abs(spw['width'])
            topo_lo, topo_hi = f.min() - dw / 2.0, f.max() + dw / 2.0
            ratios = [eb['mid_ratio'][fld['name']] for eb in ebs if fld['name'] in eb['mid_ratio']]
            # inside the LSRK coverage of every EB that observed the field, one channel in from each edge
            lsrk_lo = max(r * topo_lo for r in ratios) + dw
            lsrk_hi = min(r * topo_hi for r in ratios) - dw
            topo_in_lo, topo_in_hi = topo_lo + dw, topo_hi - dw
            lines = plan['line_params'].get(spw['id'], [])
            band = spw['nchan'] * dw
            chosen = None
            for clear in np.arange(1.5, 0.999, -0.05):
                holes = [(line['nu'] - clear * line['fwhm_kms'] / _C_KMS * line['rest'],
                          line['nu'] + clear * line['fwhm_kms'] / _C_KMS * line['rest']) for line in lines]
                lsrk = _subtract([(lsrk_lo, lsrk_hi)], holes)
                topo_holes = [(a / r, b / r) for a, b in holes for r in ratios]
                topo = _subtract([(topo_in_lo, topo_in_hi)], topo_holes)
                cover = min(sum(b - a for a, b in lsrk), sum(b - a for a, b in topo)) / band
                chosen = (float(clear), lsrk, topo, cover)
                if cover >= 0.4:
                    break
            clear, lsrk, topo, cover = chosen
            per_spw[spw['id']] = dict(lsrk=lsrk, topo=topo, clear_fwhm=round(clear, 2), coverage=cover)
        result[fld['name']] = per_spw
    return result


def _fitspw(plan, eb, ranges):
    """Per field of this EB: the TOPO channels of this EB whose whole width lies in a cont.dat range."""
    out = {}
    for fld in eb['field_plan']:
        r = eb['mid_ratio'][fld['name']]
        parts = []
        for spw in _spws_of(plan, fld):
            f = spw['chan_freq'] * r
            dw = abs(spw['width']) * r
            ok = np.zeros(spw['nchan'], bool)
            for a, b in ranges[fld['name']][spw['id']]['lsrk']:
                ok |= (f - dw / 2.0 >= a) & (f + dw / 2.0 <= b)
            chans = np.nonzero(ok)[0]
            if len(chans) == 0:
                continue
            runs = np.split(chans, np.nonzero(np.diff(chans) > 1)[0] + 1)
            parts.append('%d:%s' % (spw['id'], ';'.join('%d~%d' % (run[0], run[-1]) for run in runs)))
        out[fld['name']] = ','.join(parts)
    return out


def _write_contdat(path, plan, ranges, version):
    """cont.dat as the pipeline writes it (contfilehandler): per field "Field: NAME" and a blank line, per
    window its header (v3: "SpectralWindow: 25 NAME", then "Flags: ..." if any), its ranges, a blank line;
    a window without ranges says NONE in v1/v2 and nothing in v3."""
    lines = []
    for fld in _unique_by_name(plan['fields']):
        lines.append(fld['name'] if version == 1 else 'Field: %s' % fld['name'])
        lines.append('')
        for spw in _spws_of(plan, fld):
            rr = ranges[fld['name']][spw['id']]
            if version == 1:
                lines.append('SPW%d' % spw['id'])
                items = ['%.10f~%.10fGHz' % (a / 1e9, b / 1e9) for a, b in rr['topo']]
            else:
                head = 'SpectralWindow: %d' % spw['id']
                if version == 3:
                    head += ' %s' % spw['name']
                lines.append(head)
                flags = plan['contdat_flags'].get(fld['name'], {}).get(spw['id'])
                if flags:
                    lines.append('Flags: %s' % ' '.join(flags))
                frame = 'SOURCE' if 'ephemeris_radvel_kms' in fld else 'LSRK'
                items = ['%.10f~%.10fGHz %s' % (a / 1e9, b / 1e9, frame) for a, b in rr['lsrk']]
            lines.extend(items or ([] if version == 3 else ['NONE']))
            lines.append('')
    with open(path, 'w') as fh:
        fh.write('\n'.join(lines) + '\n')


# --------------------------------------------------------------------------- clutter

def _working_clutter(workdir, ebs):
    pl = os.path.join(workdir, 'pipeline-20240101T000000', 'html')
    os.makedirs(pl)
    with open(os.path.join(pl, 'index.html'), 'w') as fh:
        fh.write('<html><head><title>Pipeline Weblog</title></head><body>'
                 '<h1>%s</h1><p>simulated weblog</p></body></html>\n' % _PROJECT)
    with open(os.path.join(workdir, 'casa-20240101-000000.log'), 'w') as fh:
        fh.write('2024-01-01 00:00:00\tINFO\t::casa\tCASA Version 6.5.4-9 (simulated log)\n')
    for eb in ebs:
        fv = os.path.join(workdir, eb['uid'] + '.ms.flagversions')
        os.makedirs(os.path.join(fv, 'flags.Original'))
        with open(os.path.join(fv, 'FLAG_VERSION_LIST'), 'w') as fh:
            fh.write('Original : Original flags at import into CASA\n')


# --------------------------------------------------------------------------- main API

def simulate_delivery(outdir, *, n_ebs=2, n_fields=1, spw_ids=(25, 27), nchan=64, n_antennas=12,
                      layout='calibrated_final', with_line_ms=False, with_uvcont=False,
                      contdat_version=2, continuum_jy=0.05, spectral_index=0.0,
                      offset_arcsec=(0.0, 0.0), line_peak_jy=0.2, line_fwhm_kms=None,
                      line_restfreq_ghz=None, noise_jy=0.002, seed=1, pipeline_ready=False,
                      casa_logfile=None, mosaic_offsets_arcsec=None, array='12m', full_polarization=False,
                      continuum_pol_fraction=None, spw_nchan=None, field_spw_ids=None,
                      integrations_per_scan=_INTEGRATIONS_PER_SCAN, selfcal_phase_rms_deg=0.0,
                      ephemeris_radvel_kms=None, eb_fields=None, alma_cycle=None, lines=None,
                      contdat_flags=None, spw_centres_ghz=None, field_names=None):
    """Write a simulated ALMA delivery into ``outdir`` (new or empty); return the truth dict.

    See the module docstring for the layouts and the model.  ``pipeline_ready`` adds the
    metadata the ALMA pipeline needs (tests/support/pipeline_ready.py).  ``casa_logfile`` (default: a file in the system temp
    directory) only takes effect if CASA was not imported yet in this process.
    ``mosaic_offsets_arcsec`` [(east, north), ...]: field 0 becomes a mosaic of these pointings
    (FIELD rows of the same name, offsets from the field's position); each pointing sees the
    source through a Gaussian primary beam (FWHM 1.16 lambda / 12 m, as CASA's ALMA model);
    ``hexagonal_mosaic_offsets`` makes ALMA's Nyquist-spaced pattern.
    ``array='7m'``: ACA 7 m antennas (CMnn, 7 m dishes, pads of casadata's aca.cycle10.cfg, at most
    10), the primary beam scaled to 7 m.  ``full_polarization``: four correlations XX XY YX YY; the
    continuum has Stokes U = ``continuum_pol_fraction`` (default 0.05) of I, so XY = YX = that
    fraction of the continuum, the line is unpolarized (XX = YY = I, Stokes I = (XX + YY) / 2).
    ``spw_nchan`` [n, ...]: channels per science spw (128 = TDM, 15.625 MHz channels; 3840 =
    488 kHz; others 976.5625 kHz), instead of ``nchan`` everywhere.  ``field_spw_ids`` [[ids], ...]:
    per field, the science spws it is observed in (a multi-source SB with one spw set-up per
    target; cont.dat, fits and truth follow).  ``eb_fields`` [[field indices], ...]: per EB, the
    targets (indices 0..n_fields-1) it observed, e.g. ``[[0, 1], [0], [1]]``: EB 2 did not observe
    target 1.  Such an EB's ``_targets.ms`` has no FIELD row for a target it did not observe (as
    the pipeline's split leaves it: the ASDM of that EB never had the field), so its fields are
    numbered 0.. in its own order (a target's field id differs between EBs); its SPECTRAL_WINDOW
    table is the same as every EB's (spws no field of it observes have no rows).  cont.dat keeps
    a block for every target (it is per source, for the whole SB), whose ranges lie inside the
    LSRK coverage of the EBs that observed it; truth.json says per EB which fields it holds
    (``ebs[i]['fields']``: name and field id in that MS; every delivery has it) and lists in
    ``ebs[i]['spws']`` the spws it has data in.  ``integrations_per_scan`` (default 5) keeps large
    mosaics small.  ``ephemeris_radvel_kms``: field 0 becomes an ephemeris target (named
    Ceres) with an ephemeris table attached to FIELD (ms.addephemeris; the JPL-Horizons format
    CASA's converter writes, copied from casadata's Ceres table) whose position is constant (the
    field's, so the simulator's fixed-direction UVWs stay right) and whose geocentric radial
    velocity is this; its line is fixed in the SOURCE frame (the body's rest frame, as CASA's
    ms.cvelfreqs converts it) and its cont.dat ranges are written in SOURCE.
    ``selfcal_phase_rms_deg`` > 0: the Cycle 11+ era (hif_selfcal).  Each ``*_targets.ms`` (and
    ``*_targets_line.ms`` with ``with_line_ms``) holds DATA = the visibilities times per-antenna,
    per-integration phase errors of that rms (the regular calibration) and CORRECTED_DATA = the
    uncorrupted visibilities (the self-calibrated data), as hif_selfcal leaves them.
    ``alma_cycle`` (4..13; default: the Cycle 9 date and names of old): the cycle's dates (its November) and
    project code, and its spw names: ``X<spectral spec>#ALMA_RB_06#BB_1#SW-01#FULL_RES`` before Cycle 12,
    ``X100001#X900000004#ALMA_RB_06#BB_1#SW-01#FULL_RES`` (GroupingID first, PIPE-2697) from Cycle 12.
    ``lines`` [{spw, velocity_kms, fwhm_kms, flux_jykms, rest_ghz, transition}, ...] instead of the default
    line: Gaussian lines of known LSRK radio velocity, FWHM (km/s) and integrated flux (Jy km/s) about their
    rest frequency (default: the spw's centre), the SOURCE table's REST_FREQUENCY and TRANSITION filled per
    spw with one entry per line, as ALMA fills them (``transition`` as ALMA writes it, e.g.
    ``CO_v_0_2_1(ID=0)``: the line's name with "_" for what is not a letter or digit, then its
    Splatalogue id; default ``simulated_line``); truth.json's ``lines`` records each one.
    ``contdat_flags`` {field name: {spw id: [flags]}} (cont.dat v3): the ``Flags:`` line the pipeline
    writes under that field's window (LOWBANDWIDTH, LOWSPREAD, ALLCONT).
    """
    kw = dict(n_ebs=int(n_ebs), n_fields=int(n_fields), spw_ids=[int(s) for s in spw_ids],
              nchan=int(nchan), n_antennas=int(n_antennas), layout=layout,
              with_line_ms=bool(with_line_ms), with_uvcont=bool(with_uvcont),
              contdat_version=int(contdat_version), continuum_jy=float(continuum_jy),
              spectral_index=float(spectral_index),
              offset_arcsec=[float(v) for v in offset_arcsec], line_peak_jy=float(line_peak_jy),
              line_fwhm_kms=None if line_fwhm_kms is None else float(line_fwhm_kms),
              line_restfreq_ghz=None if line_restfreq_ghz is None else float(line_restfreq_ghz),
              noise_jy=float(noise_jy), seed=int(seed), pipeline_ready=bool(pipeline_ready))
    if selfcal_phase_rms_deg:
        kw['selfcal_phase_rms_deg'] = float(selfcal_phase_rms_deg)
    if mosaic_offsets_arcsec is not None:
        kw['mosaic_offsets_arcsec'] = [[float(v) for v in pointing] for pointing in mosaic_offsets_arcsec]
    # New shapes are recorded only when asked for, so older deliveries' parameters stay as they were.
    if array != '12m':
        kw['array'] = str(array)
    if full_polarization:
        kw['full_polarization'] = True
        kw['continuum_pol_fraction'] = 0.05 if continuum_pol_fraction is None else float(continuum_pol_fraction)
    if spw_nchan is not None:
        kw['spw_nchan'] = [int(n) for n in spw_nchan]
    if field_spw_ids is not None:
        kw['field_spw_ids'] = [[int(s) for s in ids] for ids in field_spw_ids]
    if int(integrations_per_scan) != _INTEGRATIONS_PER_SCAN:
        kw['integrations_per_scan'] = int(integrations_per_scan)
    if ephemeris_radvel_kms is not None:
        kw['ephemeris_radvel_kms'] = float(ephemeris_radvel_kms)
    if eb_fields is not None:
        kw['eb_fields'] = [[int(i) for i in ids] for ids in eb_fields]
    if spw_centres_ghz is not None:
        kw['spw_centres_ghz'] = [float(f) for f in spw_centres_ghz]
    if field_names is not None:
        kw['field_names'] = [str(name) for name in field_names]
    if alma_cycle is not None:
        kw['alma_cycle'] = int(alma_cycle)
    if lines:
        kw['lines'] = [dict((k, (int(v) if k == 'spw' else str(v) if k == 'transition' else
                                 None if v is None else float(v))) for k, v in spec.items()) for spec in lines]
    if contdat_flags:
        kw['contdat_flags'] = dict((str(name), dict((int(s), [str(f) for f in flags]) for s, flags in per.items()))
                                   for name, per in contdat_flags.items())
    spw_ids = _validate(kw)
    t_begin = time.time()
    outdir = os.path.abspath(str(outdir))
    if os.path.exists(outdir) and os.listdir(outdir):
        raise ValueError('output directory %s exists and is not empty' % outdir)
    if not os.path.isdir(outdir):
        os.makedirs(outdir)
    if casa_logfile is None:
        casa_logfile = os.path.join(tempfile.gettempdir(), 'simulate_delivery-casa.log')
    casa = _Casa(casa_logfile)
    scratch = tempfile.mkdtemp(prefix='.simulate-', dir=outdir)
    try:
        truth = _simulate(casa, outdir, scratch, kw, spw_ids)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        casa.done()
    truth['elapsed_s'] = round(time.time() - t_begin, 2)
    truth = _plain(truth)
    with open(os.path.join(outdir, 'truth.json'), 'w') as fh:
        json.dump(truth, fh, indent=1, sort_keys=True)
    return truth


def _simulate(casa, outdir, scratch, kw, spw_ids):
    rng = np.random.RandomState(kw['seed'])
    frames = _Frames(casa)
    layout = kw['layout']
    cycle8 = layout.startswith('cycle8')

    # ---- antennas: a seeded subset of the pads of a compact Cycle-10 configuration
    cfg_name, antenna_names, dish_m, pb_fwhm = _ARRAYS[kw.get('array', '12m')]
    cfg = _antenna_cfg(casa, cfg_name)
    pads = _read_cfg(cfg)
    if kw['n_antennas'] > min(len(pads), len(antenna_names)):
        raise ValueError('n_antennas must be <= %d (pads in %s)' % (min(len(pads), len(antenna_names)), cfg_name))
    pick = sorted(rng.choice(len(pads), kw['n_antennas'], replace=False).tolist())
    names = sorted(rng.choice(antenna_names, kw['n_antennas'], replace=False).tolist())
    obs_itrf = casa.me.measure(casa.me.observatory('ALMA'), 'ITRF')
    e = [pads[i][0] for i in pick]
    n = [pads[i][1] for i in pick]
    u = [pads[i][2] for i in pick]
    x, y, z = _enu_to_itrf(obs_itrf, e, n, u)
    antennas = dict(names=names, pads=[pads[i][4] for i in pick], x=x.tolist(), y=y.tolist(), z=z.tolist())

    # ---- fields and source positions
    fields = []
    dx, dy = kw['offset_arcsec']
    for i in range(kw['n_fields']):
        name, ra_s, dec_s = _FIELDS[i]
        if kw.get('field_names'):
            name = kw['field_names'][i]
        ra = casa.qa.convert(casa.qa.quantity(ra_s), 'rad')['value']
        dec = casa.qa.convert(casa.qa.quantity(dec_s), 'rad')['value']
        sdec = dec + dy * _ARCSEC
        sra = ra + dx * _ARCSEC / math.cos(dec)
        dra = sra - ra
        l = math.cos(sdec) * math.sin(dra)
        m = math.sin(sdec) * math.cos(dec) - math.cos(sdec) * math.sin(dec) * math.cos(dra)
        nn = math.sin(sdec) * math.sin(dec) + math.cos(sdec) * math.cos(dec) * math.cos(dra)
        fields.append(dict(name=name, field_id=i, ra=ra, dec=dec, lmn=(l, m, nn),
                           source_ra=sra, source_dec=sdec,
                           spw_ids=kw['field_spw_ids'][i] if kw.get('field_spw_ids') else list(spw_ids)))
    if kw.get('mosaic_offsets_arcsec'):
        fields = _mosaic_pointings(fields, kw['mosaic_offsets_arcsec'])
    if kw.get('ephemeris_radvel_kms') is not None:
        fields[0]['name'] = _EPHEMERIS_NAME
        fields[0]['ephemeris_radvel_kms'] = kw['ephemeris_radvel_kms']

    spw_rows = _spw_table(spw_ids, kw['nchan'], kw.get('spw_nchan'), kw.get('alma_cycle'), kw.get('spw_centres_ghz'))
    sci = [r for r in spw_rows if r['science']]
    first_date, project = _cycle_era(kw.get('alma_cycle'))[:2]
    uids = _make_uids(rng, kw['n_ebs'], first_date)
    starts = _schedule(frames, fields, kw['n_ebs'], sci, first_date.timetuple()[:3])
    scans = _scan_plan(len(fields), kw.get('integrations_per_scan', _INTEGRATIONS_PER_SCAN))  # one per FIELD row: a mosaic's pointings each get their scans
    t_mid_off = (scans[0][1] + scans[-1][2]) / 2.0 / 86400.0

    # ---- lines (LSRK, Hz)
    lines = {}
    if kw.get('lines'):
        pass   # the lines asked for, placed below (_placed_lines)
    elif kw['line_peak_jy'] != 0.0:
        if kw['line_restfreq_ghz'] is None:
            # TDM windows of a spectral set-up are its continuum windows: lines go in the others
            line_spws = [r for r in sci if abs(r['width']) < _TDM_CHAN_WIDTH_HZ] or sci
            for r in line_spws:
                rat = [frames.ratio(s + t_mid_off, fields[0]['ra'], fields[0]['dec']) for s in starts]
                if 'ephemeris_radvel_kms' in fields[0]:
                    # SOURCE = TOPO * (1 + v/c) to ~0.5 km/s (the Earth's rotation): near the centre
                    rat = [1.0 + fields[0]['ephemeris_radvel_kms'] / _C_KMS]
                lines[r['id']] = [float(np.mean(rat)) * r['centre']]
        else:
            nu = kw['line_restfreq_ghz'] * 1e9
            for r in sci:
                lo, hi = r['chan_freq'].min(), r['chan_freq'].max()
                rat = [frames.ratio(s + t_mid_off, fields[0]['ra'], fields[0]['dec']) for s in starts]
                if all(lo * q <= nu <= hi * q for q in rat):
                    lines[r['id']] = [nu]
            if not lines:
                raise ValueError('line_restfreq_ghz=%g is outside every science spw (%s GHz); '
                                 'use line_peak_jy=0 for no line'
                                 % (kw['line_restfreq_ghz'],
                                    ', '.join('%.3f' % (r['centre'] / 1e9) for r in sci)))

    # default line width: 10 km/s (8 channels at 64 x 0.98 MHz), narrower in narrow bands
    fwhm = kw['line_fwhm_kms']
    if fwhm is None:
        # the narrowest band decides (TDM windows are wide in km/s: 10 km/s there)
        lowest = min(r['centre'] for r in sci)
        fwhm = round(min([10.0] + [r['nchan'] / 8.0 * abs(r['width']) / lowest * _C_KMS for r in sci]), 3)
    # every line: LSRK (or SOURCE) frequency, rest frequency, peak, FWHM (km/s), SOURCE table's transition
    if kw.get('lines'):
        line_params = _placed_lines(kw['lines'], sci, frames, starts, t_mid_off, fields[0])
    else:   # one line per spw at its rest frequency (velocity 0), as before
        line_params = dict((sid, [dict(nu=nu, rest=nu, peak=kw['line_peak_jy'], fwhm_kms=fwhm, velocity_kms=0.0,
                                       transition='simulated_line')
                                  for nu in nus]) for sid, nus in lines.items())
    lines = dict((sid, [line['nu'] for line in params]) for sid, params in line_params.items())

    plan = dict(antennas=antennas, fields=fields, spw_rows=spw_rows, sci_spws=sci,
                spw_by_id=dict((r['id'], r) for r in spw_rows), scans=scans, lines=lines, line_params=line_params,
                project=project, contdat_flags=kw.get('contdat_flags', {}),
                noise_jy=kw['noise_jy'], continuum_jy=kw['continuum_jy'],
                spectral_index=kw['spectral_index'],
                continuum_reffreq=float(np.mean([r['centre'] for r in sci])),
                line_peak_jy=kw['line_peak_jy'], line_fwhm_kms=fwhm,
                uvcont_fitorder=0 if kw['spectral_index'] == 0.0 else 1,
                dish_m=dish_m, pb_fwhm_lambda_over_d=pb_fwhm, correlations=_CORRELATIONS[bool(kw.get('full_polarization'))],
                continuum_pol_fraction=kw.get('continuum_pol_fraction', 0.0))

    ebs = []
    for k, uid in enumerate(uids):
        eb = dict(uid=uid, start_mjd=starts[k])
        if kw.get('eb_fields'):
            # the FIELD table of an EB holds the targets it observed, numbered in its own order
            eb['field_plan'] = [dict(fields[i], field_id=j) for j, i in enumerate(kw['eb_fields'][k])]
            eb['scan_plan'] = _scan_plan(len(eb['field_plan']), kw.get('integrations_per_scan',
                                                                        _INTEGRATIONS_PER_SCAN))
        else:
            eb['field_plan'], eb['scan_plan'] = fields, scans
        eb_mid_off = (eb['scan_plan'][0][1] + eb['scan_plan'][-1][2]) / 2.0 / 86400.0
        eb['mid_ratio'] = dict((f['name'], frames.ratio(starts[k] + eb_mid_off, f['ra'], f['dec']))
                               for f in eb['field_plan'])
        ebs.append(eb)
    if 'ephemeris_radvel_kms' in fields[0]:
        # The SOURCE frame needs the ephemeris in an MS: make the raw MSes first (small deliveries only).
        for eb in ebs:
            eb['raw'] = os.path.join(scratch, eb['uid'] + '.ms')
            _simulate_raw(casa, eb['raw'], _eb_plan(plan, eb), eb)
            _fix_metadata(casa, eb['raw'], _eb_plan(plan, eb), eb)
            eb['mid_ratio'][fields[0]['name']] = _attach_ephemeris(casa, eb['raw'], _eb_plan(plan, eb), scratch)
    ranges = _cont_ranges(plan, ebs)
    for eb in ebs:
        eb['fitspw'] = _fitspw(plan, eb, ranges)

    # ---- directories
    if layout in ('calibrated_final', 'cycle8'):
        ms_dir = os.path.join(outdir, 'measurement_sets')
        cal_dir = os.path.join(outdir, 'caltables')
        os.makedirs(ms_dir)
        os.makedirs(cal_dir)
    else:
        ms_dir = cal_dir = os.path.join(outdir, 'working')
        os.makedirs(ms_dir)
    suffix = '_target.ms' if cycle8 else '_targets.ms'

    # ---- the EBs
    for eb in ebs:
        raw = os.path.join(scratch, eb['uid'] + '.ms')
        if 'raw' not in eb:
            _simulate_raw(casa, raw, _eb_plan(plan, eb), eb)
            _fix_metadata(casa, raw, _eb_plan(plan, eb), eb)
        plan['source_over_topo'] = eb['mid_ratio'].get(fields[0]['name'])     # used by an ephemeris field 0 only
        if 'pb_profile' not in plan and any(f.get('pb_separation_arcsec') for f in plan['fields']):
            plan['pb_profile'] = _casa_primary_beam_profile(casa, raw, plan, scratch)
        eb_plan = _eb_plan(plan, eb)
        _fill(casa, frames, eb_plan, raw, rng)
        target = os.path.join(ms_dir, eb['uid'] + suffix)
        _mstransform(casa, raw, target, 'data', kw['noise_jy'])
        eb['ms'] = os.path.relpath(target, outdir)
        if cycle8:
            _add_corrected(casa, frames, eb_plan, target)
        phase_rms_deg = kw.get('selfcal_phase_rms_deg', 0.0)
        if phase_rms_deg:
            phases = _antenna_phase_errors(casa, target, phase_rms_deg, rng)
            _split_into_regcal_and_selfcal(casa, target, phases)
        if kw['with_line_ms']:
            line_ms = os.path.join(ms_dir, eb['uid'] + '_targets_line.ms')
            _mstransform(casa, raw, line_ms, 'corrected', kw['noise_jy'])
            if phase_rms_deg:
                _split_into_regcal_and_selfcal(casa, line_ms, phases)
            eb['line_ms'] = os.path.relpath(line_ms, outdir)
        if kw['with_uvcont']:
            tab = os.path.join(cal_dir, os.path.basename(target) + '.hif_uvcontfit.s10_1.uvcont.tbl')
            _solve_uvcont(casa, target, tab, eb_plan, eb, scratch)
            eb['uvcont_table'] = os.path.relpath(tab, outdir)
        if layout in ('working', 'cycle8_working'):
            full = os.path.join(ms_dir, eb['uid'] + '.ms')
            shutil.move(raw, full)
        else:
            shutil.rmtree(raw, ignore_errors=True)
        with _opened(casa.tb, target):
            eb['rows'] = int(casa.tb.nrows())
            t = casa.tb.getcol('TIME')
            eb['scans'] = sorted(set(casa.tb.getcol('SCAN_NUMBER').tolist()))
        eb['time_range_utc'] = [_iso(t.min() / 86400.0), _iso(t.max() / 86400.0)]
        eb['mid_mjd'] = float((t.min() + t.max()) / 2.0 / 86400.0)
    if layout in ('working', 'cycle8_working'):
        _working_clutter(ms_dir, ebs)
    if kw['pipeline_ready']:
        from pipeline_ready import make_delivery_pipeline_ready
        make_delivery_pipeline_ready(ms_dir, casa=casa.ct, selfcal=bool(kw.get('selfcal_phase_rms_deg')))

    contdat = os.path.join(cal_dir, 'cont.dat')
    _write_contdat(contdat, plan, ranges, kw['contdat_version'])
    return _truth(kw, plan, ebs, ranges, outdir, contdat, ms_dir, frames)


def _truth(kw, plan, ebs, ranges, outdir, contdat, ms_dir, frames):
    truth = dict(simulator_version=SIMULATOR_VERSION, params=kw, layout=kw['layout'],
                 ms_dir=os.path.relpath(ms_dir, outdir), contdat=os.path.relpath(contdat, outdir),
                 contdat_version=kw['contdat_version'], telescope='ALMA', project=plan['project'],
                 alma_cycle=kw.get('alma_cycle'), contdat_flags=plan['contdat_flags'],
                 continuum_jy=kw['continuum_jy'], spectral_index=kw['spectral_index'],
                 continuum_reffreq_ghz=plan['continuum_reffreq'] / 1e9,
                 line_peak_jy=kw['line_peak_jy'], line_fwhm_kms=plan['line_fwhm_kms'],
                 noise_jy=kw['noise_jy'], weight=1.0 / kw['noise_jy'] ** 2,
                 integration_s=_INTEGRATION_S,
                 pb_attenuation_applied=any('pb_separation_arcsec' in f for f in plan['fields']),
                 mosaic_pointings=[dict(field_id=f['field_id'], offset_arcsec=f['pointing_offset_arcsec'],
                                        ra_deg=math.degrees(f['ra']), dec_deg=math.degrees(f['dec']),
                                        source_separation_arcsec=f['pb_separation_arcsec'])
                                   for f in plan['fields'] if 'pointing_offset_arcsec' in f],
                 pb_fwhm_lambda_over_d=plan['pb_fwhm_lambda_over_d'],
                 selfcal_phase_rms_deg=kw.get('selfcal_phase_rms_deg', 0.0),
                 # |vector average| of DATA over the true one: a baseline's phase error has variance 2 rms^2
                 regcal_coherence=math.exp(-math.radians(kw.get('selfcal_phase_rms_deg', 0.0)) ** 2),
                 uvcont_fitorder=plan['uvcont_fitorder'] if kw['with_uvcont'] else None,
                 antenna_config=_ARRAYS[kw.get('array', '12m')][0], antennas=plan['antennas']['names'],
                 stations=plan['antennas']['pads'], array=kw.get('array', '12m'), dish_m=plan['dish_m'],
                 correlations=plan['correlations'].split(),
                 continuum_pol_fraction=plan['continuum_pol_fraction'],
                 ephemeris=(dict(field=_EPHEMERIS_NAME, radvel_kms=plan['fields'][0]['ephemeris_radvel_kms'],
                                 frame='SOURCE', source_over_topo=[eb['mid_ratio'][_EPHEMERIS_NAME] for eb in ebs])
                            if 'ephemeris_radvel_kms' in plan['fields'][0] else None))
    truth['line_lsrk_freq_ghz'] = dict((str(s), [nu / 1e9 for nu in v]) for s, v in plan['lines'].items())
    # every line: where (LSRK, or SOURCE for an ephemeris target), what (rest frequency, transition) and how much
    truth['lines'] = [dict(spw=sid, rest_freq_ghz=line['rest'] / 1e9, transition=line['transition'],
                           velocity_kms=line['velocity_kms'], fwhm_kms=line['fwhm_kms'], peak_jy=line['peak'],
                           flux_jykms=line.get('flux_jykms', line['peak'] * line['fwhm_kms'] * _GAUSS_AREA),
                           freq_ghz=line['nu'] / 1e9, velocity_convention='radio',
                           frame='SOURCE' if 'ephemeris_radvel_kms' in plan['fields'][0] else 'LSRK')
                      for sid in sorted(plan['line_params']) for line in plan['line_params'][sid]]
    truth['fields'] = [dict(name=f['name'], field_id=f['field_id'],
                            direction=dict(ra_deg=math.degrees(f['ra']), dec_deg=math.degrees(f['dec']),
                                           ra=_hms(f['ra']), dec=_dms(f['dec']), frame='J2000'),
                            offset_arcsec=list(kw['offset_arcsec']),
                            source_direction=dict(ra_deg=math.degrees(f['source_ra']),
                                                  dec_deg=math.degrees(f['source_dec']),
                                                  ra=_hms(f['source_ra']), dec=_dms(f['source_dec'])),
                            spw_ids=list(f['spw_ids']))
                       for f in plan['fields']]
    spws = []
    for r in plan['sci_spws']:
        f = r['chan_freq']
        spws.append(dict(id=r['id'], name=r['name'], nchan=r['nchan'], chan_width_hz=r['width'],
                         sideband=r['sideband'], baseband='BB_%d' % r['bb'],
                         centre_freq_ghz=r['centre'] / 1e9,
                         topo_freq_range_ghz=[f.min() / 1e9, f.max() / 1e9],
                         chan0_freq_ghz=f[0] / 1e9,
                         continuum_jy_at_centre=kw['continuum_jy'] * (r['centre'] / plan['continuum_reffreq'])
                         ** kw['spectral_index'],
                         line_lsrk_freq_ghz=[nu / 1e9 for nu in plan['lines'].get(r['id'], [])]))
    truth['spws'] = spws
    truth['placeholder_spws'] = [dict(id=r['id'], name=r['name'], nchan=r['nchan'])
                                 for r in plan['spw_rows'] if not r['science']]
    truth['contdat_ranges'] = dict(
        (fname, dict((str(sid), dict(lsrk_ghz=[[a / 1e9, b / 1e9] for a, b in rr['lsrk']],
                                     topo_ghz=[[a / 1e9, b / 1e9] for a, b in rr['topo']],
                                     clear_fwhm_each_side=rr['clear_fwhm'],
                                     line_jy_at_range_edge=(max(line['peak'] for line in plan['line_params'][sid])
                                                            * 2.0 ** (-4.0 * rr['clear_fwhm'] ** 2)
                                                            if plan['line_params'].get(sid) else 0.0),
                                     band_fraction=round(rr['coverage'], 3)))
                     for sid, rr in per.items()))
        for fname, per in ranges.items())
    out_ebs = []
    for eb in ebs:
        e = dict(uid=eb['uid'], ms=eb['ms'], rows=eb['rows'], scans=eb['scans'],
                 date=eb['time_range_utc'][0][:10], time_range_utc=eb['time_range_utc'],
                 antennas=plan['antennas']['names'], fitspw=eb['fitspw'],
                 # the FIELD rows of this EB's MS (eb_fields: only the targets it observed, its own ids)
                 fields=[dict(name=fld['name'], field_id=fld['field_id']) for fld in eb['field_plan']])
        for key in ('line_ms', 'uvcont_table'):
            if key in eb:
                e[key] = eb[key]
        e['lsrk_over_topo'] = eb['mid_ratio']
        espws = []
        for r in plan['sci_spws']:
            f = r['chan_freq']
            item = dict(id=r['id'])
            by_field = {}
            observed = [fld for fld in eb['field_plan'] if r['id'] in fld['spw_ids']]
            if not observed:            # eb_fields: no target of this EB is observed in this spw
                continue
            for fld in observed:
                ratio = (eb['mid_ratio'][fld['name']] if 'ephemeris_radvel_kms' in fld
                         else frames.ratio(eb['mid_mjd'], fld['ra'], fld['dec']))
                by_field[fld['name']] = [(nu / ratio - f[0]) / r['width'] for nu in plan['lines'].get(r['id'], [])]
            first = by_field[observed[0]['name']]
            item['line_topo_channel'] = first[0] if first else None
            item['line_topo_channel_by_field'] = by_field
            ratio0 = eb['mid_ratio'][observed[0]['name']]
            item['lsrk_freq_range_ghz'] = [f.min() * ratio0 / 1e9, f.max() * ratio0 / 1e9]
            espws.append(item)
        e['spws'] = espws
        out_ebs.append(e)
    truth['ebs'] = out_ebs
    return truth


def _plain(obj):
    """numpy scalars/arrays -> Python types, so the returned dict equals truth.json."""
    if isinstance(obj, dict):
        return dict((str(k), _plain(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


# --------------------------------------------------------------------------- copy / cache

def copy_delivery(src, dst):
    """Copy a delivery tree (symlinks preserved); ``dst`` must not exist.  Returns dst."""
    shutil.copytree(str(src), str(dst), symlinks=True)
    return str(dst)


def _cache_key(kwargs):
    norm = {}
    for k, v in sorted(kwargs.items()):
        norm[k] = list(v) if isinstance(v, (tuple, list)) else v
    digest = hashlib.sha1()
    for name in ('simulate_delivery.py', 'pipeline_ready.py'):   # what makes a delivery: this file and its helper
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name), 'rb') as fh:
            digest.update(fh.read())
    source = digest.hexdigest()
    blob = json.dumps(dict(version=SIMULATOR_VERSION, source=source, kwargs=norm), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode('utf-8')).hexdigest()[:16]


def _clean_stale(cache_root, age_s=6 * 3600):
    """Remove temporary folders that killed runs left behind (older than age_s)."""
    now = time.time()
    for name in os.listdir(cache_root):
        path = os.path.join(cache_root, name)
        try:
            if name.startswith('.tmp-') and now - os.path.getmtime(path) > age_s:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


@contextlib.contextmanager
def simulation_lock(final):
    """Held while one process makes ``final``: test processes running side by side (pytest -n, one cache
    for all) wait for the one that simulates it instead of simulating it again."""
    import fcntl
    lock = final + '.lock'
    with open(lock, 'a') as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            # Gone with the work (the cache holds deliveries only); a process still waiting on it, or one that
            # makes a new lock file, finds the delivery made when it gets its lock.
            try:
                os.unlink(lock)
            except OSError:
                pass
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def made_once(final, make):
    """final, a folder with a truth.json, made by make(folder) on first use: under a temporary name in
    final's folder, renamed when complete (concurrent or killed runs never leave half of it under the final
    name), by one process while others wait (simulation_lock).  Returns final."""
    if os.path.isfile(os.path.join(final, 'truth.json')):
        return final
    cache_root = os.path.dirname(final)
    if not os.path.isdir(cache_root):
        try:
            os.makedirs(cache_root)
        except OSError:
            if not os.path.isdir(cache_root):
                raise
    with simulation_lock(final):
        if os.path.isfile(os.path.join(final, 'truth.json')):  # made while this process waited
            return final
        _clean_stale(cache_root)
        tmp = tempfile.mkdtemp(prefix='.tmp-%s-' % os.path.basename(final), dir=cache_root)
        try:
            made = os.path.join(tmp, 'made')  # make() creates it: not private as mkdtemp's folder is
            make(made)
            try:
                os.rename(made, final)
            except OSError:  # another process finished first (one that came after a failed one)
                if not os.path.isfile(os.path.join(final, 'truth.json')):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def cached_delivery(cache_root, **kwargs):
    """Path of a finished delivery made with ``kwargs``, simulating it on first use (made_once).

    The folder name hashes the kwargs and the source of this file and of pipeline_ready.py.  Treat the
    result as read-only: copy it (``copy_delivery``) before modifying anything.
    """
    final = os.path.join(os.path.abspath(str(cache_root)), 'delivery-%s' % _cache_key(kwargs))
    return made_once(final, lambda folder: simulate_delivery(folder, **kwargs))


# --------------------------------------------------------------------------- CLI

def _parse_args(argv):
    p = argparse.ArgumentParser(
        prog='simulate_delivery.py',
        description='Simulate a small ALMA-like delivery with real CASA (see the module docstring).')
    p.add_argument('outdir', help='output directory (created; must be empty if it exists)')
    p.add_argument('--n-ebs', type=int, default=2)
    p.add_argument('--n-fields', type=int, default=1)
    p.add_argument('--spw-ids', default='25,27', help='comma-separated science spw ids (default 25,27)')
    p.add_argument('--nchan', type=int, default=64)
    p.add_argument('--n-antennas', type=int, default=12)
    p.add_argument('--layout', choices=LAYOUTS, default='calibrated_final')
    p.add_argument('--with-line-ms', action='store_true')
    p.add_argument('--with-uvcont', action='store_true')
    p.add_argument('--contdat-version', type=int, choices=(1, 2, 3), default=2)
    p.add_argument('--continuum-jy', type=float, default=0.05)
    p.add_argument('--spectral-index', type=float, default=0.0)
    p.add_argument('--offset-arcsec', type=float, nargs=2, default=(0.0, 0.0), metavar=('EAST', 'NORTH'))
    p.add_argument('--line-peak-jy', type=float, default=0.2)
    p.add_argument('--line-fwhm-kms', type=float, default=None,
                   help='default: 10 km/s, or nchan/8 channels if that is narrower')
    p.add_argument('--line-restfreq-ghz', type=float, default=None)
    p.add_argument('--noise-jy', type=float, default=0.002)
    p.add_argument('--seed', type=int, default=1)
    p.add_argument('--selfcal-phase-rms-deg', type=float, default=0.0,
                   help='Cycle 11+ self-calibrated era: DATA with per-antenna phase errors of this rms, '
                        'CORRECTED_DATA without (default 0: off)')
    p.add_argument('--alma-cycle', type=int, default=None,
                   help='the ALMA cycle (4..13): its dates, project code and spw names (GroupingID first from 12)')
    p.add_argument('--line', action='append', default=[], metavar='SPW:VELOCITY:FWHM:FLUX[:REST_GHZ[:TRANSITION]]',
                   help='a line of this LSRK radio velocity (km/s), FWHM (km/s) and integrated flux (Jy km/s) '
                        'instead of the default line; repeat for more')
    p.add_argument('--contdat-flags', action='append', default=[], metavar='FIELD:SPW:FLAG[,FLAG]',
                   help='a Flags: line of cont.dat v3 (LOWBANDWIDTH, LOWSPREAD, ALLCONT); repeat for more')
    p.add_argument('--pipeline-ready', action='store_true', help='add the metadata the ALMA pipeline needs (tests/support/pipeline_ready.py)')
    p.add_argument('--overwrite', action='store_true', help='delete OUTDIR first if it exists')
    return p.parse_args(argv)


def _line_argument(text):
    parts = text.split(':', 5)
    if not 4 <= len(parts) <= 6:
        raise ValueError(text)
    line = dict(spw=int(parts[0]), velocity_kms=float(parts[1]), fwhm_kms=float(parts[2]),
                flux_jykms=float(parts[3]))
    if len(parts) > 4 and parts[4]:
        line['rest_ghz'] = float(parts[4])
    if len(parts) > 5:
        line['transition'] = parts[5]
    return line


def main(argv=None):
    try:
        args = _parse_args(argv)
    except SystemExit as exc:       # --help, usage errors: an exit code, not an exception
        return exc.code if isinstance(exc.code, int) else 2
    try:
        spw_ids = [int(s) for s in args.spw_ids.replace(' ', '').split(',') if s]
    except ValueError:
        print('simulate_delivery: --spw-ids must be comma-separated integers', file=sys.stderr)
        return 2
    try:
        lines = [_line_argument(text) for text in args.line]
        flags = {}
        for text in args.contdat_flags:
            field, spw, names = text.rsplit(':', 2)
            flags.setdefault(field, {})[int(spw)] = names.split(',')
    except ValueError:
        print('simulate_delivery: --line is SPW:VELOCITY:FWHM:FLUX[:REST_GHZ[:TRANSITION]], --contdat-flags '
              'FIELD:SPW:FLAG[,FLAG]', file=sys.stderr)
        return 2
    if args.overwrite and os.path.exists(args.outdir):
        shutil.rmtree(args.outdir)
    try:
        truth = simulate_delivery(
            args.outdir, n_ebs=args.n_ebs, n_fields=args.n_fields, spw_ids=spw_ids, nchan=args.nchan,
            n_antennas=args.n_antennas, layout=args.layout, with_line_ms=args.with_line_ms,
            with_uvcont=args.with_uvcont, contdat_version=args.contdat_version,
            continuum_jy=args.continuum_jy, spectral_index=args.spectral_index,
            offset_arcsec=tuple(args.offset_arcsec), line_peak_jy=args.line_peak_jy,
            line_fwhm_kms=args.line_fwhm_kms, line_restfreq_ghz=args.line_restfreq_ghz,
            noise_jy=args.noise_jy, seed=args.seed, pipeline_ready=args.pipeline_ready,
            selfcal_phase_rms_deg=args.selfcal_phase_rms_deg, alma_cycle=args.alma_cycle, lines=lines or None,
            contdat_flags=flags or None)
    except ValueError as exc:
        print('simulate_delivery: %s' % exc, file=sys.stderr)
        return 2
    print('simulated %d EB(s) in %.1f s into %s:' % (len(truth['ebs']), truth['elapsed_s'],
                                                      os.path.abspath(args.outdir)))
    for eb in truth['ebs']:
        chans = ', '.join('spw %d line at chan %.2f' % (s['id'], s['line_topo_channel'])
                          for s in eb['spws'] if s['line_topo_channel'] is not None)
        print('  %s  %s  %d rows  %s' % (eb['ms'], eb['date'], eb['rows'], chans))
    print('  %s (v%d), truth.json' % (truth['contdat'], truth['contdat_version']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
