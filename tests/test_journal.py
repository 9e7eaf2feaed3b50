"""The journal of a killed run is undone by the next one, but only for what this tool creates: a
damaged, hand-edited or wrong-shaped journal never makes a run remove a user's MS or a published
output, and never blocks the delivery."""
import json
import os

import pytest

import scriptForReprocessing as sfr
from test_cli import make_layout, tree_listing

TARGETS = 'uid___A002_X1_X1_targets.ms'
LINE = 'uid___A002_X1_X1_targets_line.ms'


def write_journal(root, content):
    (root / sfr.JOURNAL_NAME).write_text(content if isinstance(content, str) else json.dumps(content))


def test_a_journal_listing_user_data_removes_none_of_it(tmp_path, capsys):
    root = make_layout(tmp_path, line=(LINE,))
    ms_dir = root / 'measurement_sets'
    published = ms_dir / 'calibrated_final.ms'
    published.mkdir()
    partial = ms_dir / ('.calibrated_final_line.ms%s123' % sfr.PARTIAL_TAG)
    partial.mkdir()
    staging = root / sfr.WORK_DIR_NAME / 'staging' / 'concat'
    staging.mkdir(parents=True)
    write_journal(root, {'pid': 123, 'started': 'then', 'command': 'x', 'created': [
        str(ms_dir / TARGETS), str(ms_dir / LINE), str(published), str(root / 'caltables'), str(partial),
        str(staging)], 'set_aside': [[str(ms_dir / TARGETS), str(ms_dir / 'elsewhere.ms')]]})
    assert sfr.main(['--delivery', str(root), '--cleanup', '--dry-run']) == 0  # a dry run recovers nothing
    assert partial.exists()
    assert sfr.main(['--delivery', str(root), '--cleanup']) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    for kept in (ms_dir / TARGETS, ms_dir / LINE, published, root / 'caltables' / 'cont.dat'):
        assert kept.exists(), kept
    assert not partial.exists() and not (root / sfr.WORK_DIR_NAME).exists()
    assert 'removed its unfinished measurement_sets/.calibrated_final_line.ms.partial-123' in out
    assert 'targets.ms' not in out.split('Recovering')[1].split('[1/1]')[0], out
    assert not (root / sfr.JOURNAL_NAME).exists()


@pytest.mark.parametrize('content', ['null', '[]', '{"created": [1, null], "set_aside": [["a"], 3]}',
                                     '{"created": "measurement_sets"}', '\x00\x01 not json'])
def test_a_journal_of_the_wrong_shape_does_not_block_the_delivery(tmp_path, capsys, content):
    root = make_layout(tmp_path)
    write_journal(root, content)
    before = tree_listing(root / 'measurement_sets')
    assert sfr.main(['--delivery', str(root), '--cleanup']) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert 'Traceback' not in captured.err and captured.err == ''
    assert 'Recovering from an interrupted run' in captured.out
    assert tree_listing(root / 'measurement_sets') == before
    assert not (root / sfr.JOURNAL_NAME).exists()


def test_a_temporary_outside_the_delivery_is_removed_by_the_next_run(tmp_path, capsys):
    """--image DIR outside the delivery: a SIGKILL while publishing leaves .DIR.partial-PID there."""
    root = make_layout(tmp_path / 'delivery')
    outside = tmp_path / 'images_elsewhere'
    outside.mkdir()
    partial = outside / ('.cubes%s%d' % (sfr.PARTIAL_TAG, os.getpid() + 1))
    partial.mkdir()
    (partial / 'x.fits').write_text('half')
    someone_elses = outside / 'cubes'
    someone_elses.mkdir()
    write_journal(root, {'pid': 1, 'created': [str(partial), str(someone_elses)], 'set_aside': []})
    assert sfr.main(['--delivery', str(root), '--cleanup']) == 0
    assert not partial.exists() and someone_elses.is_dir()
