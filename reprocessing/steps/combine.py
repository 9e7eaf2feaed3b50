"""Step --combine: joint continuum images of this delivery with the other deliveries of its science goal (12 m +
7 m), each array alone on the same grid for comparison, and with --feather the total power added."""

from pathlib import Path

from ..casa.casa_engine import casa_task
from ..contdat.against_ms import analyse_contdat, read_delivery_contdat
from ..core.fileops import remove_tree
from ..core.layout import Delivery
from ..core.messages import say
from ..imaging.combine_image import ARCSEC, C_M_S, feather_with_tp, joint_tclean_parameters, measure_fluxes, run_joint_tclean, tp_beam_and_unit
from ..imaging.products import ous_from_path
from ..run.staging import make_shadow



def continuum_selection(casa, root, part, spw_ids):
    """[(ms, 'spw:chans,...')] of a delivery for the given (its own) spw ids, from its own cont.dat."""
    delivery = Delivery(root)
    by_ms = {}
    if delivery.contdat.is_file():
        analysis = analyse_contdat(read_delivery_contdat(delivery), [m.path for m in part.mses], casa)
        for path, selections in analysis.selections.items():
            by_ms[Path(path).name] = dict((s.spw_id, s.chan) for s in selections if s.chan)
    result = []
    for ms in part.mses:
        chans = by_ms.get(ms.path.name, {})
        result.append((ms.path, ','.join('%d:%s' % (k, chans[k]) if k in chans else '%d' % k for k in spw_ids)))
    return result


def run_combine(plan, state, step, casa):
    combination = plan.combination
    delivery = plan.delivery
    work = Path(delivery.imaging_dir) / 'combine'
    if work.exists():  # left by an earlier run that was stopped: its products were never published
        remove_tree(work)
    state.will_create(work)
    work.mkdir(parents=True)
    output = step.outputs[0]
    # Products appear under their final name only when complete: written into a partial folder, renamed.
    partial = state.partial_name(output)
    state.will_create(partial)
    partial.mkdir(parents=True)
    ous = ous_from_path(delivery.root)
    for line in combination.notes:
        say('  ' + line)
    selections = {}
    for number, part in enumerate(combination.parts):
        root = part.root or delivery.root
        spw_ids = [part.spw_map[k] for k in combination.spw_groups]
        shadowed = []
        for ms, selection in continuum_selection(casa, root, part, spw_ids):
            shadow = work / ('%d-%s' % (number, ms.name))
            if not shadow.exists():
                make_shadow(ms, shadow)
            shadowed.append((shadow, selection))
        selections[part.label] = shadowed
    results = []
    spw_text = '_'.join(str(k) for k in combination.spw_groups)
    for field in combination.fields:
        ra, dec = combination.parts[0].mses[0].fields[field]
        phasecenter = 'J2000 %.10frad %.10frad' % (ra, dec)
        half_power = 0.5 * 1.13 * C_M_S / max(s.lsrk_hi for s in combination.parts[0].mses[0].spws) / \
            max(m.dish_m for p in combination.parts for m in p.mses) / ARCSEC
        radius = half_power
        rows = []
        joint_label = ''.join(p.label for p in combination.parts)
        runs = [(joint_label, [item for p in combination.parts for item in selections[p.label]])]
        runs += [(p.label, selections[p.label]) for p in combination.parts]
        for label, chosen in runs:
            base = str(work / ('%s.%s_sci.spw%s.%s.mfs.I' % (ous, field, spw_text, label)))
            parameters = joint_tclean_parameters(combination, field, chosen, base, phasecenter=phasecenter)
            say('  [%s] tclean %s: %d MS, cell %s, %d pixels, %s' % (
                field, label, len(chosen), parameters['cell'], parameters['imsize'][0], parameters['deconvolver']))
            summary = run_joint_tclean(casa, parameters)
            flux = measure_fluxes(casa, base + '.image.pbcor', (ra, dec), radius)
            rows.append((label, base + '.image.pbcor', flux, summary.get('stopcode')))
            if label == joint_label and combination.feather is not None:
                major, minor, unit = tp_beam_and_unit(casa, combination.feather)
                say('  [%s] feather with %s: TP beam %.1f" x %.1f", %s' % (field, combination.feather, major, minor,
                                                                          unit))
                feathered = feather_with_tp(casa, base, combination.feather, work)
                rows.append((combination.label, feathered, measure_fluxes(casa, feathered, (ra, dec), radius), None))
        say('  [%s] flux within %.1f" of the field centre (the half-power radius of the largest dish):' % (field, radius))
        alone = dict((label, flux['total']) for label, _p, flux, _s in rows)
        for label, path, flux, stop in rows:
            versus = ', '.join('%.2f x %s alone' % (flux['total'] / alone[p.label], p.label)
                               for p in combination.parts if alone.get(p.label) and label != p.label)
            say('    %-8s %8.4f Jy  beam %.2f" x %.2f"%s' % (label, flux['total'], flux['beam'][0], flux['beam'][1],
                                                           ('  (' + versus + ')') if versus else ''))
            name = '%s.%s_sci.spw%s.%s.mfs.I.pbcor.fits' % (ous, field, spw_text, label)
            casa_task(casa, 'exportfits', about=name, imagename=path, fitsimage=str(partial / name), dropdeg=False)
            results.append(dict(field=field, product=label, fits=str(output / name), flux_jy=flux['total'],
                                beam_arcsec=list(flux['beam']), radius_arcsec=radius, stopcode=stop))
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()  # an empty folder of that name (the plan refuses a non-empty one)
    state.publish(partial, output)
    remove_tree(work)
    state.created_for_good(work)
    return {'combined': results}
