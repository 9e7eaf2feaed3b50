"""--contsub with the real ALMA pipeline (skipped where "import pipeline" fails, as in CI).

Run them by hand with a Python that has the pipeline, e.g.:

    /path/to/pipeline-python -m pytest tests/test_pipeline_contsub.py -m pipeline

The simulated MSes are first given the metadata the pipeline needs (tests/support/pipeline_ready.py).
"""
import inspect
import math

import numpy
import pytest

import scriptForReprocessing as sfr
from conftest import mean_spectrum, pipeline_available, truth_of, user_ms_digests

pytestmark = [pytest.mark.pipeline,
              pytest.mark.skipif(not pipeline_available(), reason='the ALMA pipeline is not installed')]


def test_the_installed_release_accepts_every_argument_it_is_given():
    revision, tasks = sfr.load_pipeline_tasks()
    decided = sfr.pipeline_contsub_calls(
        revision=revision, task_parameters={name: sfr.task_parameter_names(t) for name, t in tasks.items()},
        vis=['a_targets.ms'], mpi_size=4, datatypes_recorded=False)
    for name, arguments in decided.calls + [('h_save', {})]:
        inspect.signature(tasks[name]).bind(**arguments)


def test_contsub_with_the_pipeline_writes_line_mses_and_leaves_the_user_mses_alone(delivery_factory, run_script,
                                                                                    casa):
    from pipeline_ready import make_delivery_pipeline_ready
    delivery = delivery_factory(n_ebs=2)
    make_delivery_pipeline_ready(delivery / 'measurement_sets', casa=casa)
    truth = truth_of(delivery)
    before = user_ms_digests(delivery)
    result = run_script('--contsub', delivery=delivery, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'hif_uvcontsub(' in result.stdout
    after = user_ms_digests(delivery)
    assert {name: after[name] for name in before} == before, 'a user MS changed'
    work_dir = delivery / 'working_reprocess'
    revision, tasks = sfr.load_pipeline_tasks()
    grammar = sfr.contdat_grammar_read_by(revision, fits_with_uvcontfit='hif_uvcontfit' in tasks)
    user_text = (delivery / 'caltables' / 'cont.dat').read_text()
    assert (work_dir / 'cont.dat').read_text() == sfr.contdat_in_grammar(user_text, grammar)[0]
    assert list(work_dir.glob('pipeline-*/html')), 'no weblog'
    assert not list(work_dir.glob('uid*.ms')), 'a stand-in or a line MS was left in working_reprocess/'
    for eb in truth['ebs']:
        line = sfr.line_ms_path(delivery / eb['ms'])
        assert line.is_dir()
        assert sfr.spws_with_data(casa, line) == [25, 27]
        for spw in eb['spws']:
            spectrum, samples = mean_spectrum(casa, line, spw['id'])
            peak_channel = int(round(spw['line_topo_channel']))
            assert abs(spectrum.real[peak_channel] - truth['line_peak_jy']) < 0.05 * truth['line_peak_jy']
            # the band edges are line-free: the continuum (50 mJy) is gone to the noise
            edges = numpy.r_[spectrum.real[:3], spectrum.real[-3:]]
            assert abs(numpy.mean(edges)) < 3 * truth['noise_jy'] / math.sqrt(samples * len(edges)) + 0.002
