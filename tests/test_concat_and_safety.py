"""--calibrated_final(_line), --cleanup, and the promise that nothing of the user's is lost.

Real CASA on simulated deliveries.
"""
import os
import signal
import subprocess
from pathlib import Path

import pytest

import scriptForReprocessing as sfr
from conftest import start_paused, user_ms_digests
from test_cli import tree_listing

THREE_EBS = dict(n_ebs=3, spw_ids=(25, 27, 29, 31), nchan=16, n_antennas=8, with_line_ms=True)


def read_table(casa, path, column=None):
    table = casa.casatools.table()
    table.open(str(path))
    try:
        return table.nrows() if column is None else list(table.getcol(column))
    finally:
        table.close()


def retune(casa, ms, *, shift_hz):
    """Shift an MS's TOPO frequencies, as a Doppler setting on another date would."""
    table = casa.casatools.table()
    table.open(str(ms / 'SPECTRAL_WINDOW'), nomodify=False)
    try:
        for row in range(table.nrows()):
            for column in ('CHAN_FREQ', 'REF_FREQUENCY'):
                table.putcell(column, row, table.getcell(column, row) + shift_hz)
    finally:
        table.close()


def test_calibrated_final_concatenates_every_execution_block(delivery_factory, run_script, tmp_path, casa):
    delivery = delivery_factory(**THREE_EBS)
    retune(casa, sorted((delivery / 'measurement_sets').glob('uid*_targets.ms'))[-1], shift_hz=123456.0)
    before = user_ms_digests(delivery)
    elsewhere, fresh_home = tmp_path / 'elsewhere', tmp_path / 'home'
    elsewhere.mkdir()
    fresh_home.mkdir()
    result = run_script('--delivery', delivery, '--calibrated_final', '--calibrated_final_line', cwd=elsewhere,
                        env={'HOME': str(fresh_home)})
    assert result.returncode == 0, result.stderr
    targets = sorted((delivery / 'measurement_sets').glob('uid*_targets.ms'))
    lines = sorted((delivery / 'measurement_sets').glob('uid*_targets_line.ms'))
    assert len(targets) == 3 and len(lines) == 3
    for name, inputs in (('calibrated_final.ms', targets), ('calibrated_final_line.ms', lines)):
        output = delivery / 'measurement_sets' / name
        assert read_table(casa, output) == sum(read_table(casa, ms) for ms in inputs)
        assert {25, 27, 29, 31} <= set(read_table(casa, output / 'DATA_DESCRIPTION', 'SPECTRAL_WINDOW_ID'))
    renumbered = result.stdout.split('calibrated_final_line.ms')[0]
    assert 'spectral windows: 25, 27, 29, 31, ' in renumbered and 'select spws by name' in renumbered
    assert user_ms_digests(delivery) == before, 'a user MS changed'
    assert list(elsewhere.iterdir()) == [], 'the run wrote into the current directory'
    assert not (fresh_home / '.casa').exists(), 'CASA needed ~/.casa'
    assert not list((delivery / 'measurement_sets').glob('.*')), 'a temporary output was left behind'
    assert not (delivery / sfr.JOURNAL_NAME).exists()



def test_dry_run_prints_the_plan_and_touches_nothing(delivery_factory, capsys):
    delivery = delivery_factory(**THREE_EBS)  # real MSes: the plan opens every one
    before = tree_listing(delivery)
    assert sfr.main(['--delivery', str(delivery), '--calibrated_final', '--cleanup', '--dry-run']) == 0
    out = capsys.readouterr().out
    assert out.startswith('Environment: CASA ')
    assert 'concatenate 3 MS' in out and 'out: measurement_sets/calibrated_final.ms' in out
    assert 'Extra disk needed' in out and 'Dry run: nothing was changed.' in out
    assert tree_listing(delivery) == before


@pytest.mark.parametrize('pause_at', ['concat', 'concat-written'])
def test_a_run_killed_with_sigkill_loses_nothing_and_the_next_run_recovers(delivery_factory, run_script,
                                                                           pause_at):
    delivery = delivery_factory(**THREE_EBS)
    before = user_ms_digests(delivery)
    process = start_paused(delivery, pause_at, '--calibrated_final')
    process.kill()
    process.communicate()
    output = delivery / 'measurement_sets' / 'calibrated_final.ms'
    assert not output.exists(), 'a half-written MS carries the final name'
    assert user_ms_digests(delivery) == before
    assert (delivery / sfr.JOURNAL_NAME).exists()

    rerun = run_script('--delivery', delivery, '--calibrated_final')
    assert rerun.returncode == 0, rerun.stderr
    assert 'Recovering from an interrupted run' in rerun.stdout
    if pause_at == 'concat-written':
        assert 'removed its unfinished measurement_sets/.calibrated_final.ms.partial-' in rerun.stdout
    assert output.is_dir()
    assert user_ms_digests(delivery) == before
    assert not list((delivery / 'measurement_sets').glob('.*'))


