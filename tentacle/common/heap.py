"""Give the memory a process has freed back to the system, where glibc would keep it.

Starting a tentacle parses its configuration, certificates and keys and loads its
modules; much of what that allocates is freed again, but glibc keeps freed heap pages
for reuse, and an idle tentacle never reuses most of them. The daemon trims once it is
up: about half a megabyte of the idle tentacle's 40 MB budget (``bench idle``). Where
the C library has no ``malloc_trim`` (not glibc), `trim` does nothing.
"""

from __future__ import annotations

import gc


def trim() -> bool:
    """Collect garbage, then return free heap pages to the system; False where that is not possible."""
    import ctypes  # only here: a process that never trims does not load it

    gc.collect()
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    return bool(malloc_trim(0))
