"""Step --weblog: find a pipeline weblog (or the report) and serve it on 127.0.0.1 until Ctrl-C."""

import collections
import errno
import os
import signal
import sys

from ..core.fileops import is_inside, relative_path
from ..core.host import full_host_name, time_text, user_name
from ..core.layout import REPORT_DIR_NAME, STAGING_DIR_NAME
from ..core.messages import Interrupted, ReprocessingError, say
from ..report.report import write_report


WEBLOG_PORTS = (30000, 32767)   # the range the pipeline's own h_weblog uses
PORT_ATTEMPTS = 50

# A weblog to serve: `root` is the only directory the server shows, `start` the page to open in it.
Weblog = collections.namedtuple('Weblog', 'name root start modified')


def run_weblog(plan, state, step, casa):
    """Serve a weblog until Ctrl-C; it never needs CASA or the pipeline, only the files."""
    request, delivery = plan.request.weblog, plan.delivery
    made_here = [s for s in plan.steps if s.name != 'weblog']
    if made_here:
        # The report of this run must exist before it can be served; the final one is written at the end.
        write_report(plan, state, status='running')
    if request.name == 'latest' and made_here:
        weblog = _weblog_made_since(delivery, state.started) or _this_runs_report(delivery, state)
    elif request.name == 'report':
        weblog = _this_runs_report(delivery, state) if made_here else report_weblog(delivery)
    else:
        weblog = choose_weblog(delivery, request.name)
    return serve_weblog(weblog, port=request.port, open_browser=request.open_browser)


def find_weblogs(delivery):
    """Pipeline weblogs of this delivery, newest first.

    A weblog is a ``pipeline-*`` folder holding ``html/index.html`` (or
    ``html/t1-1.html``).  They are looked for where this tool runs the
    pipeline (below working_reprocess/), and where a delivered weblog is
    unpacked: in calibrated_final/ itself, or in the ``qa/`` folder beside it
    (an ALMA delivery's member directory holds ``qa/*.weblog.tgz``).
    """
    places = ((delivery.work_dir, 3), (delivery.root, 1), (delivery.root.parent / 'qa', 2))
    found = {}
    for top, depth in places:
        for folder in _pipeline_folders(top, depth):
            start = _weblog_start_page(folder)
            if start is not None:
                modified = (folder / start).stat().st_mtime
                found[folder] = Weblog(relative_path(folder, delivery.root), folder, start, modified)
    return sorted(found.values(), key=lambda weblog: weblog.modified, reverse=True)


