"""The report's section on cubes: each cube's moment maps, its spectrum at the moment-0 peak (velocity in the
cube's frame, the channels cube health cleaned again shaded) and the list of those channels with why."""

from pathlib import Path

from .html import _table


def cubes_section(state, assets):
    """HTML parts for the images rows (the imaging step's table) that have moment maps, a spectrum or redone
    channels; [] when none has."""
    from html import escape
    rows = [image for result in state.results for image in (result.get('images') or [])
            if image.get('moment_maps') or image.get('spectrum') or image.get('redone_channels')]
    if not rows:
        return []
    parts = ['<h2>Cubes: moment maps, the spectrum at the peak, channels cleaned again</h2>',
             '<p class="muted">Moments 0, 1, 2 inside the signal mask made from the cube\'s own noise, moment 8 over '
             'every channel (README, "Moment maps").  The spectrum is the primary-beam corrected cube\'s at the '
             'brightest pixel of moment 0; its CSV lists every channel.</p>']
    for row in rows:
        parts.append('<h3>%s</h3>' % escape(str(row.get('image', ''))))
        figures = []
        for moment in row.get('moment_maps') or []:
            figures.append(_figure(assets, moment.get('png'), 'moment %s (%s)' % (moment.get('moment'),
                                                                             moment.get('unit') or '')))
        spectrum = row.get('spectrum')
        if spectrum:
            figures.append(_figure(assets, spectrum.get('png'), _spectrum_caption(spectrum),
                                   extra=assets.link(spectrum['csv']) if spectrum.get('csv') else None))
        parts.extend(figures)
        redone = (spectrum or {}).get('redone') or [{'channel': channel, 'why': why, 'velocity_kms': None}
                                                    for channel, why in row.get('redone_channels') or []]
        if redone:
            parts.append('<p>Channels cleaned again by the cube health check (alone, inside the primary beam above '
                         '0.3, cyclefactor 3) and spliced back:</p>')
            parts.append(_table(['channel', 'velocity (km/s)', 'why'], [
                [str(item['channel']), '%.3f' % item['velocity_kms'] if item.get('velocity_kms') is not None else '',
                 item['why']] for item in redone]))
        else:
            parts.append('<p class="muted">No channel needed cleaning again.</p>')
    return parts


def _spectrum_caption(spectrum):
    """'peak 0.2 Jy/beam at -0.1 km/s (LSRK, radio), channel 10; pixel (75, 75), the moment 0 peak'."""
    if spectrum.get('peak_velocity_kms') is not None:
        where = 'at %.3f km/s (%s, %s velocity), channel %s of width %.3g km/s' % (
            spectrum['peak_velocity_kms'], spectrum.get('frame', ''), spectrum.get('doppler', ''),
            spectrum.get('peak_channel'), spectrum.get('channel_width_kms') or 0.0)
    else:
        where = 'in channel %s (no rest frequency: frequency axis, %s)' % (spectrum.get('peak_channel'),
                                                                            spectrum.get('frame', ''))
    peak = spectrum.get('peak_jy')
    return 'spectrum at pixel (%s, %s), the %s peak: line peak %s %s' % (
        spectrum['pixel'][0], spectrum['pixel'][1], spectrum.get('pixel_from', ''),
        '%.3g mJy/beam' % (peak * 1e3) if peak is not None else '—', where)


def _figure(assets, png, caption, extra=None):
    from html import escape
    link = assets.link(png) if png else None
    if not link:
        return '<p class="muted">missing picture: %s</p>' % escape(str(png))
    more = ' (<a href="%s">%s</a>)' % (escape(extra), escape(Path(extra).name)) if extra else ''
    return '<figure><img src="%s" alt="%s"><figcaption>%s%s</figcaption></figure>' % (
        escape(link), escape(caption), escape(caption), more)
