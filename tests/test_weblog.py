"""--weblog: what a user sees when serving a pipeline weblog, locally or on a remote machine.

These tests need no CASA and no pipeline: --weblog is only a web server over files.
"""
import getpass
import http.client
import os
import socket
import time
import urllib.error
import urllib.request

import pytest

import scriptForReprocessing as sfr

WEBLOG_NAME = 'pipeline-20240101T000000'
ASSET = 'html/stage3/thumbs/spectrum.png'
ASSET_BYTES = b'\x89PNG\r\n\x1a\n' + bytes(range(256)) * 4
SECRET = 'the user\'s private notes'


def make_weblog_delivery(root, *, weblog_name=WEBLOG_NAME):
    """A delivery whose working_reprocess/ holds a pipeline weblog, with a secret file just outside it."""
    work = root / 'working_reprocess'
    html = work / weblog_name / 'html'
    (html / 'stage3' / 'thumbs').mkdir(parents=True)
    (html / 'index.html').write_text('<html><head><meta http-equiv="refresh" content="0; url=t1-1.html"></head>'
                                     '<body>redirecting</body></html>')
    (html / 't1-1.html').write_text('<html><body><h1>Pipeline Summary</h1><p>Observation overview</p>'
                                    '<img src="stage3/thumbs/spectrum.png"></body></html>')
    (work / weblog_name / ASSET).write_bytes(ASSET_BYTES)
    (root / 'measurement_sets').mkdir()
    (work / 'secret.txt').write_text(SECRET)
    os.symlink(str(work / 'secret.txt'), str(html / 'escape.txt'))
    os.symlink(str(work), str(html / 'escape_dir'))
    return root


