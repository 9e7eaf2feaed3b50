"""Step --combine: joint continuum images of this delivery with the other deliveries of its science goal (12 m +
7 m), each array alone on the same grid for comparison, joint cubes on one common LSRK grid from each delivery's
continuum-subtracted line MSes, and with --feather the total power added."""

from pathlib import Path

from ..casa.casa_engine import casa_task
from ..casa.data_columns import has_selfcal_column
from ..contdat.against_ms import analyse_contdat
from ..contdat.grammar import ContDatErrors, describe_problem
from ..contsub.uvcontsub import build_fitspec, mstransform_fit_of, uvcontsub_checked, uvcontsub_takes_fitspec
from ..core.fileops import relative_path, remove_tree, write_atomically
from ..contdat.merge import WHOLE_WINDOW, find_block, intersect_ranges, line_free
from ..core.messages import ReprocessingError, one_line, say, warn
from ..imaging.combine_cube import common_coverage, spw_groups_of, cube_tclean_parameters, feather_cube_with_tp, tp_channel_width_hz
from ..imaging.combine_flux import compare_with_arrays, describe_rows, measure_product, write_flux_tables
from ..casa.ms_combine import UV_POINTS, sample_uvw
from ..report.combination import draw_uv_coverage
from ..imaging.combine_image import ARCSEC, C_M_S, array_order, describe_uv_coverage, feather_with_tp, joint_tclean_parameters, run_joint_tclean, tp_beam_and_unit
from ..imaging.products import ous_from_path
from ..run.staging import make_shadow


def checked_analysis(casa, contdat, part):
    """cont.dat (the part's own, merged or --contdat) checked against the part's MSes; stops on its errors."""
    analysis = analyse_contdat(contdat, [m.path for m in part.mses], casa)
    for problem in analysis.problems:
        say('  %s: %s' % (part.label, describe_problem(problem)))
    if analysis.errors:
        raise ContDatErrors(contdat.display, analysis.errors)
    return analysis


def continuum_selection(analysis, part, spw_ids):
    """[(ms, 'spw:chans,...')] of a delivery for the given (its own) spw ids, from the cont.dat analysis (None: all
    channels)."""
    by_ms = {}
    if analysis is not None:
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
    for path, text in combination.written:  # the merged (or translated) cont.dat: kept for the user to read
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, text)
        say('  wrote %s' % relative_path(path, delivery.root))
    analyses = [None if contdat is None else checked_analysis(casa, contdat, part)
                for contdat, part in zip(combination.contdats, combination.parts)]
    specmodes = combination.request.specmodes
    flux = continuum_images(casa, combination, delivery, analyses, work, partial, output) if 'mfs' in specmodes \
        else []
    cubes = joint_cubes(casa, combination, delivery, analyses, work, partial, output) if 'cube' in specmodes else []
    results = flux + cubes
    summary = describe_combination(casa, combination, delivery, partial, output, flux, cubes)
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()  # an empty folder of that name (the plan refuses a non-empty one)
    state.publish(partial, output)
    remove_tree(work)
    state.created_for_good(work)
    return {'combined': results, 'combination': summary}


def describe_combination(casa, combination, delivery, partial, output, flux, cubes):
    """The report's account of the combination (JSON-friendly): each delivery's array, MSes, antennas and spws, its
    uv coverage in numbers and drawn (uv_coverage.svg beside the products, a bounded sample of each MS's rows), the
    continuum products' flux table and the cubes.  The picture is a view of finished products: when it fails, the
    run says so and carries on."""
    parts = [dict(label=part.label, delivery=str(part.root or delivery.root), mses=[m.path.name for m in part.mses],
                  antennas=len(part.mses[0].antennas), spws=[part.spw_map[k] for k in combination.spw_groups],
                  uv=describe_uv_coverage(part.mses)) for part in combination.parts]
    picture = partial / 'uv_coverage.svg'
    try:
        uv_coverage_picture(casa, combination, parts, picture)
        say('  %s' % relative_path(output / picture.name, delivery.root))
    except Exception as error:
        warn('the uv-coverage picture could not be made (%s) — the images are complete; report this problem'
             % one_line(error))
        picture = None
    radii = sorted(set((name, radius) for row in flux for name, radius in row.get('radii', {}).items()),
                   key=lambda item: item[1])
    return dict(label=combination.label, fields=list(combination.fields), spws=list(combination.spw_groups),
                feather=str(combination.feather) if combination.feather else None, parts=parts,
                uv_picture=str(output / picture.name) if picture else None, flux=flux, radii=radii,
                arrays=sorted(set(p.label for p in combination.parts), key=array_order),
                flux_csv=str(output / 'flux_recovered.csv') if flux else None, cubes=cubes)


