"""Whether the Hugging Face hub can be reached, and working from the local caches when it
cannot. ``datasets``, ``transformers`` and ``huggingface_hub`` retry an unreachable hub with
backoff (about 25 s for one name on a machine without a network) before they fail or fall
back to what they cached; asked once, with a short connection timeout, lmlab tells them to
use their caches at once: a hub name cached earlier still loads, any other fails in a second,
naming itself."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from lmlab.errors import ConfigError, first_line

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers (HF_ENDPOINT, default huggingface.co); False when
    HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set."""
    if any(os.environ.get(v, "0") not in ("", "0") for v in OFFLINE_VARIABLES):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host or "huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def offline_hub(offline: bool) -> Iterator[None]:
    """With ``offline``, ``datasets`` and ``huggingface_hub`` use their caches only: a hub
    dataset cached earlier still loads, any other fails at once instead of after minutes of
    retries."""
    if not offline:
        yield
        return
    import datasets
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


@contextlib.contextmanager
def hub_or_cache(name: str | None) -> Iterator[bool]:
    """Around a load of ``name``: a local path, or with the hub reachable, as it is; a hub
    name with the hub unreachable, from the caches only (``offline_hub``). Yields whether it
    is the caches only, for the message of a load that fails."""
    local = name is None or os.path.exists(os.path.expanduser(name))
    offline = not local and not hub_reachable()
    with offline_hub(offline):
        yield offline


OFFLINE_HINT = (
    " (the Hugging Face hub cannot be reached from here, so only a dataset cached earlier "
    "loads: download it where you are online, or pass a local copy)"
)


def load_dataset(
    field: str, name: str, subset: str | None, split: str, path: str | None = None, **kwargs: Any
) -> Any:
    """``datasets.load_dataset`` of a hub name (``path``: the local folder it names, where it
    is one), from the caches only where the hub cannot be reached (``hub_or_cache``); one line
    naming ``field`` (``data.name``, ``task.name``) where it fails."""
    import datasets

    offline = False
    try:
        with hub_or_cache(name) as offline:
            return datasets.load_dataset(path or name, subset, split=split, **kwargs)
    except Exception as err:  # the hub raises many types: missing name, no network, bad split
        raise ConfigError(
            f"{field}={name!r} (subset={subset!r}, split={split!r}) could not be loaded with "
            f"datasets.load_dataset: {type(err).__name__}: {first_line(err)}{why(err)}"
            + (OFFLINE_HINT if offline else "")
        ) from None


def why(err: Exception) -> str:
    """The parser's own words where ``datasets`` wraps them in a generic error (a data file
    it cannot read: "An error occurred while generating the dataset", the JSON or CSV
    error and its row only in the chain): `` (ArrowInvalid: JSON parse error: ... in row
    0)``; else nothing."""
    import datasets

    if not isinstance(err, datasets.exceptions.DatasetGenerationError):
        return ""
    cause: BaseException = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return "" if cause is err else f" ({type(cause).__name__}: {first_line(cause)})"
