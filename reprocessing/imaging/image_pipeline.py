"""The pipeline imaging engine: h_init .. hif_makeimages .. h_save, products recorded as made."""

from ..core.messages import ReprocessingError, say
from ..casa.mpi import mpi_info
from ..casa.pipeline_calls import contdat_grammar_read_by, PipelineCall, pipeline_release_name, pipeline_task_calls
from ..contdat.for_pipeline import place_contdat_for_pipeline
from ..casa.pipeline_engine import check_pipeline_release, load_pipeline_tasks, run_pipeline_calls
from .pipeline_cubes import same_field, pipeline_cube_grids, pipeline_cube_products, set_rest_frequencies
from .products import ImageProduct, is_casa_image, ous_from_path


def run_pipeline_imaging(plan, state, casa, request, *, inputs, work_dir):
    """h_init .. h_save in work_dir; returns the products each hif_makeimages made."""
    cube_calls, restfreqs, gridded = pipeline_cube_grids(casa, request, targets=inputs['targets'],
                                                targets_line=inputs['targets_line'], ous=ous_from_path(plan.delivery.root))
    calls = pipeline_task_calls(request, targets=inputs['targets'], targets_line=inputs['targets_line'],
                                selfcal=inputs['selfcal'], parallel=mpi_info().size > 1, cube_calls=cube_calls)
    revision, tasks = load_pipeline_tasks(sorted({call.task for call in calls} | {'h_save'}),
                                          work_dir=plan.delivery.work_dir)
    arguments = check_pipeline_release(calls + [PipelineCall('h_save', {}, ())], tasks)[:-1]
    say('  pipeline %s (%s), working in %s' % (revision, pipeline_release_name(revision), work_dir))
    if plan.delivery.contdat.is_file():  # hif_makeimlist reads the continuum ranges where it runs
        place_contdat_for_pipeline(plan.delivery, grammar=contdat_grammar_read_by(revision),
                                   release=pipeline_release_name(revision), work_dir=work_dir)
    products, specmode = [], [None]

    def record_images(task, kwargs, new_names):
        if task == 'hif_makeimlist':
            specmode[0] = kwargs['specmode']
        if task == 'hif_makeimages':
            made = [name for name in new_names if is_casa_image(name)]
            products.extend(ImageProduct.from_working_name(work_dir / name, specmode=specmode[0]) for name in made)
            say('    %s: %d images' % (specmode[0], len(made)))

    run_pipeline_calls(tasks, [(call.task, kwargs) for call, kwargs in zip(calls, arguments)], work_dir=work_dir,
                       casa_log=state.casa_logfile, after_call=record_images)
    if restfreqs:
        made = set((p.field, p.spw) for p in products if p.specmode == 'cube')
        for field, spw in sorted(gridded):  # the pipeline refuses a grid it cannot make in its log only: say it here
            if not any(spw_text == str(spw) and same_field(field, name) for name, spw_text in made):
                raise ReprocessingError('the pipeline made no cube of field %s spw %d on the grid asked for (its '
                                        '"clean error" is in the CASA log %s) — use --engine casa for this grid' % (
                                            field, spw, state.casa_logfile))
        changed = set_rest_frequencies(casa, products, restfreqs)
        if changed:
            say('    rest frequency of the grid written into %d cube images (hif_makeimlist takes none)' % changed)
    return pipeline_cube_products(casa, request, products, work_dir=work_dir)
