#!/usr/bin/env python3
"""Deliveries of ONE science goal for the 12 m and the 7 m arrays, and a total-power (TP) image,
of one sky: a point source, an extended Gaussian, and a line (issue 29's test data).

A companion of simulate_delivery.py (which makes each delivery's MSes, cont.dat and metadata):

    from simulate_combine import simulate_goal
    truth = simulate_goal('/tmp/goal')          # /tmp/goal/{12m,7m}/calibrated_final-like, /tmp/goal/tp.image

What differs between the arrays, as in real deliveries: antennas (DAnn/DVnn 12 m dishes of the
compact Cycle-10 configuration; CMnn 7 m dishes of the ACA), spw ids (25, 27 against 16, 18) and
names (another spectral spec), channel widths and counts (64 x 976.5625 kHz against 32 x
1953.125 kHz: the same band), dates (the 7 m observed 3 weeks later), the noise per visibility
(SEFD ~ 1 / D^2: sigma_7m = sigma_12m x (12/7)^2, WEIGHT = 1 / sigma^2 in both).  Each track is
4 visits of the target an hour apart (about 45 min), so that the uv coverage rotates.

The sky (J2000, at the field centre = both arrays' pointing):
* an extended circular Gaussian of total flux ``gauss_jy`` and FWHM ``gauss_fwhm_arcsec`` at the
  pointing centre, flat spectrum, continuum only;
* a point source of ``point_jy`` (flat) at ``point_offset_arcsec`` (east, north), with the Gaussian
  line of simulate_delivery (peak ``line_peak_jy``, FWHM 10 km/s, fixed in LSRK at the centre of the
  first spw) on it.
Visibilities see the sky through each array's primary beam: CASA's own beam (the radial profile of
a tclean .pb of the delivery's MS, as simulate_delivery measures it for mosaics), scaled with
frequency.  The Gaussian's visibility is the Fourier transform of (Gaussian x beam), computed per
spw at its centre frequency on a table of |uv| (the spw is 0.03 % wide); the point source's per
channel.  DATA = that + complex Gaussian noise (simulate_delivery's own sky is replaced).

The TP image (``tp.image``, also ``tp.fits``): the true sky (no primary beam) convolved with a
circular Gaussian beam of ``tp_beam_arcsec`` (28.6" is ALMA's 12 m TP beam at 217 GHz), in Jy/beam,
on 4" pixels, LSRK cube over the first spw's band with its own channel width (3.90625 MHz), plus
noise ``tp_noise_jy_beam`` per pixel.

truth.json at the top says the fluxes, positions, and per array the baseline lengths and the
largest angular scale (0.983 lambda / L5, L5 the 5th percentile of the projected baselines).
"""
from __future__ import absolute_import, division, print_function

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
import simulate_delivery as _sd  # noqa: E402

_ARCSEC = math.pi / 180.0 / 3600.0
_C = 299792458.0
COMBINE_SIM_VERSION = 1

# Per array: the keyword arguments of simulate_delivery and the module constants that differ.
ARRAYS = {
    '12m': dict(kwargs=dict(array='12m', spw_ids=(25, 27), nchan=64, n_antennas=10, seed=47),
                constants=dict(_SPECTRAL_SPEC='X1189462395', _FIRST_DATE=(2023, 4, 10),
                               _CHAN_WIDTH_HZ=976562.5)),
    '7m': dict(kwargs=dict(array='7m', spw_ids=(16, 18), nchan=32, n_antennas=10, seed=12),
               constants=dict(_SPECTRAL_SPEC='X1190008173', _FIRST_DATE=(2023, 5, 2),
                              _CHAN_WIDTH_HZ=1953125.0)),
}
_TRACK = dict(_VISITS_PER_FIELD=4, _GAP_BETWEEN_SCANS_S=900.0)


@contextlib.contextmanager
def _constants(values):
    """simulate_delivery's module constants set to values for the duration (restored after)."""
    old = dict((k, getattr(_sd, k)) for k in values)
    try:
        for k, v in values.items():
            setattr(_sd, k, v)
        yield
    finally:
        for k, v in old.items():
            setattr(_sd, k, v)


def _pb_profile(casa, ms, spw_id, scratch, dish_m, pb_fwhm):
    """(radius arcsec, gain, frequency Hz) of CASA's primary beam for this MS, at its spw's mean frequency."""
    tb = casa.tb
    tb.open(os.path.join(ms, 'SPECTRAL_WINDOW'))
    try:
        freqs = tb.getcell('CHAN_FREQ', spw_id)
    finally:
        tb.close()
    return _sd.casa_primary_beam_profile(casa, ms, spw_id=spw_id, centre_hz=float(np.mean(freqs)), dish_m=dish_m,
                                         fwhm_lambda_over_d=pb_fwhm,
                                         imagename=os.path.join(scratch, 'pb-%s' % os.path.basename(ms)))


