"""The reprocessing report: every run writes working_reprocess/report/run-<time>/index.html and an index of runs.

Static HTML a user can open as a file or serve with --weblog report: no JavaScript, every image beside it.
"""
import html
import html.parser
import re
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import scriptForReprocessing as sfr
from conftest import start_paused, truth_of, user_ms_digests
from test_weblog import make_weblog_delivery

# The same simulated delivery as the concat tests, so a full test run simulates it once.
THREE_EBS = dict(n_ebs=3, spw_ids=(25, 27, 29, 31), nchan=16, n_antennas=8, with_line_ms=True)


class Page(html.parser.HTMLParser):
    """What a browser would show: the text, the tables' rows, the images and links, and any script."""

    def __init__(self, path):
        html.parser.HTMLParser.__init__(self)
        self.path = Path(path)
        self.raw = self.path.read_text(encoding='utf-8')
        self.texts, self.rows, self.images, self.links, self.scripts = [], [], [], [], 0
        self._row = None
        self._cell = None
        self.feed(self.raw)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == 'script':
            self.scripts += 1
        if tag == 'img':
            self.images.append(attrs.get('src'))
        if tag == 'a':
            self.links.append(attrs.get('href'))
        if tag == 'tr':
            self._row = []
        if tag in ('td', 'th'):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ('td', 'th') and self._row is not None:
            self._row.append(' '.join(''.join(self._cell).split()))
            self._cell = None
        if tag == 'tr' and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        self.texts.append(data)
        if self._cell is not None:
            self._cell.append(data)

    @property
    def text(self):
        return ' '.join(' '.join(self.texts).split())

    def row(self, first_cell):
        """The table row whose first cell is first_cell."""
        matches = [row for row in self.rows if row and row[0] == first_cell]
        assert matches, 'no row "%s" in %s' % (first_cell, self.path)
        return matches[0]

    def assert_self_contained(self):
        """No JavaScript; every image it shows exists inside the report."""
        assert self.scripts == 0 and 'javascript:' not in self.raw.lower()
        report_root = self.path.parent if self.path.parent.name == 'report' else self.path.parent.parent
        for source in self.images:
            image = (self.path.parent / source).resolve()
            assert image.is_file(), 'missing image %s' % source
            assert sfr.is_inside(image, report_root.resolve()), 'an image outside the report: %s' % source
        for link in self.links:
            if not link.startswith(('http:', 'https:', '#')):
                assert (self.path.parent / link).exists(), 'a broken link: %s' % link


def report_root(delivery):
    return Path(delivery) / sfr.WORK_DIR_NAME / sfr.REPORT_DIR_NAME


def run_pages(delivery):
    return [Page(folder / 'index.html') for folder in sorted(report_root(delivery).glob('run-*'))]


def test_a_run_writes_a_page_with_what_was_run_its_inputs_and_outputs(delivery_factory, run_script):
    delivery = delivery_factory(**THREE_EBS)
    truth = truth_of(delivery)
    before = user_ms_digests(delivery)
    result = run_script('--calibrated_final', delivery=delivery)
    assert result.returncode == 0, result.stderr

    page, = run_pages(delivery)
    page.assert_self_contained()
    assert page.row('Status')[1] == 'succeeded'
    assert page.row('Command')[1] == 'scriptForReprocessing.py --calibrated_final'
    assert page.row('Environment')[1].startswith('CASA 6.')
    assert 'modular' in page.row('Engine')[1]
    number, step, _what, started, ended, duration, status, details = page.row('1')
    assert (step, status) == ('calibrated_final', 'done')
    assert started and ended and duration.endswith(' s') and 'rows: ' in details
    for eb in truth['ebs']:
        name, size, fields, spws = page.row(eb['ms'])
        assert size.endswith(('kB', 'MB')) and fields == 'IRAS_16293-2422'
        for spw in truth['spws']:
            low, high = spw['topo_freq_range_ghz']
            assert '%d %s: %.4f–%.4f GHz, %d channels' % (spw['id'], spw['name'], low, high, spw['nchan']) in spws
    assert page.row('measurement_sets/calibrated_final.ms')[1].endswith('MB')

    index = Page(report_root(delivery) / 'index.html')
    index.assert_self_contained()
    assert index.links == ['%s/index.html' % page.path.parent.name]
    assert user_ms_digests(delivery) == before, 'reading the inputs for the report changed a user MS'
    assert not list(report_root(delivery).rglob('.*')), 'a temporary file was left in the report'