def _pipeline_folders(top, depth):
    """``pipeline-*`` directories at most `depth` levels below top; links and measurement sets are not entered."""
    if depth < 1 or not top.is_dir() or top.is_symlink():
        return
    try:
        entries = sorted(top.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.is_symlink() or not entry.is_dir():
            continue
        if entry.name.startswith('pipeline-'):
            yield entry
        elif not entry.name.endswith('.ms') and entry.name not in (STAGING_DIR_NAME, REPORT_DIR_NAME):
            for found in _pipeline_folders(entry, depth - 1):
                yield found


def _weblog_start_page(folder):
    for start in ('html/index.html', 'html/t1-1.html'):
        if (folder / start).is_file():
            return start
    return None


def choose_weblog(delivery, name):
    """The weblog called `name` ('latest', 'report', a folder name or a path), or an error listing the others."""
    if name == 'report':
        return report_weblog(delivery)
    weblogs = find_weblogs(delivery)
    if name == 'latest':
        if weblogs:
            return weblogs[0]
        raise ReprocessingError('no pipeline weblog found in %s — %s' % (delivery.root, _what_exists(delivery, [])))
    matches = [w for w in weblogs if name.rstrip('/') in (w.root.name, w.name)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ReprocessingError('several weblogs are called %s: %s — give the path of the one you want'
                                % (name, ', '.join(w.name for w in matches)))
    raise ReprocessingError('no weblog called "%s" — %s' % (name, _what_exists(delivery, weblogs)))


def _what_exists(delivery, weblogs):
    """One sentence listing what --weblog could serve instead."""
    offers = ['%s (%s)' % (w.name, time_text(w.modified)) for w in weblogs]
    if (delivery.report_dir / 'index.html').is_file():
        offers.append('report (the reprocessing report)')
    packed = sorted(delivery.root.glob('*weblog.tgz')) + sorted((delivery.root.parent / 'qa').glob('*weblog.tgz'))
    if offers:
        advice = 'choose one of: --weblog ' + ', --weblog '.join(offers)
    else:
        advice = 'the pipeline writes one when it runs (--contsub, --image), and every run writes the report'
    if packed:
        advice += '; the delivered weblog %s is still packed: unpack it with "tar -xzf %s -C %s"' % (
            packed[0].name, packed[0], packed[0].parent)
    return advice


def _weblog_made_since(delivery, since):
    made = [w for w in find_weblogs(delivery) if since is not None and w.modified >= since - 1]
    return made[0] if made else None


def report_weblog(delivery):
    root = delivery.report_dir
    if not (root / 'index.html').is_file():
        raise ReprocessingError('no reprocessing report yet in %s — every run of this script (except --dry-run) '
                                'writes one; run an action first' % root)
    return Weblog('the reprocessing report', root, 'index.html', (root / 'index.html').stat().st_mtime)


def _this_runs_report(delivery, state):
    """The report, opened at this run's page."""
    report = report_weblog(delivery)
    if state.report_dir is not None and (state.report_dir / 'index.html').is_file():
        report = report._replace(start=state.report_dir.name + '/index.html')
    return report


# -- the HTTP server -----------------------------------------------------------

def serve_weblog(weblog, *, port=None, open_browser=True):
    """Serve weblog.root on 127.0.0.1 until Ctrl-C; returns what was served, for the report."""
    server, busy = bind_weblog_server(weblog.root, first_port=port)
    port = server.server_address[1]
    url = 'http://127.0.0.1:%d/%s' % (port, weblog.start)
    # From the moment the address is printed, Ctrl-C means "stop serving", a normal end.
    restore = _interrupt_on_ctrl_c()
    try:
        if busy:
            say('  port%s %s in use, so port %d is used' % ('s' if len(busy) > 1 else '',
                                                             ', '.join(str(p) for p in busy), port))
        say('  serving %s (%s)' % (weblog.name, weblog.root))
        say('  open %s' % url)
        if _is_remote_session() or not _has_display():
            say('  from your own computer, first open a tunnel to this machine in another terminal:')
            say('    ssh -N -L %d:localhost:%d %s@%s' % (port, port, user_name(), full_host_name()))
            say('  then open http://localhost:%d/%s' % (port, weblog.start))
        if open_browser:
            say('  ' + _open_browser(url))
        say('  Ctrl-C stops the server (the delivery stays locked for other runs until then).')
        server.serve_forever(poll_interval=0.5)
    except (KeyboardInterrupt, Interrupted):
        say('')
        say('  stopped serving %s' % weblog.name)
    finally:
        server.server_close()
        restore()
    return {'served': str(weblog.root), 'url': url}


def bind_weblog_server(root, *, first_port=None):
    """An HTTP server over root bound to 127.0.0.1 on the first free port; also the busy ports skipped."""
    server_class = _weblog_server_class()
    handler = _weblog_request_handler(root)
    busy = []
    for port in _candidate_ports(first_port):
        try:
            return server_class(('127.0.0.1', port), handler), busy
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise ReprocessingError('cannot serve the weblog on port %d (%s) — choose another port with '
                                        '--port' % (port, error.strerror or error))
            busy.append(port)
    raise ReprocessingError('ports %d to %d are all in use — choose a free one with --port'
                            % (busy[0], busy[-1]))


def _candidate_ports(first_port):
    """From --port upwards; else from a random port of the pipeline's range, so users of one host rarely collide."""
    low, high = WEBLOG_PORTS
    if first_port is not None:
        return list(range(first_port, min(first_port + PORT_ATTEMPTS, 65536)))
    import random
    start = random.randint(low, high)
    return [low + (start - low + offset) % (high - low + 1) for offset in range(PORT_ATTEMPTS)]


def _weblog_server_class():
    import http.server
    import socketserver
    base = getattr(http.server, 'ThreadingHTTPServer', None)  # Python >= 3.7
    if base is None:
        class ThreadingHTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
        base = ThreadingHTTPServer

    class WeblogServer(base):
        # Without SO_REUSEADDR a port someone else listens on is always "in use", on macOS too.
        allow_reuse_address = False
        daemon_threads = True

        def handle_error(self, request, client_address):
            error = sys.exc_info()[1]
            if not isinstance(error, (ConnectionError, TimeoutError)):  # a browser closing a tab is normal
                base.handle_error(self, request, client_address)

    return WeblogServer


def _weblog_request_handler(root):
    """A file handler that shows root and nothing outside it, whatever the URL or a link inside says."""
    import http.server
    import posixpath
    import urllib.parse
    real_root = os.path.realpath(str(root))

    class WeblogRequestHandler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path):
            # The standard one serves the current directory; Python 3.6 has no `directory` argument.
            path = path.split('?', 1)[0].split('#', 1)[0]
            trailing_slash = path.rstrip().endswith('/')
            path = posixpath.normpath(urllib.parse.unquote(path))
            parts = [part for part in path.split('/') if part not in ('', '.', '..')]
            translated = os.path.join(real_root, *parts)
            return translated + '/' if trailing_slash else translated

        def send_head(self):
            try:
                real = os.path.realpath(self.translate_path(self.path))
            except ValueError:  # e.g. a NUL byte in the path
                self.send_error(400, 'Bad path')
                return None
            if not is_inside(real, real_root):
                self.send_error(403, 'Outside the weblog')  # a link pointing out of the weblog
                return None
            return http.server.SimpleHTTPRequestHandler.send_head(self)

        def log_message(self, format, *args):
            pass  # one line per file would bury the address and the ssh line

        def log_error(self, format, *args):
            if args and args[0] not in (404,):
                sys.stderr.write('  weblog server: %s\n' % (format % args))

    return WeblogRequestHandler


def _interrupt_on_ctrl_c():
    """Make Ctrl-C raise KeyboardInterrupt while serving, even where SIGINT was ignored; returns the undo."""
    try:
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread
        return lambda: None
    return lambda: signal.signal(signal.SIGINT, previous)


def _has_display():
    return sys.platform == 'darwin' or bool(os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY'))


def _is_remote_session():
    return any(os.environ.get(name) for name in ('SSH_CONNECTION', 'SSH_CLIENT', 'SSH_TTY'))


def _open_browser(url):
    """Open url in a graphical browser when there is one; say what happened, never fail."""
    if not _has_display():
        return 'no display here, so no browser was opened'
    import webbrowser
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return 'no web browser found, so none was opened'
    if type(browser) is webbrowser.GenericBrowser:
        # A text browser (lynx, w3m) would take over this terminal before the server starts.
        return 'only a text browser found, so none was opened'
    try:
        opened = browser.open(url)
    except Exception as error:  # a browser that fails to start must not stop the server
        return 'the browser did not start (%s)' % error
    return 'opened it in the browser' if opened else 'the browser did not start'
