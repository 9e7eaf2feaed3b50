"""--contsub: everything decided before the pipeline is called, tested without the pipeline.

Which tasks run and with which arguments, for each release (PL2022 = Cycle 9, PL2023, PL2024+),
described by the signatures those releases' CLI tasks have; where the pipeline's stand-ins for the
user's MSes go in working_reprocess/; and what a user sees when the pipeline is not installed.
"""
import inspect
import sys

import pytest

import scriptForReprocessing as sfr
from conftest import SCRIPT, md5_tree, pipeline_available, run_command

# The CLI tasks' parameters, as the releases declare them (pipeline/*/cli/*.py of each release).
RELEASES = {
    '2022.2.0.68': {  # PL2022, Cycle 9 (CASA 6.4.1)
        'h_init': 'pipelinemode loglevel plotlevel weblog overwrite dryrun acceptresults',
        'hifa_importdata': 'vis session pipelinemode asis process_caldevice overwrite nocopy bdfflags datacolumns '
                           'lazy dbservice ocorr_mode createmms minparang dryrun acceptresults',
        'hif_uvcontfit': 'vis caltable contfile field intent spw combine solint fitorder pipelinemode dryrun '
                         'acceptresults',
        'hif_uvcontsub': 'vis field intent spw applymode pipelinemode dryrun acceptresults',
        'h_save': 'filename',
    },
    '2023.1.1.9': {  # PL2023, Cycle 10 (CASA 6.5.4)
        'h_init': 'loglevel plotlevel weblog',
        'hifa_importdata': 'vis session asis process_caldevice overwrite nocopy bdfflags datacolumns lazy '
                           'dbservice ocorr_mode createmms minparang dryrun acceptresults',
        'hif_uvcontsub': 'vis field intent spw fitorder dryrun acceptresults',
        'h_save': 'filename',
    },
    '2024.1.1.22': {  # PL2024, Cycle 11 (CASA 6.6.1)
        'h_init': 'loglevel plotlevel weblog',
        'hifa_importdata': 'vis session asis process_caldevice overwrite nocopy bdfflags datacolumns lazy '
                           'dbservice ocorr_mode createmms minparang parallel',
        'hif_uvcontsub': 'vis field intent spw fitorder parallel',
        'hif_selfcal': 'vis field spw contfile imsize cell apply recal restore_only refantignore restore_resources '
                       'n_solints amplitude_selfcal gaincal_minsnr minsnr_to_proceed delta_beam_thresh '
                       'apply_cal_mode_default rel_thresh_scaling dividing_factor check_all_spws '
                       'inf_EB_gaincal_combine usermask usermodel allow_wproject parallel',
        'h_save': 'filename',
    },
    '2025.1.1.61': {  # PL2025
        'h_init': 'loglevel plotlevel weblog processing_intents',
        'hifa_importdata': 'vis session asis process_caldevice overwrite nocopy bdfflags datacolumns lazy '
                           'dbservice ocorr_mode createmms minparang parallel',
        'hif_uvcontsub': 'vis field intent spw fitorder parallel',
        'hif_selfcal': 'vis field spw contfile hm_imsize hm_cell apply recal restore_only overwrite refantignore '
                       'restore_resources n_solints amplitude_selfcal gaincal_minsnr minsnr_to_proceed '
                       'delta_beam_thresh apply_cal_mode_default rel_thresh_scaling dividing_factor check_all_spws '
                       'inf_EB_gaincal_combine usermask usermodel allow_wproject parallel',
        'h_save': 'filename',
    },
}
# hif_selfcal of 2024.1.0.8 (and every release before 2024.1.1.18): no restore_only
HIF_SELFCAL_2024_1_0_8 = ('vis field spw contfile apply recal refantignore restore_resources n_solints amplitude_selfcal '
                          'gaincal_minsnr minsnr_to_proceed delta_beam_thresh apply_cal_mode_default rel_thresh_scaling '
                          'dividing_factor check_all_spws inf_EB_gaincal_combine usermask usermodel allow_wproject '
                          'parallel')
VIS = ['uid___A002_X1_X2_targets.ms', 'uid___A002_X3_X4_targets.ms']


def fake_task(name, parameters):
    """A stand-in for a release's task: it has the release's signature and rejects anything else."""
    def task(**kwargs):
        task.__signature__.bind(**kwargs)  # TypeError for an argument the release does not take
        return kwargs
    task.__name__ = name
    task.__signature__ = inspect.Signature(
        [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for p in parameters.split()])
    return task


