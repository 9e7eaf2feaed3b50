"""What recent pipeline releases changed in deliveries: spectral-window names in both ALMA forms (Cycle <= 11
'X…#ALMA_RB_06#…', Cycle 12+ with the GroupingID first, PIPE-2697: 'X100001#X900000004#ALMA_RB_06#…') in the
MSes and in cont.dat v3; the development pipeline's imaging MSes (PIPE-3003)."""
import collections
import re

import scriptForReprocessing as sfr

OLD = 'X1068667655#ALMA_RB_06#BB_1#SW-01#FULL_RES'
NEW = 'X100001#X900000004#ALMA_RB_06#BB_1#SW-01#FULL_RES'


def layout(*names):
    spws = collections.OrderedDict((25 + 2 * i, sfr.SpwInfo(25 + 2 * i, name, 64)) for i, name in enumerate(names))
    return sfr.MsLayout(path='uid___A002_X1_X1_targets.ms', start=0, fields={}, spws=spws, pairs=set(), rows=0)


def test_a_window_is_found_by_either_name_form_and_never_by_another_windows_tail():
    ms = layout(NEW, NEW.replace('BB_1#SW-01', 'BB_2#SW-01'))
    assert sfr.same_window(ms, name=OLD, spw_id=99) == 25
    assert sfr.same_window(ms, name=OLD.replace('BB_1', 'BB_2'), spw_id=99) == 27
    assert sfr.same_window(ms, name=OLD.replace('BB_1', 'BB_3'), spw_id=99, by_number=False) is None
    assert sfr.same_window(layout(OLD), name=NEW, spw_id=99) == 25
    # an exact name wins over a look-alike; names without ALMA's window part are compared whole
    assert sfr.same_window(layout(OLD, NEW), name=NEW, spw_id=99) == 27
    assert not sfr.same_window_name('spw25', 'X1#spw25') and sfr.same_window_name('spw25', 'spw25')


def test_check_reads_a_v3_contdat_of_the_other_name_form_without_a_warning(delivery_factory, run_script, casa):
    """A Cycle 12 delivery (GroupingID names in every MS and in cont.dat) checked with the cont.dat of the
    old form: the same channels are fitted, and no block is refused or warned about."""
    delivery = delivery_factory(n_ebs=2, contdat_version=3)
    contdat = delivery / 'caltables' / 'cont.dat'
    before = run_script('--check', delivery=delivery)
    assert before.returncode == 0, before.stdout + before.stderr
    for ms in sorted((delivery / 'measurement_sets').glob('*_targets.ms')):
        with sfr.opened_table(casa, ms / 'SPECTRAL_WINDOW', writable=True) as table:
            names = [str(n) for n in table.getcol('NAME')]
            table.putcol('NAME', [re.sub(r'^X[0-9a-f]+#ALMA_', 'X100001#X900000004#ALMA_', n) for n in names])
    text = contdat.read_text()
    assert re.search(r'SpectralWindow: \d+ X[0-9a-f]+#ALMA_RB', text), text  # the old form stays in cont.dat
    after = run_script('--check', delivery=delivery)
    assert after.returncode == 0, after.stdout + after.stderr
    fitted = [line for line in after.stdout.splitlines() if 'channels' in line and 'fit order' in line]
    assert fitted and fitted == [line for line in before.stdout.splitlines() if 'channels' in line and 'fit order' in line]
    assert 'no errors, 0 warnings' in before.stdout and 'no errors, 0 warnings' in after.stdout, after.stdout


def test_the_development_pipelines_imaging_mses_are_named_and_left_alone(delivery_factory, run_script, md5_tree):
    """PIPE-3003: hif_mstransform can write uid*_imaging.ms beside uid*_targets.ms.  Beside them: a note, and
    they stay untouched; alone: one line saying why this tool cannot use them."""
    import shutil
    delivery = delivery_factory(n_ebs=1)
    targets = sorted((delivery / 'measurement_sets').glob('*_targets.ms'))[0]
    imaging = targets.with_name(targets.name.replace('_targets.ms', '_imaging.ms'))
    shutil.copytree(str(targets), str(imaging))
    before = md5_tree(imaging)
    done = run_script('--check', delivery=delivery)
    assert done.returncode == 0, done.stderr
    assert 'also holds 1 imaging MS(es) of the pipeline (%s, PIPE-3003)' % imaging.name in done.stdout
    assert md5_tree(imaging) == before
    shutil.rmtree(str(targets))
    done = run_script('--check', delivery=delivery)
    assert done.returncode == 1 and done.stdout.count('ERROR') + done.stderr.count('ERROR') == 1
    assert 'holds only the pipeline\'s imaging MSes (%s' % imaging.name in done.stderr, done.stderr