def raw_get(port, path):
    """GET path exactly as written (urllib would normalise '..' away): (status, body)."""
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
    try:
        connection.request('GET', path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def free_port():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def test_serves_the_weblog_and_its_nested_assets_over_http(tmp_path, serve):
    delivery = make_weblog_delivery(tmp_path)
    server = serve(delivery, '--weblog', '--no-browser')
    assert server.url.endswith('/html/index.html')
    assert sfr.WEBLOG_PORTS[0] <= server.port <= sfr.WEBLOG_PORTS[1]
    with urllib.request.urlopen(server.url, timeout=10) as response:
        assert response.status == 200 and b'url=t1-1.html' in response.read()
    with urllib.request.urlopen(server.base + '/html/t1-1.html', timeout=10) as response:
        assert b'Pipeline Summary' in response.read()
    with urllib.request.urlopen(server.base + '/' + ASSET, timeout=10) as response:
        assert response.status == 200
        assert response.headers['Content-Type'] == 'image/png'
        assert response.read() == ASSET_BYTES
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(server.base + '/html/no-such-page.html', timeout=10)
    assert missing.value.code == 404
    status, out, err = server.stop()
    assert status == 0, err
    assert 'stopped serving' in out and 'Done.' in out


@pytest.mark.parametrize('path, expected', [
    ('/../secret.txt', 404),
    ('/html/../../secret.txt', 404),
    ('/%2e%2e/secret.txt', 404),
    ('/html/%2e%2e/%2e%2e/secret.txt', 404),
    ('/html/..%2f..%2fsecret.txt', 404),
    ('/html/escape.txt', 403),            # a link inside the weblog pointing out of it
    ('/html/escape_dir/secret.txt', 403),
    ('/html/escape_dir/', 403),
])
def test_nothing_outside_the_weblog_is_served(tmp_path, serve, path, expected):
    delivery = make_weblog_delivery(tmp_path)
    server = serve(delivery, '--weblog', WEBLOG_NAME, '--no-browser')
    status, body = raw_get(server.port, path)
    assert status == expected
    assert SECRET.encode() not in body


def test_a_busy_port_is_skipped(tmp_path, serve):
    delivery = make_weblog_delivery(tmp_path)
    busy = free_port()
    with socket.socket() as occupant:
        occupant.bind(('127.0.0.1', busy))
        occupant.listen(1)
        server = serve(delivery, '--weblog', '--no-browser', '--port', busy)
        assert server.port != busy
        assert any('port %d in use' % busy in line for line in server.lines)
        status, _body = raw_get(server.port, '/html/t1-1.html')
        assert status == 200
    assert server.stop()[0] == 0


def test_ctrl_c_stops_the_server_with_exit_0_and_frees_the_port(tmp_path, serve):
    delivery = make_weblog_delivery(tmp_path)
    server = serve(delivery, '--weblog', '--no-browser')
    status, out, err = server.stop()
    assert status == 0, err
    assert 'ERROR' not in err
    with pytest.raises(OSError):
        raw_get(server.port, '/html/index.html')
    assert not (delivery / sfr.JOURNAL_NAME).exists()


def test_on_a_remote_host_it_prints_the_ssh_tunnel_to_open(tmp_path, serve):
    delivery = make_weblog_delivery(tmp_path)
    server = serve(delivery, '--weblog', env={'SSH_CONNECTION': '192.0.2.1 50000 192.0.2.2 22'})
    tunnel = 'ssh -N -L %d:localhost:%d %s@%s' % (server.port, server.port, getpass.getuser(),
                                                  sfr.full_host_name())
    assert tunnel in [line.strip() for line in server.lines]
    assert any('http://localhost:%d/html/index.html' % server.port in line for line in server.lines)
    # No display: no browser is tried, and the server keeps serving.
    assert any('no display here' in line for line in server.lines)
    assert raw_get(server.port, '/html/index.html')[0] == 200
    assert server.stop()[0] == 0


def test_latest_is_the_newest_weblog_and_a_delivered_one_is_found_by_name(tmp_path, serve):
    delivery = make_weblog_delivery(tmp_path / 'calibrated_final')
    delivered = tmp_path / 'qa' / 'pipeline-procedure_hifa_calimage' / 'html'
    delivered.mkdir(parents=True)
    (delivered / 't1-1.html').write_text('<html><body>the delivered weblog</body></html>')
    old = time.time() - 3600
    os.utime(str(delivered / 't1-1.html'), (old, old))
    server = serve(delivery, '--weblog', 'latest', '--no-browser')
    assert WEBLOG_NAME in '\n'.join(server.lines)
    server.stop()
    server = serve(delivery, '--weblog', 'pipeline-procedure_hifa_calimage', '--no-browser')
    assert server.url.endswith('/html/t1-1.html')
    assert b'the delivered weblog' in raw_get(server.port, '/html/t1-1.html')[1]
    assert server.stop()[0] == 0


def test_an_unknown_name_is_an_error_listing_what_exists(tmp_path, run_script):
    delivery = make_weblog_delivery(tmp_path)
    result = run_script('--weblog', 'pipeline-19990101T000000', delivery=delivery)
    assert result.returncode == 1
    error, = [line for line in result.stderr.splitlines() if line.strip()]
    assert error.startswith('ERROR: no weblog called "pipeline-19990101T000000"')
    assert 'working_reprocess/%s' % WEBLOG_NAME in error and ' — ' in error


def test_no_weblog_at_all_says_what_makes_one(tmp_path, run_script):
    (tmp_path / 'measurement_sets').mkdir()
    (tmp_path / 'qa').mkdir()
    for args in (['--weblog'], ['--weblog', 'report']):
        result = run_script(*args, delivery=tmp_path)
        assert result.returncode == 1
        assert result.stderr.startswith('ERROR: no ')
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / 'working_reprocess').exists(), 'a failed --weblog left something behind'


def test_port_and_no_browser_need_weblog(capsys):
    assert sfr.main(['--calibrated_final', '--no-browser']) == 2
    assert 'add --weblog' in capsys.readouterr().err
    assert sfr.main(['--weblog', '--port', '80']) == 2
    assert 'between 1024 and 65535' in capsys.readouterr().err


def test_serving_a_weblog_never_imports_casa(tmp_path, serve):
    delivery = make_weblog_delivery(tmp_path)
    server = serve(delivery, '--weblog', '--no-browser', env={'PYTHONPROFILEIMPORTTIME': '1'})
    _status, _out, err = server.stop()
    imported = [line.split('|')[-1].strip() for line in err.splitlines() if line.startswith('import time:')]
    assert 'http.server' in imported
    assert not [name for name in imported if name.startswith(('casatools', 'casatasks', 'pipeline', 'numpy'))]