def test_a_stopped_run_still_writes_its_page_and_every_run_is_in_the_index(delivery_factory, run_script):
    delivery = delivery_factory(**THREE_EBS)
    process = start_paused(delivery, 'concat', '--calibrated_final')
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == 1

    stopped, = run_pages(delivery)
    stopped.assert_self_contained()
    status = stopped.row('Status')[1]
    assert status.startswith('INTERRUPTED: stopped by signal %d' % signal.SIGTERM)
    assert stopped.row('1')[1:2] + stopped.row('1')[6:7] == ['calibrated_final', 'interrupted']
    assert stopped.row('measurement_sets/calibrated_final.ms')[1] == 'not made'

    again = run_script('--calibrated_final', delivery=delivery)
    assert again.returncode == 0, again.stderr
    index = Page(report_root(delivery) / 'index.html')
    index.assert_self_contained()
    statuses = [row[1] for row in index.rows[1:]]
    assert statuses == ['succeeded', 'INTERRUPTED'], 'the index lists the newest run first'
    assert len(run_pages(delivery)) == 2


def make_test_image(casa, path, *, nchan=1, peak_channel=0, peak_jy=0.2, noise_jy=0.002):
    """A CASA image of a Gaussian source (0.5" x 0.3" beam, PA 30 deg) on noise, 0.1" pixels."""
    import numpy
    image = casa.casatools.image()
    image.fromshape(str(path), [64, 64, 1, nchan], overwrite=True)
    try:
        coordinates = image.coordsys()
        coordinates.setincrement(value=['-0.1arcsec', '0.1arcsec'], type='direction')
        image.setcoordsys(coordinates.torecord())
        coordinates.done()
        data = numpy.random.default_rng(3).normal(0.0, noise_jy, (64, 64, 1, nchan))
        x, y = numpy.meshgrid(numpy.arange(64), numpy.arange(64), indexing='ij')
        data[:, :, 0, peak_channel] += peak_jy * numpy.exp(-((x - 40) ** 2 + (y - 28) ** 2) / (2 * 2.0 ** 2))
        image.putchunk(data)
        image.setbrightnessunit('Jy/beam')
        image.setrestoringbeam(major='0.5arcsec', minor='0.3arcsec', pa='30deg')
    finally:
        image.close()
    return path


@pytest.mark.parametrize('nchan, peak_channel', [(1, 0), (8, 5)])
def test_image_thumbnails_show_the_peak_with_the_tables_peak_rms_and_beam(tmp_path, casa, nchan, peak_channel):
    image = make_test_image(casa, tmp_path / 'test.image.pbcor', nchan=nchan, peak_channel=peak_channel)
    png = tmp_path / 'thumbnails' / 'test.png'
    found = sfr.render_image_thumbnail(image_path=image, png_path=png, casa=casa)
    assert png.read_bytes().startswith(b'\x89PNG')
    assert abs(found['peak'] - 0.2) < 0.01
    assert 0.0016 < found['rms'] < 0.0024
    assert found['unit'] == 'Jy/beam'
    assert found['beam'] == pytest.approx({'major': 0.5, 'minor': 0.3, 'pa': 30.0})
    assert found['peak_position'] == [40, 28, 0, peak_channel], 'the source, in its channel'
    assert found['map_peak'] == pytest.approx(found['peak']), 'a cube is shown by its peak over channels'
    assert 'peak %s, rms %s' % (sfr.flux_text(found['peak']), sfr.flux_text(found['rms'])) in found['title']
    assert not list(png.parent.glob('.*')), 'a temporary PNG was left behind'


