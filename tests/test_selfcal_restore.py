"""--contsub with the pipeline on a self-calibrated delivery: finding the pipeline's selfcal restore resources
(*.auxproducts.tgz) and deciding the hif_selfcal(restore_only=True) call, without the pipeline.

The tgz files here are laid out as hifa_exportdata writes them (h/tasks/exportdata/exportdata.py: cont.dat,
<context>.selfcal.json and each sc_workdir_*/<gain table> under its relative path), with the selfcal.json keys
hif_selfcal reads back (scal_targets: field, sc_band, sc_workdir, sc_exception, sc_lib: SC_success, vislist,
per MS gaintable_final).  tests/test_pipeline_selfcal_restore.py makes real ones with the pipeline.
"""
import io
import json
import tarfile

import pytest

import scriptForReprocessing as sfr
from test_contsub_pipeline_plan import HIF_SELFCAL_2024_1_0_8, VIS, fake_task, release_tasks

WORKDIR = 'sc_workdir_IRAS_16293-2422_alma_band_6'


def scal_targets(vislist=VIS, success=True, exception=False):
    library = {'SC_success': success, 'vislist': list(vislist)}
    for vis in vislist:
        library[vis] = {'gaintable_final': ['sc.IRAS_%s_Band_6_inf_EB_0_p.g' % vis, 'sc.IRAS_%s_Band_6_int_3_p.g' % vis],
                        'spwmap_final': [[], []], 'applycal_interpolate_final': ['linear', 'linear']}
    return [{'field': 'IRAS_16293-2422', 'sc_band': 'alma_band_6', 'sc_workdir': WORKDIR,
             'sc_exception': exception, 'sc_lib': library, 'spw_real': dict((vis, '25,27') for vis in vislist)}]


def write_auxproducts(path, targets, *, tables=None, extra=(), links=()):
    """An auxproducts.tgz as hifa_exportdata writes it; tables: the gain tables to include (default: all named);
    links: (name, target) symbolic links added (hifa_exportdata writes none)."""
    if tables is None:
        tables = ['%s/%s' % (t['sc_workdir'], table) for t in targets for vis in t['sc_lib']['vislist']
                  for table in t['sc_lib'][vis]['gaintable_final']]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(str(path), 'w:gz') as tar:
        def add(name, data=b'', directory=False):
            info = tarfile.TarInfo(name)
            if directory:
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            tar.addfile(info, None if directory else io.BytesIO(data))
        add('cont.dat', b'Field: IRAS_16293-2422\n')
        add('pipeline-20261206T214925.selfcal.json', json.dumps({'scal_targets': targets}).encode())
        for table in tables:
            add(table, directory=True)
            add(table + '/table.dat', b'x')
        for name in extra:
            add(name, b'x')
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def test_resources_in_the_member_calibration_folder_are_found_and_checked_as_hif_selfcal_does(tmp_path):
    delivery = tmp_path / 'member.uid___A001_X1_X2' / 'calibrated_final'
    delivery.mkdir(parents=True)
    tgz = write_auxproducts(delivery.parent / 'calibration' / 'uid___A001_X1_X2.hifa_calimage.auxproducts.tgz',
                            scal_targets())
    resources, notes = sfr.find_selfcal_resources(delivery, VIS)
    assert notes == []
    assert resources.path == tgz.resolve()
    assert resources.json_name == 'pipeline-20261206T214925.selfcal.json'
    assert resources.extracted == ['pipeline-20261206T214925.selfcal.json', WORKDIR]
    assert sorted(resources.covered) == sorted(VIS)
    assert resources.targets == ['IRAS_16293-2422 (alma_band_6)']


@pytest.mark.parametrize('folder', ['.', 'caltables', '../calibration', '../../calibration', 'products', 'rawdata'])
def test_every_folder_the_readme_names_is_searched(tmp_path, folder):
    delivery = tmp_path / 'member' / 'calibrated' / 'calibrated_final'
    delivery.mkdir(parents=True)
    write_auxproducts(delivery / folder / 'x.auxproducts.tgz', scal_targets())
    assert sfr.find_selfcal_resources(delivery, VIS)[0] is not None