def release_tasks(revision):
    return {name: fake_task(name, parameters) for name, parameters in RELEASES[revision].items()}


def decide(revision, *, mpi_size=1, datatypes_recorded=True):
    tasks = release_tasks(revision)
    decided = sfr.pipeline_contsub_calls(
        revision=revision, task_parameters={name: sfr.task_parameter_names(t) for name, t in tasks.items()},
        vis=VIS, mpi_size=mpi_size, datatypes_recorded=datatypes_recorded)
    for name, arguments in decided.calls:
        tasks[name](**arguments)  # every release accepts what it is given
    return decided


def test_cycle9_pipeline_fits_tables_from_contdat_then_applies_them():
    decided = decide('2022.2.0.68')
    assert decided.release == 'PL2022'
    assert decided.calls == [('h_init', {}),
                             ('hifa_importdata', {'vis': VIS, 'dbservice': False}),
                             ('hif_uvcontfit', {}),
                             ('hif_uvcontsub', {})]
    assert decided.copies_ms, 'PL2022 applies its fit into the MS: it must get a copy, never a shadow'
    assert 'hif_uvcontfit then hif_uvcontsub' in decided.flow
    assert decided.contdat_grammar == 2, 'PL2022 reads no v3 line'


@pytest.mark.parametrize('revision, release, grammar', [('2023.1.1.9', 'PL2023', 2), ('2024.1.1.22', 'PL2024', 3),
                                                        ('2025.1.1.61', 'PL2025', 3)])
def test_later_pipelines_run_hif_uvcontsub_alone_on_shadows(revision, release, grammar):
    decided = decide(revision)
    assert decided.release == release
    assert decided.contdat_grammar == grammar
    assert decided.calls == [('h_init', {}),
                             ('hifa_importdata', {'vis': VIS, 'dbservice': False}),
                             ('hif_uvcontsub', {})]
    assert not decided.copies_ms
    assert decided.notes == []


def test_no_release_is_given_pipelinemode_dryrun_or_acceptresults():
    for revision in RELEASES:
        for _name, arguments in decide(revision, mpi_size=4, datatypes_recorded=False).calls:
            assert not {'pipelinemode', 'dryrun', 'acceptresults'} & set(arguments)


def test_under_mpicasa_hif_uvcontsub_runs_in_parallel_where_the_release_can():
    assert ('hif_uvcontsub', {'parallel': True}) in decide('2024.1.1.22', mpi_size=4).calls
    assert ('hif_uvcontsub', {'parallel': True}) in decide('2025.1.1.61', mpi_size=4).calls
    pl2023 = decide('2023.1.1.9', mpi_size=4)
    assert ('hif_uvcontsub', {}) in pl2023.calls
    assert any('no "parallel" option' in note for note in pl2023.notes)
    assert ('hif_uvcontsub', {}) in decide('2025.1.1.61', mpi_size=1).calls


def test_data_types_are_declared_only_for_mses_that_do_not_record_them():
    decided = decide('2025.1.1.61', datatypes_recorded=False)
    assert ('hifa_importdata', {'vis': VIS, 'dbservice': False,
                                'datacolumns': {'data': 'regcal_contline_science'}}) in decided.calls
    assert any('do not record their data type' in note for note in decided.notes)


def test_arguments_of_a_task_whose_signature_cannot_be_read_are_left_to_its_defaults():
    parameters = {name: sfr.task_parameter_names(t) for name, t in release_tasks('2025.1.1.61').items()}
    parameters['hifa_importdata'] = None
    parameters['hif_uvcontsub'] = None
    decided = sfr.pipeline_contsub_calls(revision='2025.1.1.61', task_parameters=parameters, vis=VIS, mpi_size=4,
                                         datatypes_recorded=False)
    assert decided.calls[1:] == [('hifa_importdata', {'vis': VIS}), ('hif_uvcontsub', {})]


def test_a_pipeline_without_hif_uvcontsub_points_to_contsub_fast():
    parameters = {name: sfr.task_parameter_names(t) for name, t in release_tasks('2025.1.1.61').items()}
    del parameters['hif_uvcontsub']
    with pytest.raises(sfr.ReprocessingError, match='has no hif_uvcontsub — use --contsub_fast'):
        sfr.pipeline_contsub_calls(revision='2020.1.0.40', task_parameters=parameters, vis=VIS, mpi_size=1,
                                   datatypes_recorded=True)


@pytest.mark.parametrize('revision, release', [
    ('2022.2.0.68', 'PL2022'), ('2023.1.1.9', 'PL2023'), ('2026.0.0.0+1377-gfbf19139c1', 'PL2026'),
    ('pipeline-2024.1.0.8', 'PL2024'), ('unknown', 'unknown release'), (None, 'unknown release')])