def make_primary_beam_pair(casa, folder, *, nchan=6, peak_channel=3):
    """A pbcor cube and its pb as tclean makes them: noise divided by a Gaussian primary beam, so the
    edges of the pbcor cube (pb 0.03) are brighter than the source (0.2 Jy/beam at the centre)."""
    import numpy
    pbcor = make_test_image(casa, folder / 'cube.image.pbcor', nchan=nchan, peak_channel=peak_channel,
                            peak_jy=0.2, noise_jy=0.005)
    pb_path = folder / 'cube.pb'
    x, y = numpy.meshgrid(numpy.arange(64), numpy.arange(64), indexing='ij')
    response = numpy.exp(-((x - 31.5) ** 2 + (y - 31.5) ** 2) / (2 * 17.0 ** 2))
    cube = numpy.repeat(response[:, :, None, None], nchan, axis=3)
    image = casa.casatools.image()
    image.fromshape(str(pb_path), [64, 64, 1, nchan], overwrite=True)
    image.putchunk(cube)
    image.close()
    image.open(str(pbcor))
    noisy = image.getchunk()
    source = numpy.zeros_like(noisy)
    source[:, :, 0, peak_channel] = 0.2 * numpy.exp(-((x - 40) ** 2 + (y - 28) ** 2) / (2 * 2.0 ** 2))
    image.putchunk(source + (noisy - source) / cube)  # the noise, not the source, is amplified by 1/pb
    image.close()
    return pbcor, pb_path


def test_a_cube_thumbnail_shows_the_source_not_the_edge_noise_of_the_pbcor_cube(tmp_path, casa):
    pbcor, pb = make_primary_beam_pair(casa, tmp_path)
    whole = sfr.image_statistics(casa, pbcor)
    assert whole['peak'] > 0.3, 'the test cube must have edges brighter than its source'
    statistics = sfr.image_statistics(casa, pbcor, pb=pb)
    found = sfr.render_image_thumbnail(image_path=pbcor, png_path=tmp_path / 'cube.png', casa=casa, pb=pb,
                                       statistics=statistics)
    assert abs(found['peak'] - 0.2) < 0.03 and found['peak_position'][:2] == [40, 28]
    assert found['peak_position'][3] == 3, 'the peak is in the source\'s channel'
    assert found['map_peak_position'] == [40, 28], 'the map is pbcor x pb: the source is its brightest pixel'
    assert 'rms %s (pb > 0.5)' % sfr.flux_text(statistics['rms']) in found['title']


def test_the_rms_leaves_out_the_clean_mask_and_falls_back_when_the_mask_covers_the_image(tmp_path, casa):
    """Residual structure of a bright source inside its clean mask must not count as noise."""
    import numpy
    image_path = make_test_image(casa, tmp_path / 'mfs.image', peak_jy=0.0, noise_jy=0.002)
    x, y = numpy.meshgrid(numpy.arange(64), numpy.arange(64), indexing='ij')
    inside = (x - 32) ** 2 + (y - 32) ** 2 < 18 ** 2  # a quarter of the image, as a mask of a bright source
    image = casa.casatools.image()
    image.open(str(image_path))
    pixels = image.getchunk()
    pixels[inside, 0, 0] += 0.05 * numpy.sin(x[inside])  # +-50 mJy/beam of "sidelobes" in the mask
    image.putchunk(pixels)
    image.close()
    for name, region in (('source.mask', inside), ('full.mask', numpy.ones_like(inside))):
        image.fromshape(str(tmp_path / name), [64, 64, 1, 1], overwrite=True)
        image.putchunk(region[:, :, None, None].astype(float))
        image.close()
    everywhere = sfr.image_statistics(casa, image_path)
    outside = sfr.image_statistics(casa, image_path, clean_mask=tmp_path / 'source.mask')
    covered = sfr.image_statistics(casa, image_path, clean_mask=tmp_path / 'full.mask')
    assert outside['rms_outside_mask'] and outside['rms'] == pytest.approx(0.002, rel=0.05)
    assert everywhere['rms'] > 1.2 * outside['rms'], 'the structure in the mask raises the whole-image rms'
    assert not covered['rms_outside_mask'] and covered['rms'] == pytest.approx(everywhere['rms'])
    assert outside['peak'] == everywhere['peak'], 'the peak is looked for inside the mask too'
    # a cube's per-channel rms follows the same definition
    frequencies, rms = sfr.channel_rms(casa, image_path, None, tmp_path / 'source.mask')
    assert len(rms) == 1 and rms[0] == pytest.approx(outside['rms'])


def stub_delivery(root, *, contdat_text):
    """A calibrated_final/ layout with stand-in MSes: enough for a plan, no CASA needed."""
    for name in ('uid___A002_X1_X1_targets.ms', 'uid___A002_X1_X2_targets.ms'):
        (root / 'measurement_sets' / name).mkdir(parents=True)
        (root / 'measurement_sets' / name / 'table.dat').write_bytes(b'x' * 2048)
    (root / 'caltables').mkdir()
    (root / 'caltables' / 'cont.dat').write_text(contdat_text)
    return root


