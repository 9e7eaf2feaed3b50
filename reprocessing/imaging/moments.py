"""Moment maps of a cube (--moments 0,1,2,8) from a signal mask made of the cube's own noise, with CASA's
image tools plane by plane (never the whole cube in Python memory)."""

MOMENT_CHOICES = (0, 1, 2, 8)


def parse_moments(value):
    """'0,1,2,8' or [0, 8] -> sorted moments among 0, 1, 2, 8."""
    items = str(value).replace(' ', '').strip('[]').split(',') if not isinstance(value, (list, tuple)) else value
    chosen = set()
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        if not text.isdigit() or int(text) not in MOMENT_CHOICES:
            raise ValueError('moments "%s": %s is not one of %s' % (value, text, ','.join(str(m) for m in MOMENT_CHOICES)))
        chosen.add(int(text))
    if not chosen:
        raise ValueError('moments "%s": give one or more of %s' % (value, ','.join(str(m) for m in MOMENT_CHOICES)))
    return sorted(chosen)