def _gaussian_vis_table(sky, profile, freq):
    """(q table in wavelengths, visibility) of the apparent Gaussian (sky x beam) at freq, real
    (the apparent source is circularly symmetric about the phase centre)."""
    radius, gain, f0 = profile
    sigma = sky['gauss_fwhm_arcsec'] / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    half = 5.0 * sigma
    step = min(0.2, sigma / 8.0)
    axis = np.arange(-half, half + step / 2, step)
    x, y = np.meshgrid(axis, axis)
    r = np.hypot(x, y)
    intensity = np.exp(-0.5 * (r / sigma) ** 2)
    intensity *= sky['gauss_jy'] / intensity.sum()                       # Jy per pixel, sums to S
    apparent = intensity * np.interp(r * freq / f0, radius, gain, right=0.0)
    qmax = 1.0 / (step * _ARCSEC) / 4.0
    q = np.linspace(0.0, qmax, 4000)
    xs = (x * _ARCSEC).ravel()
    a = apparent.ravel()
    vis = np.array([np.sum(a * np.cos(2 * math.pi * qq * xs)) for qq in q])
    return q, vis


def _rewrite_sky(casa, frames, ms, truth, sky, profile, rng):
    """DATA of ms := the sky of this goal seen through profile's beam + noise."""
    tb = casa.tb
    sigma = truth['noise_jy']
    field = truth['fields'][0]
    ra, dec = math.radians(field['direction']['ra_deg']), math.radians(field['direction']['dec_deg'])
    east, north = sky['point_offset_arcsec']
    sdec = dec + north * _ARCSEC
    sra = ra + east * _ARCSEC / math.cos(dec)
    dra = sra - ra
    l = math.cos(sdec) * math.sin(dra)
    m = math.sin(sdec) * math.cos(dec) - math.cos(sdec) * math.sin(dec) * math.cos(dra)
    n = math.sin(sdec) * math.sin(dec) + math.cos(sdec) * math.cos(dec) * math.cos(dra)
    separation = math.degrees(math.acos(min(1.0, n))) * 3600.0
    radius, gain, f0 = profile
    tb.open(os.path.join(ms, 'DATA_DESCRIPTION'))
    dd_spw = tb.getcol('SPECTRAL_WINDOW_ID')
    tb.close()
    tb.open(os.path.join(ms, 'SPECTRAL_WINDOW'))
    chan_freq = dict((int(s), tb.getcell('CHAN_FREQ', int(s))) for s in set(dd_spw.tolist()))
    tb.close()
    fwhm_kms = truth['line_fwhm_kms']
    tb.open(ms, nomodify=False)
    try:
        for ddid in sorted(set(tb.getcol('DATA_DESC_ID').tolist())):
            spw = int(dd_spw[ddid])
            f_topo = chan_freq[spw]
            sub = tb.query('DATA_DESC_ID==%d' % ddid)
            try:
                uvw = sub.getcol('UVW')
                times = sub.getcol('TIME')
                ratio = np.array([frames.ratio(t / 86400.0, ra, dec) for t in times])
                f_lsrk = ratio[None, :] * f_topo[:, None]
                pb_point = np.interp(separation * f_topo / f0, radius, gain, right=0.0)     # (nchan,)
                amp = sky['point_jy'] * np.ones_like(f_lsrk)
                for nu in truth['line_lsrk_freq_ghz'].get(str(spw), []):
                    s = fwhm_kms / (_C / 1e3) * nu * 1e9 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
                    amp += sky['line_peak_jy'] * np.exp(-0.5 * ((f_lsrk - nu * 1e9) / s) ** 2)
                path = uvw[0] * l + uvw[1] * m + uvw[2] * (n - 1.0)
                vis = amp * pb_point[:, None] * np.exp(2j * math.pi * path[None, :] * f_topo[:, None] / _C)
                q_tab, v_tab = _gaussian_vis_table(sky, profile, float(np.mean(f_topo)))
                q = np.hypot(uvw[0], uvw[1])[None, :] * f_topo[:, None] / _C
                vis = vis + np.interp(q, q_tab, v_tab, right=0.0)
                data = sub.getcol('DATA')
                ncorr = data.shape[0]
                noise = rng.normal(0.0, sigma, data.shape) + 1j * rng.normal(0.0, sigma, data.shape)
                sub.putcol('DATA', (np.repeat(vis[None], ncorr, axis=0) + noise).astype(np.complex64))
            finally:
                sub.close()
    finally:
        tb.close()
    return dict(point_separation_arcsec=separation, point_pb_gain_at_f0=float(np.interp(separation, radius, gain)),
                pb_profile_freq_ghz=f0 / 1e9)