def write_report_for(delivery, argv, results, *, status='succeeded', error=None):
    """Run the report writer on a real plan and run state, with the results the steps would return."""
    options = sfr.build_parser().parse_args(['--delivery', str(delivery)] + argv)
    plan = sfr.make_plan(sfr.run_request(options, delivery), sfr.Delivery(delivery))
    state = sfr.RunState(plan.delivery)
    state.begin(' '.join([sfr.SCRIPT_NAME] + argv))
    try:
        now = time.time()
        for result in results:
            result.setdefault('started', now)
            result.setdefault('ended', now + 2.0)
            result.setdefault('seconds', 2.0)
            state.results.append(result)
        return sfr.write_report(plan, state, status=status, error=error)
    finally:
        state.finish()


def spectrum_png(path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(3, 2))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot([0, 1, 2, 3], [1, 3, 1, 1])
    axes.axvspan(2, 3, alpha=0.3)
    figure.savefig(str(path))
    return path


def test_the_page_shows_cont_dat_its_problems_spectra_and_images(tmp_path, casa):
    contdat = 'Field: IRAS_16293-2422\n\nSpectralWindow: 25\n216.0~216.1GHz LSRK\n\nSpectralWindow: 99\nNONE\n'
    delivery = stub_delivery(tmp_path / 'calibrated_final', contdat_text=contdat)
    elsewhere = tmp_path / 'products'
    elsewhere.mkdir()
    spectra = [spectrum_png(elsewhere / 'spw25_before_after.png'), spectrum_png(elsewhere / 'spw27_before_after.png')]
    image = make_test_image(casa, elsewhere / 'IRAS.spw25.mfs.image.pbcor')
    thumbnail = elsewhere / 'IRAS.spw25.mfs.png'
    measured = sfr.render_image_thumbnail(image_path=image, png_path=thumbnail, casa=casa)
    problem = sfr.Problem('warning', 'caltables/cont.dat', 6, 'spw 99 is not in uid___A002_X1_X1_targets.ms')
    beam = measured['beam']
    results = [  # as the contsub and imaging steps return them
        {'step': 'contsub', 'contdat_problems': [problem], 'spectra': [str(p) for p in spectra],
         'outputs': [str(delivery / 'measurement_sets' / 'uid___A002_X1_X1_targets_line.ms')]},
        {'step': 'image', 'images': [dict(image=image.name, specmode='mfs', field='IRAS_16293-2422', spw='25',
                                          beam_arcsec=(beam['major'], beam['minor'], beam['pa']), cell_arcsec=0.1,
                                          imsize=[64, 64], nchan=1, peak_jy=measured['peak'], rms_jy=measured['rms'],
                                          bytes=123456, files=[image.name], thumbnail=str(thumbnail))]},
    ]
    page = Page(write_report_for(delivery, ['--contsub_fast', '--image'], results))
    page.assert_self_contained()
    assert 'caltables/cont.dat:6: warning: spw 99 is not in uid___A002_X1_X1_targets.ms' in page.text
    assert '<pre>%s</pre>' % contdat in page.raw, 'cont.dat is shown verbatim'
    assert len(page.images) == 3
    assert all(source.startswith('assets/') for source in page.images), 'images are copied beside the page'
    assert not any(os.path.islink(str(page.path.parent / source)) for source in page.images)
    name, specmode, field, spw, beam, cell, imsize, nchan, peak, rms, size = page.row(image.name)
    assert (specmode, field, spw, cell, imsize, nchan) == ('mfs', 'IRAS_16293-2422', '25', '0.1"', '64 × 64', '1')
    assert beam == '0.5" × 0.3", 30.0°' and size == '123.5 kB'
    assert abs(float(peak.split()[0]) - 200) < 10 and peak.endswith(' mJy/beam')
    assert page.row('1')[6] == 'done' and page.row('2')[6] == 'done'
    assert 'Fields and spectral windows are listed when the run loads CASA' not in page.text