def uv_coverage_picture(casa, combination, parts, picture):
    """Sample each delivery's uv points (at most UV_POINTS rows per delivery), draw them to picture (SVG), and add to each of
    parts (describe_combination's) what was drawn."""
    import numpy
    samples = []
    reference_id = combination.spw_groups[0]
    for part, described in zip(combination.parts, parts):
        spw = next(s for s in part.mses[0].spws if s.spw_id == part.spw_map[reference_id])
        per_klambda = 0.5 * (spw.lsrk_lo + spw.lsrk_hi) / C_M_S / 1e3  # metres -> klambda at that spw's centre
        us, vs, read, rows = [], [], 0, 0
        for ms in part.mses:
            ids = [p.field_id for name in combination.fields for p in ms.imaging.fields.get(name, ())]
            u, v, count = sample_uvw(casa, ms.path, ids, budget=UV_POINTS // len(part.mses))
            us.append(u * per_klambda)
            vs.append(v * per_klambda)
            read, rows = read + len(u), rows + count
        u, v = numpy.concatenate(us), numpy.concatenate(vs)
        samples.append((part.label, u, v, read, rows))
        distance = numpy.hypot(u, v)
        described.update(uv_rows_read=read, uv_rows=rows, uv_frequency_hz=per_klambda * C_M_S * 1e3,
                         uv_klambda=[float(distance.min()), float(numpy.percentile(distance, 5)),
                                     float(distance.max())] if read else None)
    draw_uv_coverage(samples, picture, title='uv coverage of %s, field %s, at the spw paired with %d' % (
        ''.join(p.label for p in combination.parts), ', '.join(combination.fields), reference_id))


def continuum_images(casa, combination, delivery, analyses, work, partial, output):
    """The joint continuum image, each array's alone and the feathered one, of every shared field."""
    ous = ous_from_path(delivery.root)
    selections = {}
    for number, (part, analysis) in enumerate(zip(combination.parts, analyses)):
        spw_ids = [part.spw_map[k] for k in combination.spw_groups]
        shadowed = []
        for ms, selection in continuum_selection(analysis, part, spw_ids):
            shadow = work / ('%d-%s' % (number, ms.name))
            if not shadow.exists():
                make_shadow(ms, shadow)
            shadowed.append((shadow, selection))
        selections[part.label] = shadowed
    spw_text = '_'.join(str(k) for k in combination.spw_groups)
    array_labels = sorted(set(p.label for p in combination.parts), key=array_order)
    highest = max(s.lsrk_hi for s in combination.parts[0].mses[0].spws)
    # each array's primary-beam half-power radius (the largest dish's holds the extended source an array filters
    # out; the smallest dish's, what the combination adds beyond it)
    radii = sorted(set((p.label, round(0.5 * 1.13 * C_M_S / highest / min(m.dish_m for m in p.mses) / ARCSEC, 2))
                       for p in combination.parts), key=lambda item: item[1])
    flux_rows = []
    for field in combination.fields:
        ra, dec = combination.parts[0].mses[0].fields[field]
        phasecenter = 'J2000 %.10frad %.10frad' % (ra, dec)
        made = []
        joint_label = ''.join(p.label for p in combination.parts)
        runs = [(joint_label, [item for p in combination.parts for item in selections[p.label]])]
        runs += [(p.label, selections[p.label]) for p in combination.parts]
        for label, chosen in runs:
            base = str(work / ('%s.%s_sci.spw%s.%s.mfs.I' % (ous, field, spw_text, label)))
            parameters = joint_tclean_parameters(combination, field, chosen, base, phasecenter=phasecenter)
            say('  [%s] tclean %s: %d MS, cell %s, %d pixels, %s' % (
                field, label, len(chosen), parameters['cell'], parameters['imsize'][0], parameters['deconvolver']))
            summary = run_joint_tclean(casa, parameters)
            made.append((label, base + '.image.pbcor', summary.get('stopcode')))
            if label == joint_label and combination.feather is not None:
                major, minor, unit = tp_beam_and_unit(casa, combination.feather)
                say('  [%s] feather with %s: TP beam %.1f" x %.1f", %s' % (field, combination.feather, major, minor,
                                                                          unit))
                made.append((combination.label, feather_with_tp(casa, base, combination.feather, work), None))
        rows, point = [], None
        for label, path, stop in made:  # the joint image first: its brightest compact source is measured in all
            name = '%s.%s_sci.spw%s.%s.mfs.I.pbcor.fits' % (ous, field, spw_text, label)
            flux = measure_product(casa, path, (ra, dec), radii, point=point)
            point = point or flux['point']['offset_arcsec']
            casa_task(casa, 'exportfits', about=name, imagename=path, fitsimage=str(partial / name), dropdeg=False)
            rows.append(dict(field=field, product=label, fits=str(output / name), flux_jy=flux['within'][radii[0][0]],
                             within=flux['within'], point=flux['point'], beam=list(flux['beam']), radii=dict(radii),
                             beam_arcsec=list(flux['beam']), radius_arcsec=radii[0][1], stopcode=stop))
        compare_with_arrays(rows, array_labels)
        for line in describe_rows(rows, radii):
            say('  [%s] %s' % (field, line))
        flux_rows.extend(rows)
    for path in write_flux_tables(partial, flux_rows, radii, array_labels):
        say('  %s' % relative_path(output / path.name, delivery.root))
    return flux_rows


def line_mses(casa, combination, analyses, work):
    """Each delivery's continuum subtracted with its cont.dat (the analyses), shared fields and spws only, into the
    work folder (the user's MSes are only read): [(label, [(line ms, {reference spw id: its spw id})])]."""
    made = []
    for number, (part, analysis) in enumerate(zip(combination.parts, analyses)):
        wanted = dict((part.spw_map[k], k) for k in combination.spw_groups)
        lines = []
        for ms in part.mses:
            chosen = [s for s in analysis.selections[str(ms.path)]
                      if s.spw_id in wanted and s.field_name in combination.fields]
            if not chosen:
                raise ReprocessingError('%s: its cont.dat selects nothing to fit in %s for the shared spws %s — add '
                                        'blocks for them, or give --contdat FILE' % (
                                            part.label, ms.path.name, ', '.join(str(k) for k in sorted(wanted))))
            field, spw, fitspec = build_fitspec(chosen)
            line = work / ('%d-%s.line.ms' % (number, ms.path.name[:-3]))
            # the self-calibrated data where the delivery has them (CORRECTED_DATA), as the imaging step reads
            column = 'corrected' if has_selfcal_column(casa, ms.path) else 'data'
            say('  %s: continuum of %s (%s) fitted and subtracted (uvcontsub; spws %s; %s)' % (
                part.label, ms.path.name, 'CORRECTED_DATA' if column == 'corrected' else 'DATA', spw, '; '.join('spw %d: %s' % (s.spw_id, 'channels ' + s.chan if s.chan
                                                                              else 'all channels') for s in chosen)))
            uvcontsub_checked(casa, ms=ms.path, output=line, field=field, spw=spw, fitspec=fitspec, datacolumn=column,
                              mstransform_fit=None if uvcontsub_takes_fitspec(casa) else mstransform_fit_of(
                                  fitspec, ms_name=ms.path.name, casa_version=casa.version))
            # uvcontsub keeps the spw ids (its SPECTRAL_WINDOW table whole, rows of the selected spws only; CASA 6.7)
            lines.append((line, dict((k, spw_id) for spw_id, k in wanted.items())))
        made.append((part.label, lines))
    return made


def tp_line_free(combination, field, reference_id):
    """[(low, high) Hz LSRK]: the frequencies every delivery's cont.dat says line-free for a group (the TP cube's
    continuum is fitted there); the whole window where no cont.dat says otherwise."""
    ranges = WHOLE_WINDOW
    for part, contdat in zip(combination.parts, combination.contdats):
        spw_id, spw_name = spw_groups_of(combination, part)[reference_id]
        block = None if contdat is None else find_block(contdat, field, spw_id, spw_name)
        if block is not None and all(r.frame == 'LSRK' for r in block.ranges):
            ranges = intersect_ranges(ranges, line_free(block, contdat.display))
    if ranges is WHOLE_WINDOW:
        low, high, _native = common_coverage(combination, reference_id)
        ranges = [(low, high)]
    return ranges


def joint_cubes(casa, combination, delivery, analyses, work, partial, output):
    """The joint cube (mosaic gridder, every delivery's line MSes) of every shared field and spw on the common grid,
    and feathered with --feather's TP cube."""
    ous = ous_from_path(delivery.root)
    made = line_mses(casa, combination, analyses, work)
    joint_label = ''.join(p.label for p in combination.parts)
    results = []
    for field in combination.fields:
        ra, dec = combination.parts[0].mses[0].fields[field]
        phasecenter = 'J2000 %.10frad %.10frad' % (ra, dec)
        for reference_id in combination.spw_groups:
            spectral, _note = combination.grids[(field, reference_id)]  # decided (and said) while planning
            chosen = [(line, ids[reference_id]) for _label, lines in made for line, ids in lines]
            base = str(work / ('%s.%s_sci.spw%d.%s.cube.I' % (ous, field, reference_id, joint_label)))
            parameters = cube_tclean_parameters(combination, field, chosen, base, spectral, phasecenter=phasecenter,
                                                casa=casa)
            say('  [%s] tclean cube spw %d %s: %d line MS, cell %s, %d pixels, %d channels' % (
                field, reference_id, joint_label, len(chosen), parameters['cell'], parameters['imsize'][0],
                parameters['nchan']))
            summary = run_joint_tclean(casa, parameters)
            products = [(joint_label, base + '.image.pbcor')]
            if combination.feather is not None:
                major, minor, unit = tp_beam_and_unit(casa, combination.feather)
                tp_width = tp_channel_width_hz(casa, combination.feather)
                say('  [%s] feather spw %d with %s: TP beam %.1f" x %.1f", %s%s, put on the cube\'s grid'
                    % (field, reference_id, combination.feather, major, minor, unit,
                       ', channels of %.4g kHz (the cube\'s: %.4g kHz)' % (tp_width / 1e3, spectral['width_hz'] / 1e3)
                       if tp_width else ''))
                line_free = tp_line_free(combination, field, reference_id)
                feathered, chans, edge = feather_cube_with_tp(casa, base, combination.feather, work, line_free)
                if feathered is None:
                    say('  [%s] spw %d is not feathered: %s' % (field, reference_id, chans))
                else:
                    say('  [%s] TP put on the cube\'s channels (linear interpolation in LSRK frequency%s); its continuum '
                        'subtracted over channels %s (line-free in every delivery)' % (
                            field, '; %d channel%s beyond the TP\'s last channel centre take its value' % (
                                edge, '' if edge == 1 else 's') if edge else '', chans) if chans else
                        '  [%s] no channel of the cube is line-free in every delivery: the TP cube is feathered as it is'
                        % field)
                    products.append((combination.label, feathered))
            for label, path in products:
                name = '%s.%s_sci.spw%d.%s.cube.I.pbcor.fits' % (ous, field, reference_id, label)
                casa_task(casa, 'exportfits', about=name, imagename=path, fitsimage=str(partial / name),
                          dropdeg=False, velocity=False)
                say('  [%s] %s' % (field, name))
                results.append(dict(field=field, product=label, fits=str(output / name), spw=reference_id,
                                    grid=dict((k, spectral[k]) for k in ('nchan', 'start', 'width', 'width_hz')),
                                    stopcode=summary.get('stopcode') if label == joint_label else None))
    return results
