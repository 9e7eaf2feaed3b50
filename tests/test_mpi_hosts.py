"""More than one node, on one machine: "mpirun" of the tool over two hosts made of network namespaces.

The hosts (tests/netns_hosts.py) have their own names and link-local addresses on a bridge the test
makes; Open MPI reaches the second host through an agent that enters its namespaces (as ssh would log
in), and the file system is shared as on a cluster.  What a user sees: the same command as on one node
(mpirun -n 3 python scriptForReprocessing.py --contsub_fast), ranks on every host, casampi servers on
both doing one execution block each, and line MSes identical to a serial run's.
Skips without root, iproute2, unshare, mpirun or casampi.
"""
import json
import os
import re
from pathlib import Path

import numpy
import pytest

import scriptForReprocessing as sfr
from conftest import SCRIPT, user_ms_digests
from netns_hosts import NetnsHosts, rank_recorder
from test_mpi import HAVE_CASAMPI, casa_logs, line_mses, read_column, run_files

TWO_EBS = dict(n_ebs=2)  # as test_mpi's: the simulated delivery is shared


@pytest.fixture
def two_hosts():
    why = NetnsHosts.missing() or ('' if HAVE_CASAMPI else 'casampi and mpi4py are not installed (make setup-mpi)')
    if why:
        pytest.skip(why)
    with NetnsHosts(2) as hosts:
        yield hosts


@pytest.mark.mpi
def test_the_hosts_are_separate_machines_to_open_mpi(two_hosts, tmp_path):
    """The helper itself: two names, two network namespaces, ranks placed round-robin, nothing left after."""
    recorder = rank_recorder(tmp_path)
    done = two_hosts.mpirun(['-n', '4', 'python3', recorder, '-c', 'pass'], cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads((tmp_path / ('rank%d.json' % r)).read_text()) for r in range(4)]
    assert [r['host'] for r in records] == ['host0', 'host1', 'host0', 'host1']
    assert len({r['netns'] for r in records}) == 2
    assert os.readlink('/proc/self/ns/net') not in {r['netns'] for r in records}  # not this machine's network


@pytest.mark.mpi
def test_contsub_fast_over_two_hosts_runs_servers_on_both_and_matches_the_serial_run(
        two_hosts, delivery_factory, run_script, casa, tmp_path):
    serial, parallel = delivery_factory(**TWO_EBS), delivery_factory(**TWO_EBS)
    assert run_script('--contsub_fast', '--jobs', '1', delivery=serial).returncode == 0
    before = user_ms_digests(parallel)
    where = tmp_path / 'ranks'
    where.mkdir()
    recorder = rank_recorder(where)

    import sys
    done = two_hosts.mpirun(['-n', '3', sys.executable, recorder, SCRIPT, '--contsub_fast'], cwd=parallel)

    assert done.returncode == 0, done.stdout + done.stderr
    ranks = {r: json.loads((where / ('rank%d.json' % r)).read_text()) for r in range(3)}
    # round-robin: rank 0 (drives) and server 2 on host0, server 1 on host1
    assert {r: ranks[r]['host'] for r in ranks} == {0: 'host0', 1: 'host1', 2: 'host0'}
    assert ranks[0]['netns'] == ranks[2]['netns'] != ranks[1]['netns']
    assert 'MPI: 3 ranks (rank 0 drives, 2 casampi servers)' in done.stdout
    assert set(re.findall(r'\] on MPI server (\d)', done.stdout)) == {'1', '2'}, done.stdout
    text = casa_logs(parallel)[0].read_text(errors='replace')
    assert 'uvcontsub::::casa::MPIServer-1' in text and 'uvcontsub::::casa::MPIServer-2' in text
    assert line_mses(serial) == line_mses(parallel) and len(line_mses(parallel)) == 2
    for name in line_mses(serial):
        for column in ('DATA', 'FLAG', 'WEIGHT', 'TIME', 'ANTENNA1', 'ANTENNA2'):
            assert numpy.array_equal(read_column(casa, Path(serial) / 'measurement_sets' / name, column),
                                     read_column(casa, Path(parallel) / 'measurement_sets' / name, column)), column
    after = user_ms_digests(parallel)
    assert {name: after[name] for name in before} == before
    assert run_files(parallel) == [sfr.LOCK_NAME]