def test_text_from_files_and_errors_is_escaped(tmp_path):
    delivery = stub_delivery(tmp_path, contdat_text='Field: <script>alert(1)</script>\n')
    error = sfr.ReprocessingError('cont.dat has <b>bold</b> & broken lines — fix them')
    page = Page(write_report_for(delivery, ['--contsub_fast'], [], status='failed', error=error))
    assert page.scripts == 0
    assert page.row('Status')[1] == 'FAILED: cont.dat has <b>bold</b> & broken lines — fix them'
    assert 'Field: <script>alert(1)</script>' in page.text
    number, step, _what, _started, _ended, _duration, status, _details = page.row('1')
    assert (step, status) == ('contsub', 'not run')


def test_dry_runs_and_usage_errors_write_no_report(tmp_path, run_script):
    delivery = stub_delivery(tmp_path, contdat_text='Field: A\n')
    assert run_script('--cleanup', '--dry-run', delivery=delivery).returncode == 0
    assert run_script('--calibrated_final', '--dry-run', delivery=delivery).returncode == 1  # stand-in MSes
    assert run_script('--calibrated_final', '--bogus', delivery=delivery).returncode == 2
    assert run_script('--help', delivery=delivery).returncode == 0
    assert not (delivery / sfr.WORK_DIR_NAME).exists()


def chromium():
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        found = shutil.which(name)
        if found:
            return found
    return None


def render_in_chromium(url, profile):
    """The DOM headless Chromium builds for url (it would need JavaScript for anything dynamic; we have none)."""
    command = [chromium(), '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
               '--disable-background-networking', '--disable-component-update', '--disable-sync',
               '--user-data-dir=%s' % profile, '--dump-dom', url]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(chromium() is None, reason='Chromium is not installed (Debian package "chromium")')
def test_the_report_and_a_weblog_render_in_headless_chromium(tmp_path, serve):
    delivery = make_weblog_delivery(tmp_path / 'calibrated_final')
    stub_delivery_files = stub_delivery(tmp_path / 'calibrated_final', contdat_text='Field: A\n')
    page = write_report_for(stub_delivery_files, ['--calibrated_final'], [{'step': 'calibrated_final'}])

    dom = render_in_chromium(page.resolve().as_uri(), tmp_path / 'profile1')  # opened as a file
    assert 'Reprocessing report' in dom and 'scriptForReprocessing.py --calibrated_final' in dom

    report = serve(delivery, '--weblog', 'report', '--no-browser')
    dom = render_in_chromium(report.url, tmp_path / 'profile2')
    assert 'Reprocessing runs' in dom and page.parent.name in dom
    assert report.stop()[0] == 0

    weblog = serve(delivery, '--weblog', '--no-browser')
    dom = render_in_chromium(weblog.base + '/html/t1-1.html', tmp_path / 'profile3')
    assert 'Pipeline Summary' in dom and 'stage3/thumbs/spectrum.png' in dom
    assert weblog.stop()[0] == 0



def page_overflow_in_chromium(page, profile, *, width=1000):
    """{'scroll', 'client', 'wide'} of the page in headless Chromium at a window `width` px wide: the
    document's scroll and client widths, and the first elements that reach past the window's right edge.
    Measured by a copy of the page with a probe script (the report itself has none), removed after."""
    probe = page.with_name('probe-overflow.html')
    script = ('<script>window.addEventListener("load", function () { var d = document.documentElement, wide = [];'
              ' document.querySelectorAll("body *").forEach(function (e) { if (e.getBoundingClientRect().right >'
              ' d.clientWidth + 1) wide.push(e.tagName + ": " + (e.textContent || "").slice(0, 60)); });'
              ' document.body.setAttribute("data-overflow", JSON.stringify({scroll: d.scrollWidth,'
              ' client: d.clientWidth, wide: wide.slice(0, 5)})); });</script>')
    probe.write_text(page.read_text(encoding='utf-8').replace('</body>', script + '</body>'), encoding='utf-8')
    try:
        command = [chromium(), '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
                   '--disable-background-networking', '--disable-component-update', '--disable-sync',
                   '--user-data-dir=%s' % profile, '--window-size=%d,900' % width, '--virtual-time-budget=10000',
                   '--dump-dom', probe.resolve().as_uri()]
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                                timeout=120)
    finally:
        probe.unlink()
    assert result.returncode == 0, result.stderr[-2000:]
    import re
    found = re.search(r'data-overflow="([^"]*)"', result.stdout)
    assert found, 'the probe did not run: %s' % result.stdout[-500:]
    return json.loads(html.unescape(found.group(1)))