def test_sigterm_stops_cleanly_with_exit_1(delivery_factory):
    delivery = delivery_factory(**THREE_EBS)
    before = user_ms_digests(delivery)
    process = start_paused(delivery, 'concat-written', '--calibrated_final')
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert err.strip().splitlines()[-1].startswith('ERROR: stopped by signal')
    assert not (delivery / 'measurement_sets' / 'calibrated_final.ms').exists()
    assert not list((delivery / 'measurement_sets').glob('.*'))
    assert not (delivery / sfr.JOURNAL_NAME).exists()
    assert user_ms_digests(delivery) == before


def test_cleanup_removes_the_work_directory_and_reports_what_was_freed(delivery_factory, run_script, tmp_path):
    delivery = delivery_factory(**THREE_EBS)
    outside = tmp_path / 'not_in_the_delivery'
    outside.mkdir()
    (outside / 'precious.txt').write_text('keep me')
    assert run_script('--delivery', delivery, '--calibrated_final').returncode == 0
    work = delivery / sfr.WORK_DIR_NAME
    assert work.is_dir()
    os.symlink(str(outside), str(work / 'link_to_elsewhere'))
    result = run_script('--delivery', delivery, '--cleanup')
    assert result.returncode == 0, result.stderr
    assert 'freed' in result.stdout
    assert not work.exists()
    assert (outside / 'precious.txt').read_text() == 'keep me'
    assert (delivery / 'measurement_sets' / 'calibrated_final.ms').is_dir()


def test_cleanup_refuses_while_a_user_ms_sits_in_the_work_directory(delivery_factory, run_script):
    delivery = delivery_factory(**THREE_EBS)
    work = delivery / sfr.WORK_DIR_NAME
    work.mkdir()
    stranded = work / 'uid___A002_X9_X9_targets.ms'
    source = sorted((delivery / 'measurement_sets').glob('uid*_targets.ms'))[0]
    subprocess.run(['cp', '-r', str(source), str(stranded)], check=True)
    result = run_script('--delivery', delivery, '--cleanup')
    assert result.returncode == 1
    assert 'move them back to measurement_sets/' in result.stderr
    assert stranded.is_dir()


def test_a_shadow_with_short_links_reads_the_users_files_and_goes_without_touching_them(tmp_path):
    # The image step's shadows link through one link beside them (make_shadow(short_links=True)): a link whose
    # target has 60 bytes or more is kept in a disk block, and removing 288 of them took 0.9 s on ext4 with discard.
    ms = tmp_path / ('delivery_with_a_long_name_as_users_have_them' * 2) / 'measurement_sets' / \
        'uid___A002_Xe0e90d_Xb703_targets.ms'
    (ms / 'ANTENNA').mkdir(parents=True)
    (ms / 'HISTORY').mkdir()
    for name, text in (('table.dat', 'main'), ('table.f0', 'rows'), ('table.lock', 'lock'),
                       ('ANTENNA/table.f0', 'antennas'), ('ANTENNA/table.lock', 'antenna lock'),
                       ('HISTORY/table.f0', 'history')):
        (ms / name).write_text(text)
    before = user_ms_digests(ms.parent.parent)
    assert before
    staging = tmp_path / 'working_reprocess' / 'staging' / 'image'
    shadow = sfr.make_shadow(ms, staging / ms.name, short_links=True)
    links = [Path(root) / name for root, _dirs, files in os.walk(str(shadow)) for name in files
             if (Path(root) / name).is_symlink()]
    assert sorted(str(link.relative_to(shadow)) for link in links) == ['ANTENNA/table.f0', 'table.dat', 'table.f0']
    for link in links:
        assert len(os.readlink(str(link))) < 60, os.readlink(str(link))
        assert link.resolve() == (ms / link.relative_to(shadow)).resolve()
        assert link.read_text() == (ms / link.relative_to(shadow)).read_text()
    # the locks and the private HISTORY are the shadow's own files
    assert not (shadow / 'table.lock').is_symlink() and not (shadow / 'ANTENNA' / 'table.lock').is_symlink()
    assert not (shadow / 'HISTORY' / 'table.f0').is_symlink()
    (shadow / 'HISTORY' / 'table.f0').write_text('appended')
    sfr.remove_tree(staging)
    assert not staging.exists()
    assert user_ms_digests(ms.parent.parent) == before
