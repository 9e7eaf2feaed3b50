"""cont.dat for the pipeline: caltables/cont.dat placed in its working directory, in the grammar the release reads."""

import datetime
import os
from pathlib import Path

from .grammar import contdat_in_grammar, contdat_text
from ..core.fileops import atomic_file, relative_path
from ..core.layout import WORK_DIR_NAME
from ..core.messages import say


def place_contdat_for_pipeline(delivery, *, grammar=3, release='the pipeline', work_dir=None):
    """The pipeline reads cont.dat in its working directory (hif_uvcontfit, hif_uvcontsub, hif_makeimlist):
    copy caltables/cont.dat there (work_dir, default working_reprocess/), in the grammar the release
    reads (grammar 2: PL2022/PL2023 read no v3 line; contdat_in_grammar)."""
    destination = Path(work_dir or delivery.work_dir) / 'cont.dat'
    # As text, without an editor's byte-order mark: the pipeline would read it as part of a field name.
    user_text = contdat_text(delivery.contdat.read_bytes(), display=str(delivery.contdat))
    text, changes = contdat_in_grammar(user_text, grammar)
    source_text = text.encode('utf-8')
    if destination.is_file() and destination.read_bytes() == source_text:
        return changes  # placed already (by --contsub, for the imaging that follows)
    if destination.is_file():
        kept = destination.with_name('cont.dat.before-%s' % datetime.datetime.now().strftime('%Y%m%d-%H%M%S'))
        os.rename(str(destination), str(kept))
        say('  %s/cont.dat differed from caltables/cont.dat: kept as %s/%s' % (WORK_DIR_NAME, WORK_DIR_NAME,
                                                                                 kept.name))
    with atomic_file(destination) as temporary:
        temporary.write_bytes(source_text)
    if changes:
        say('  %s reads cont.dat v1/v2 only: it gets %s converted to v2 (%s); caltables/cont.dat is '
            'unchanged' % (release, relative_path(destination, delivery.root), '; '.join(changes)))
    return changes
