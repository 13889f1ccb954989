"""``with case(name):`` in a test that loops over its cases (where each case would repeat one
expensive set-up as a parametrized test): a failure inside names the case, as a parametrize id
would."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def case(name: str) -> Iterator[None]:
    """A failure inside names ``name``: the case of a test's loop, as a parametrize id would."""
    try:
        yield
    except BaseException as err:
        err.add_note(f"case: {name}")
        raise