def test_release_names_come_from_the_revision_string(revision, release):
    assert sfr.pipeline_release_name(revision) == release


def test_line_mses_are_named_as_hif_uvcontsub_names_them():
    assert sfr.pipeline_line_name('uid___A002_X1_X2_targets.ms') == 'uid___A002_X1_X2_targets_line.ms'
    assert sfr.pipeline_line_name('uid___A002_X1_X2_imaging.ms') == 'uid___A002_X1_X2_imaging_line.ms'


# -- staging in working_reprocess/ -----------------------------------------------------------------

def started_state(delivery):
    state = sfr.RunState(sfr.Delivery(delivery))
    state.acquire()
    state.begin('test')
    return state


def test_the_pipeline_gets_shadows_in_working_reprocess_with_every_subtable_private(delivery_factory):
    delivery = delivery_factory(n_ebs=2)
    targets = sfr.Delivery(delivery).targets
    before = {ms.name: md5_tree(ms) for ms in targets}
    state = started_state(delivery)
    try:
        staged = sfr.stage_for_pipeline_contsub(state, targets, delivery / 'working_reprocess', copy=False)
        for ms in targets:
            shadow = staged[ms]
            assert shadow == delivery / 'working_reprocess' / ms.name, 'importdata would copy an MS from elsewhere'
            assert (shadow / sfr.SHADOW_MARKER).exists()
            assert (shadow / 'table.dat').is_symlink() and (shadow / 'table.dat').resolve() == ms / 'table.dat'
            for subtable in ('HISTORY', 'FIELD', 'SOURCE', 'SPECTRAL_WINDOW'):
                files = list((shadow / subtable).iterdir())
                assert files and not any(f.is_symlink() for f in files), subtable + ' is not private'
            assert str(shadow) in state._journal['created']
        assert sfr.find_user_measurement_sets(delivery / 'working_reprocess') == []
        sfr.place_contdat_for_pipeline(sfr.Delivery(delivery))
        assert (delivery / 'working_reprocess' / 'cont.dat').read_bytes() == \
            (delivery / 'caltables' / 'cont.dat').read_bytes()
    finally:
        state.finish()
        state.release()
    assert not list((delivery / 'working_reprocess').glob('uid*')), 'the journal did not remove the shadows'
    assert {ms.name: md5_tree(ms) for ms in targets} == before


def test_the_cycle9_pipeline_gets_real_copies_that_cleanup_recognises(delivery_factory):
    delivery = delivery_factory(n_ebs=1)
    ms = sfr.Delivery(delivery).targets[0]
    state = started_state(delivery)
    try:
        copy = sfr.stage_for_pipeline_contsub(state, [ms], delivery / 'working_reprocess', copy=True)[ms]
        assert not any(p.is_symlink() for p in copy.rglob('*')), 'PL2022 writes into it: no link may remain'
        assert (copy / sfr.STAGED_COPY_MARKER).exists()
        assert sfr.find_user_measurement_sets(delivery / 'working_reprocess') == []
    finally:
        state.finish()
        state.release()


def test_an_ms_of_the_user_in_working_reprocess_is_never_imported_or_replaced(delivery_factory):
    delivery = delivery_factory(n_ebs=1)
    ms = sfr.Delivery(delivery).targets[0]
    work_dir = delivery / 'working_reprocess'
    work_dir.mkdir()
    for stranded_name in (ms.name, sfr.pipeline_line_name(ms.name)):
        stranded = work_dir / stranded_name
        sfr.shutil.copytree(str(ms), str(stranded))
        state = started_state(delivery)
        try:
            with pytest.raises(sfr.ReprocessingError, match='working_reprocess/%s exists' % stranded_name):
                sfr.stage_for_pipeline_contsub(state, [ms], work_dir, copy=False)
        finally:
            state.finish()
            state.release()
        assert (stranded / 'table.dat').is_file() and not (stranded / 'table.dat').is_symlink()
        sfr.remove_tree(stranded)


def test_an_edited_working_copy_of_contdat_is_kept_aside(delivery_factory, capsys):
    delivery = delivery_factory(n_ebs=1)
    (delivery / 'working_reprocess').mkdir()
    (delivery / 'working_reprocess' / 'cont.dat').write_text('Field: edited by hand\n')
    sfr.place_contdat_for_pipeline(sfr.Delivery(delivery))
    kept = list((delivery / 'working_reprocess').glob('cont.dat.before-*'))
    assert len(kept) == 1 and kept[0].read_text() == 'Field: edited by hand\n'
    assert 'kept as working_reprocess/cont.dat.before-' in capsys.readouterr().out