@pytest.mark.parametrize('targets, tables, extra, why', [
    (scal_targets(success=False), None, (), 'no successfully self-calibrated target'),
    (scal_targets(exception=True), None, (), 'no successfully self-calibrated target'),
    (scal_targets(), ['%s/sc.IRAS_%s_Band_6_inf_EB_0_p.g' % (WORKDIR, VIS[0])], (), 'lacks the gain table'),
    (scal_targets(vislist=['uid___A002_X9_X9_targets.ms']), None, (), 'other measurement sets (uid___A002_X9_X9_targets)'),
    (scal_targets(), None, ('../evil.txt',), 'paths outside its folder'),
    (scal_targets(), None, (), 'a link or special file (%s/home)' % WORKDIR),
])
def test_resources_hif_selfcal_would_not_apply_are_named_and_left(tmp_path, targets, tables, extra, why):
    delivery = tmp_path / 'calibrated_final'
    delivery.mkdir()
    links = [(WORKDIR + '/home', '/root')] if 'link' in why else []
    write_auxproducts(delivery / 'caltables' / 'a.auxproducts.tgz', targets, tables=tables, extra=extra, links=links)
    resources, notes = sfr.find_selfcal_resources(delivery, VIS)
    assert resources is None
    assert len(notes) == 1 and why in notes[0] and 'a.auxproducts.tgz' in notes[0], notes


def test_an_auxproducts_file_without_selfcal_is_passed_over_for_one_with_it(tmp_path):
    delivery = tmp_path / 'calibrated_final'
    (delivery / 'caltables').mkdir(parents=True)
    with tarfile.open(str(delivery / 'caltables' / 'a.auxproducts.tgz'), 'w:gz') as tar:
        info = tarfile.TarInfo('cont.dat')
        tar.addfile(info, io.BytesIO(b''))
    second = write_auxproducts(delivery.parent / 'calibration' / 'b.auxproducts.tgz', scal_targets())
    resources, notes = sfr.find_selfcal_resources(delivery, VIS)
    assert resources.path == second.resolve()
    assert len(notes) == 1 and 'no *.selfcal.json' in notes[0]


def test_a_line_ms_name_matches_as_in_hif_selfcal():
    assert sfr.ms_stem('uid___A002_X1_X2_targets.ms') == 'uid___A002_X1_X2_targets'
    assert sfr.ms_stem('uid___A002_X1_X2_targets_cont.ms') == 'uid___A002_X1_X2_targets'


def decide_with_resources(revision, tasks):
    decided = sfr.pipeline_contsub_calls(
        revision=revision, task_parameters={name: sfr.task_parameter_names(t) for name, t in tasks.items()},
        vis=VIS, mpi_size=1, datatypes_recorded=True, selfcal_resources='/d/calibration/x.auxproducts.tgz')
    for name, arguments in decided.calls:
        tasks[name](**arguments)  # the release accepts what it is given
    return decided


@pytest.mark.parametrize('revision', ['2024.1.1.22', '2025.1.1.61'])
def test_releases_with_restore_only_apply_the_tables_after_hif_uvcontsub(revision):
    decided = decide_with_resources(revision, release_tasks(revision))
    assert decided.selfcal_restore == '/d/calibration/x.auxproducts.tgz'
    assert decided.calls == [
        ('h_init', {}),
        # CORRECTED_DATA registered as self-calibrated: hif_selfcal then leaves the stand-ins of the user's MSes alone
        ('hifa_importdata', {'vis': VIS, 'dbservice': False,
                             'datacolumns': {'data': 'regcal_contline_science', 'corrected': 'selfcal_contline_science'}}),
        ('hif_uvcontsub', {}),
        ('hif_selfcal', {'restore_only': True, 'restore_resources': '/d/calibration/x.auxproducts.tgz'})]
    assert 'hif_selfcal(restore_only=True)' in decided.flow


def test_a_release_without_restore_only_never_gets_hif_selfcal():
    """2024.1.0.8's hif_selfcal would run the whole self-calibration when it finds nothing to restore."""
    tasks = release_tasks('2024.1.1.22')
    tasks['hif_selfcal'] = fake_task('hif_selfcal', HIF_SELFCAL_2024_1_0_8)
    decided = decide_with_resources('2024.1.0.8', tasks)
    assert decided.selfcal_restore is None
    assert [name for name, _ in decided.calls] == ['h_init', 'hifa_importdata', 'hif_uvcontsub']
    assert any('has no restore_only' in note for note in decided.notes)
    tasks = release_tasks('2025.1.1.61')
    del tasks['hif_selfcal']
    assert decide_with_resources('2025.1.1.61', tasks).selfcal_restore is None


def test_without_resources_nothing_changes():
    decided = sfr.pipeline_contsub_calls(
        revision='2025.1.1.61', task_parameters={n: sfr.task_parameter_names(t)
                                                 for n, t in release_tasks('2025.1.1.61').items()},
        vis=VIS, mpi_size=1, datatypes_recorded=True)
    assert decided.selfcal_restore is None
    assert [name for name, _ in decided.calls] == ['h_init', 'hifa_importdata', 'hif_uvcontsub']