def _baselines(casa, ms, freq):
    tb = casa.tb
    tb.open(ms)
    try:
        uvw = tb.getcol('UVW')
    finally:
        tb.close()
    b = np.hypot(uvw[0], uvw[1])
    l5 = float(np.percentile(b, 5))
    lam = _C / freq
    return dict(min_m=float(b.min()), l5_m=l5, max_m=float(b.max()),
                las_arcsec=0.983 * lam / l5 / _ARCSEC, at_freq_ghz=freq / 1e9)


def _tp_image(casa, path, truth12, sky, beam_arcsec, noise, rng):
    """The TP cube: true sky convolved with the TP beam, Jy/beam, LSRK over the first spw's band."""
    field = truth12['fields'][0]
    spw = truth12['spws'][0]
    lo, hi = truth12['ebs'][0]['spws'][0]['lsrk_freq_range_ghz']
    width = 3.90625e6
    nchan = int((hi - lo) * 1e9 // width)
    f_start = lo * 1e9 + width / 2.0
    cell = 4.0
    npix = 64
    ct = casa.ct
    cs = ct.coordsys().newcoordsys(direction=True, spectral=True, stokes=['I'])
    cs.setreferencecode('J2000', 'direction')
    cs.setunits(['rad', 'rad', '', 'Hz'])
    cs.setreferencepixel([npix / 2.0, npix / 2.0, 0, 0])
    cs.setreferencevalue([math.radians(field['direction']['ra_deg']), math.radians(field['direction']['dec_deg']),
                          1, f_start])
    cs.setincrement([-cell * _ARCSEC, cell * _ARCSEC, 1, width])
    cs.setreferencecode('LSRK', 'spectral', adjust=False)
    cs.setrestfrequency(spw['centre_freq_ghz'] * 1e9)
    x = (np.arange(npix) - npix / 2.0) * -cell          # arcsec east of centre
    y = (np.arange(npix) - npix / 2.0) * cell
    xx, yy = np.meshgrid(x, y, indexing='ij')
    bsig2 = (beam_arcsec / (2.0 * math.sqrt(2.0 * math.log(2.0)))) ** 2
    gsig2 = (sky['gauss_fwhm_arcsec'] / (2.0 * math.sqrt(2.0 * math.log(2.0)))) ** 2
    # Jy/beam: a source of flux S and variance s2 convolved with the beam: peak S * b2 / (s2 + b2)
    gauss = sky['gauss_jy'] * bsig2 / (gsig2 + bsig2) * np.exp(-0.5 * (xx ** 2 + yy ** 2) / (gsig2 + bsig2))
    px, py = sky['point_offset_arcsec']
    point = np.exp(-0.5 * ((xx - px) ** 2 + (yy - py) ** 2) / bsig2)
    freqs = f_start + np.arange(nchan) * width
    nu_line = truth12['line_lsrk_freq_ghz'][str(spw['id'])][0] * 1e9
    s = truth12['line_fwhm_kms'] / (_C / 1e3) * nu_line / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    line = sky['line_peak_jy'] * np.exp(-0.5 * ((freqs - nu_line) / s) ** 2)
    cube = np.empty((npix, npix, 1, nchan))
    for k in range(nchan):
        cube[:, :, 0, k] = gauss + point * (sky['point_jy'] + line[k]) + rng.normal(0.0, noise, (npix, npix))
    ia = ct.image()
    ia.fromarray(outfile=path, pixels=cube, csys=cs.torecord(), overwrite=True)
    ia.setbrightnessunit('Jy/beam')
    ia.setrestoringbeam(major='%.3farcsec' % beam_arcsec, minor='%.3farcsec' % beam_arcsec, pa='0deg')
    ia.sethistory(origin='simulate_combine', history=['TP: true sky convolved with a %.1f" beam' % beam_arcsec])
    ia.done()
    casa.tk.exportfits(imagename=path, fitsimage=path[:-len('.image')] + '.fits', overwrite=True, velocity=False)
    return dict(beam_arcsec=beam_arcsec, cell_arcsec=cell, npix=npix, nchan=nchan, chan_width_hz=width,
                start_lsrk_hz=f_start, noise_jy_beam=noise, unit='Jy/beam')


def simulate_goal(outdir, *, gauss_jy=0.4, gauss_fwhm_arcsec=8.0, point_jy=0.05, point_offset_arcsec=(12.0, 10.0),
                  line_peak_jy=0.2, line_restfreq_ghz=216.93, noise_12m_jy=0.002, tp_beam_arcsec=28.6, tp_noise_jy_beam=0.002, seed=7,
                  arrays=('12m', '7m'), overrides=None):
    """Make OUTDIR/<array>/ (a calibrated_final delivery per array), OUTDIR/tp.image and tp.fits; return
    (and write OUTDIR/truth.json) the truth.  ``overrides``: {array: {simulate_delivery kwarg: value}}."""
    outdir = os.path.abspath(str(outdir))
    if os.path.exists(outdir) and os.listdir(outdir):
        raise ValueError('output directory %s exists and is not empty' % outdir)
    if not os.path.isdir(outdir):
        os.makedirs(outdir)
    sky = dict(gauss_jy=float(gauss_jy), gauss_fwhm_arcsec=float(gauss_fwhm_arcsec), point_jy=float(point_jy),
               point_offset_arcsec=[float(v) for v in point_offset_arcsec], line_peak_jy=float(line_peak_jy))
    truth = dict(version=COMBINE_SIM_VERSION, sky=sky, arrays={})
    rng = np.random.RandomState(seed)
    scratch = tempfile.mkdtemp(prefix='.simulate-combine-', dir=outdir)
    try:
        for name in arrays:
            spec = ARRAYS[name]
            kwargs = dict(spec['kwargs'], n_ebs=1, layout='calibrated_final', continuum_jy=point_jy,
                          line_peak_jy=line_peak_jy, line_fwhm_kms=10.0, line_restfreq_ghz=line_restfreq_ghz, offset_arcsec=tuple(point_offset_arcsec),
                          noise_jy=noise_12m_jy * (12.0 / 7.0) ** 2 if name == '7m' else noise_12m_jy)
            kwargs.update((overrides or {}).get(name, {}))
            constants = dict(spec['constants'], **_TRACK)
            with _constants(constants):
                t = _sd.simulate_delivery(os.path.join(outdir, name), **kwargs)
            casa = _sd._Casa(None)
            frames = _sd._Frames(casa)
            dish, fwhm = _sd._ARRAYS[t['array']][2:]
            info = dict(truth=t, dish_m=dish, spws=t['spws'], ebs=[])
            for eb in t['ebs']:
                ms = os.path.join(outdir, name, eb['ms'])
                profile = _pb_profile(casa, ms, t['spws'][0]['id'], scratch, dish, fwhm)
                seen = _rewrite_sky(casa, frames, ms, t, sky, profile, rng)
                seen['baselines'] = _baselines(casa, ms, t['spws'][0]['centre_freq_ghz'] * 1e9)
                info['ebs'].append(dict(ms=eb['ms'], uid=eb['uid'], date=eb['date'], **seen))
            info['las_arcsec'] = min(e['baselines']['las_arcsec'] for e in info['ebs'])
            truth['arrays'][name] = info
        if '12m' in truth['arrays']:
            truth['tp'] = _tp_image(casa, os.path.join(outdir, 'tp.image'), truth['arrays']['12m']['truth'], sky,
                                    tp_beam_arcsec, tp_noise_jy_beam, rng)
            truth['tp']['image'] = 'tp.image'
            truth['tp']['fits'] = 'tp.fits'
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    truth = _sd._plain(truth)
    with open(os.path.join(outdir, 'truth.json'), 'w') as fh:
        json.dump(truth, fh, indent=1, sort_keys=True)
    return truth


def cached_goal(cache_root, **kwargs):
    """Path of a finished goal made with kwargs (made on first use; treat as read-only)."""
    import hashlib
    with open(os.path.abspath(__file__), 'rb') as fh:
        source = fh.read()
    with open(_sd.__file__, 'rb') as fh:
        source += fh.read()
    key = hashlib.sha1(source + json.dumps(kwargs, sort_keys=True, default=str).encode()).hexdigest()[:16]
    final = os.path.join(os.path.abspath(str(cache_root)), 'goal-%s' % key)
    return _sd.made_once(final, lambda folder: simulate_goal(folder, **kwargs))


if __name__ == '__main__':
    out = sys.argv[1]
    result = simulate_goal(out)
    print(json.dumps(dict((k, dict(las=v['las_arcsec'], base=[e['baselines'] for e in v['ebs']]))
                          for k, v in result['arrays'].items()), indent=1))