def wide_results(delivery, casa, folder):
    """The results of a contsub and an image step as a 6-EB, 4-spw delivery gives them, with real images
    (a pbcor cube with its pb, and an mfs image) described and drawn by the imaging step's own code."""
    fitspec = dict(('uid___A002_X%x_X%x' % (0x10f0000 + eb, 0x1000 + eb), {'0,1,2,3,4,5,6': dict(
        (str(spw), {'chan': ';'.join('%d~%d' % (c, c + 7) for c in range(0, 3840, 97)), 'fitorder': 1})
        for spw in (25, 27, 29, 31))}) for eb in range(6))
    cube, pb = make_primary_beam_pair(casa, folder)
    ous = 'uid___A001_X1_X2'
    products = []
    for path, name in ((cube, 'IRAS_16293-2422_sci.spw25.cube.I.iter1.image.pbcor'),
                       (pb, 'IRAS_16293-2422_sci.spw25.cube.I.iter1.pb')):
        renamed = folder / ('%s.%s' % (ous, name))
        path.rename(renamed)
        products.append(sfr.ImageProduct.from_working_name(renamed))
    mfs = make_test_image(casa, folder / ('%s.IRAS_16293-2422_sci.spw27.mfs.I.iter1.image.pbcor' % ous))
    products.append(sfr.ImageProduct.from_working_name(mfs))
    placed = [(product, product.path, None) for product in products]
    table = sfr.image_table(casa, placed, ous=ous, thumbnails_dir=folder / 'thumbnails')
    notes = ['cont.dat gives no continuum ranges for field IRAS_16293-2422 spw %d (LOWBANDWIDTH): its mfs/cont images '
             'use every channel, as the pipeline does' % spw for spw in (25, 27)]
    return [
        {'step': 'contsub', 'method': 'uvcontsub', 'jobs': 2, 'fitspec': fitspec,
         'reason': 'fitting the continuum from caltables/cont.dat with CASA uvcontsub: caltables/ holds no '
                   '*uvcont.tbl (Cycle 10 and later deliver none)',
         'seconds_per_eb': dict((eb, 12.5) for eb in fitspec)},
        {'step': 'image', 'engine': 'casa', 'images': table, 'notes': notes, 'bytes': 123456789, 'fits': 0,
         'casa_images': 3}]


@pytest.mark.skipif(chromium() is None, reason='Chromium is not installed (Debian package "chromium")')
def test_the_page_fits_the_window_and_shows_each_number_once_computed(tmp_path, casa):
    delivery = stub_delivery(tmp_path / 'calibrated_final', contdat_text='Field: A\n')
    folder = tmp_path / 'images'
    folder.mkdir()
    results = wide_results(delivery, casa, folder)
    page = Page(write_report_for(delivery, ['--contsub_fast', '--image'], results))
    page.assert_self_contained()
    assert '{' not in page.row('1')[7] and 'fitspec' not in page.row('1')[7], 'no dict dumped in the steps table'
    eb = sorted(results[0]['fitspec'])[0]
    chan = results[0]['fitspec'][eb]['0,1,2,3,4,5,6']['27']['chan']
    assert [eb, '0,1,2,3,4,5,6', '27', chan, '1'] in page.rows, 'fitspec is a table: one row per EB, fields, spw'
    assert ['uid___A002_X10f0003_X1003', '12.5'] in page.rows

    for width in (1000, 1400):
        measured = page_overflow_in_chromium(page.path, tmp_path / ('profile%d' % width), width=width)
        assert measured['scroll'] <= measured['client'], 'wider than a %d px window: %s' % (width, measured)

    captions = re.findall(r'<figcaption>(.*?)</figcaption>', page.raw)
    assert len(captions) == 2
    for image in results[1]['images']:
        name, _specmode, _field, _spw, _beam, _cell, _imsize, _nchan, peak, rms, _size = page.row(image['image'])
        caption, = [c for c in captions if c.startswith(Path(image['thumbnail_title'].split('\n')[0]).name)]
        assert 'peak %s, rms %s' % (peak, rms) in html.unescape(caption), 'the picture and the table disagree'
        assert 'peak %s, rms %s' % (peak, rms) in image['thumbnail_title']
    cube = results[1]['images'][0]
    assert cube['specmode'] == 'cube' and abs(cube['peak_jy'] - 0.2) < 0.03, 'the source, not the pbcor edges'