def test_a_release_reading_v2_gets_a_v2_working_copy_and_the_user_is_told(delivery_factory, capsys):
    delivery = delivery_factory(n_ebs=1, contdat_version=3)
    user_contdat = (delivery / 'caltables' / 'cont.dat').read_bytes()
    assert sfr.parse_contdat(user_contdat.decode(), path='x', display='x').version == 3
    (delivery / 'working_reprocess').mkdir()
    sfr.place_contdat_for_pipeline(sfr.Delivery(delivery), grammar=2, release='PL2022')
    working = (delivery / 'working_reprocess' / 'cont.dat').read_text()
    assert sfr.parse_contdat(working, path='x', display='x').version == 2
    assert working == sfr.contdat_in_grammar(user_contdat.decode(), 2)[0]
    assert (delivery / 'caltables' / 'cont.dat').read_bytes() == user_contdat
    out = capsys.readouterr().out
    assert 'PL2022 reads cont.dat v1/v2 only: it gets working_reprocess/cont.dat converted to v2 (the spw names' in out
    sfr.place_contdat_for_pipeline(sfr.Delivery(delivery), grammar=2, release='PL2022')  # the imaging step, after
    assert capsys.readouterr().out == '', 'placed already: said once'
    elsewhere = delivery / 'working_reprocess' / 'pipeline-image-x'
    elsewhere.mkdir()
    sfr.place_contdat_for_pipeline(sfr.Delivery(delivery), grammar=2, release='PL2023', work_dir=elsewhere)
    assert (elsewhere / 'cont.dat').read_text() == working
    assert 'it gets working_reprocess/pipeline-image-x/cont.dat converted' in capsys.readouterr().out
    sfr.place_contdat_for_pipeline(sfr.Delivery(delivery), grammar=3, release='PL2024')
    assert (delivery / 'working_reprocess' / 'cont.dat').read_bytes() == user_contdat
    assert 'cont.dat.before-' in capsys.readouterr().out, 'the v2 copy differs from the v3 file: kept aside'


def test_working_directory_always_comes_back(tmp_path):
    start = sfr.os.getcwd()
    with pytest.raises(RuntimeError):
        with sfr.working_directory(tmp_path):
            assert sfr.os.getcwd() == str(tmp_path)
            raise RuntimeError('the pipeline failed')
    assert sfr.os.getcwd() == start


def test_h_save_runs_even_when_a_task_fails(tmp_path):
    called = []

    def failing_import(**kwargs):
        called.append('hifa_importdata')
        raise RuntimeError('Failure executing job\nTraceback (most recent call last):\n  ...\n'
                           'RuntimeError: TableProxy::getColumn: column PhaseDir_Ref does not exist\n)')

    tasks = {'h_init': lambda: called.append('h_init'), 'hifa_importdata': failing_import,
             'hif_uvcontsub': lambda: called.append('hif_uvcontsub'), 'h_save': lambda: called.append('h_save')}
    calls = [('h_init', {}), ('hifa_importdata', {'vis': VIS}), ('hif_uvcontsub', {})]
    with pytest.raises(sfr.ReprocessingError) as raised:
        sfr.run_pipeline_calls(tasks, calls, work_dir=tmp_path, casa_log="casa.log")
    assert called == ['h_init', 'hifa_importdata', 'h_save']
    assert str(raised.value).startswith('the pipeline task hifa_importdata failed (RuntimeError: TableProxy::'
                                        'getColumn: column PhaseDir_Ref does not exist) — see its weblog')


# -- without the pipeline ---------------------------------------------------------------------------

@pytest.mark.skipif(pipeline_available(), reason='the pipeline is installed here')
@pytest.mark.parametrize('flags', [['--contsub'], ['--contsub', '--dry-run']], ids=['run', 'dry-run'])
def test_contsub_without_the_pipeline_says_so_before_doing_anything(delivery_factory, flags):
    delivery = delivery_factory(n_ebs=1)
    result = run_command([sys.executable, str(SCRIPT)] + flags, cwd=delivery)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        'ERROR: the ALMA pipeline is not available in this Python — use --contsub_fast, or run with '
        'casa --pipeline -c scriptForReprocessing.py ...')
    assert not (delivery / 'working_reprocess').exists()
    assert 'CASA log' not in result.stdout, 'CASA was started before the plan refused'
