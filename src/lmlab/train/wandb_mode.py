"""Whether a run logs to W&B online, offline or not at all, decided where W&B would decide it
(its environment and settings files), offline without a key or a server that answers (never a
prompt or a minutes-long wait), and off where the user turned W&B off."""

from __future__ import annotations

import logging
import netrc
import os
import socket
import threading
import urllib.request
from configparser import ConfigParser
from configparser import Error as ConfigParserError
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

WANDB_HOST = "api.wandb.ai"

# How long a run with a key waits for a TCP connection to its W&B server before it logs
# offline: W&B's own init gives up only after its init_timeout (90 s) and retries.
WANDB_REACH_SECONDS = 3.0

# The WANDB_MODE values W&B takes (its Settings' ``mode``): any other, a typo or an empty
# ``WANDB_MODE=``, fails W&B's first call in the run, and the run logs nothing to W&B
WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")

SYNC_HINT = "wandb sync {}/wandb/offline-run-*"


def wandb_setting(key: str, variable: str) -> str | None:
    """A W&B setting found where W&B finds it: the environment's ``variable``, else ``key`` in
    W&B's settings files (the workspace's ``wandb/settings`` over the global one,
    ``~/.config/wandb/settings`` or under ``WANDB_CONFIG_DIR``, which ``wandb offline`` and
    ``wandb disabled`` write); None where neither sets it."""
    if value := os.environ.get(variable):
        return value
    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR") or "~/.config/wandb").expanduser()
    root = Path(os.environ.get("WANDB_DIR") or ".")
    workspace = root / (".wandb" if (root / ".wandb").exists() else "wandb")
    found = None
    for path in (config_dir / "settings", workspace / "settings"):  # the later one wins
        parser = ConfigParser()
        try:
            parser.read(path)
            found = parser.get("default", key, fallback=None) or found
        except (OSError, ConfigParserError):
            continue
    return found


def wandb_base_url() -> str:
    """The W&B server a run talks to (``WANDB_BASE_URL``, else ``base_url`` in W&B's settings
    files: ``wandb_setting``), else W&B's default."""
    if found := wandb_setting("base_url", "WANDB_BASE_URL"):
        return found
    import wandb

    return wandb.Settings().base_url


def wandb_disabled() -> bool:
    """Whether the user turned W&B off the way W&B documents: ``WANDB_MODE=disabled``, or
    ``wandb disabled`` (its settings file's ``mode``). Such a run starts no W&B run and writes
    no ``wandb/`` records, as with ``logger.wandb=null``: lmlab passes W&B its ``mode``
    (offline or online), which would overrule the user's."""
    return wandb_mode() == "disabled"


def wandb_mode() -> str | None:
    """The mode the user set for W&B (``WANDB_MODE``, else the settings files' ``mode``, which
    ``wandb offline``, ``wandb online`` and ``wandb disabled`` write); None where unset."""
    return wandb_setting("mode", "WANDB_MODE")


def wandb_has_credentials() -> bool:
    """True when an API key is in the environment or in the netrc file (what ``wandb login``
    writes: ``NETRC`` or ``~/.netrc``), for the W&B server's host or W&B's cloud."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    hosts = {WANDB_HOST, urlsplit(wandb_base_url()).netloc}
    try:
        found = netrc.netrc(os.environ.get("NETRC") or None)
        return any(found.authenticators(host) is not None for host in hosts if host)
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_unreachable(url: str, timeout: float = WANDB_REACH_SECONDS) -> str | None:
    """Why the W&B server at ``url`` cannot be reached, or None when a TCP connection to it
    (through the proxy the environment names for it, as W&B goes) opens within ``timeout``
    seconds, name lookup included."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    proxy = urllib.request.getproxies().get(parts.scheme)
    if host and proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname, proxy_parts.port or 80
    if not host:
        return f"{url!r} names no host"
    port = port or (443 if parts.scheme == "https" else 80)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(f"{host}:{port}: {err.strerror or err}")

    # a thread: a name lookup takes no timeout, and may hang far longer than the connection
    probe = threading.Thread(target=connect, name="wandb-reachable", daemon=True)
    probe.start()
    probe.join(timeout)
    return outcome[0] if outcome else f"{host}:{port}: no answer within {timeout:g} s"


def wandb_offline_known(requested: bool | None) -> bool | None:
    """``wandb_offline`` where the server is not asked: ``WANDB_MODE=offline`` (True), else
    ``logger.wandb.offline`` (``requested``), else no credentials (True), else another
    ``WANDB_MODE`` (False: W&B's to follow); None where the server's answer decides. The mode
    is the user's wherever W&B reads it (``wandb_mode``: ``wandb offline`` too)."""
    mode = wandb_mode()
    if mode in ("offline", "dryrun"):
        return True
    if requested is not None:
        return requested
    if not wandb_has_credentials():
        return True
    return False if mode else None


def wandb_offline(requested: bool | None, save_dir: str | Path | None = None) -> bool:
    """``logger.wandb.offline=null`` (default): offline unless credentials exist, so a run
    never blocks on a login prompt, and offline too when the W&B server does not answer
    within ``WANDB_REACH_SECONDS`` (one warning, with the ``wandb sync`` that uploads the run
    later from ``save_dir``), so a run never waits minutes for W&B's own timeout and fails.
    ``WANDB_MODE=offline`` always wins; ``WANDB_MODE=online`` (or ``offline=false``) asks for
    online without the check (``start_wandb`` still goes offline if W&B cannot start)."""
    known = wandb_offline_known(requested)
    if known is not None:
        return known
    url = wandb_base_url()
    why = wandb_unreachable(url)
    if why is None:
        return False
    log.warning(
        "W&B: %s cannot be reached (%s): logging offline; upload later with: %s",
        url,
        why,
        SYNC_HINT.format(save_dir or "<run dir>"),
    )
    return True
