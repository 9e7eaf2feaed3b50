"""Names typed with look-alike characters (pasted from a PDF or a word processor): which character differs
from the name it was meant to be, said so that a list that looks identical on screen is not the only answer."""

import unicodedata

# Characters that look like ASCII ones and come from copied text: dashes and minus signs, spaces, quotes.
_LOOK_ALIKES = {
    '\u2212': '-', '\u2010': '-', '\u2011': '-', '\u2012': '-', '\u2013': '-', '\u2014': '-', '\u2015': '-',
    '\ufe63': '-', '\uff0d': '-', '\u00ad': '',
    '\u00a0': ' ', '\u2007': ' ', '\u2009': ' ', '\u202f': ' ', '\u200b': '',
    '\u2018': "'", '\u2019': "'", '\u201b': "'", '\u2032': "'", '\u201c': '"', '\u201d': '"', '\u2033': '"',
    '\u02d0': ':', '\u2215': '/', '\u2044': '/', '\u00b7': '.', '\u2024': '.',
}


def _folded(text):
    text = ''.join(_LOOK_ALIKES.get(char, char) for char in text)
    return unicodedata.normalize('NFKC', text)


def lookalike_hint(given, known):
    """' — it has '−' (U+2212 MINUS SIGN) where the MS has '-'' when given is one of known names typed with
    look-alike characters; '' otherwise."""
    for name in known:
        if name == given or _folded(name) != _folded(given):
            continue
        differing = []
        for char in given:
            if ord(char) > 127 and char not in name and char not in [d[0] for d in differing]:
                differing.append((char, _LOOK_ALIKES.get(char, unicodedata.normalize('NFKC', char))))
        described = ', '.join("'%s' (U+%04X %s) where the measurement sets have '%s'" % (
            char, ord(char), unicodedata.name(char, 'UNNAMED'), plain) for char, plain in differing)
        return ' "%s" has %s: it means "%s" —' % (given, described or 'look-alike characters', name)
    return ''
