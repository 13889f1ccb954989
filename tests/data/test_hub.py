"""The Hugging Face hub unreachable: a hub name is looked up in the local caches only, at
once, instead of through ``datasets``' retries with backoff (about 25 s a name); a local path
never asks the hub. Nothing here reaches the network: the hub's reachability is a local port
that answers or does not, and the loads are stand-ins that record the offline switches."""

from __future__ import annotations

import socket
from pathlib import Path

import datasets
import huggingface_hub.constants as hub_constants
import pytest

from lmlab.config import DataConfig, Source, TaskConfig, TaskKind, TaskSource
from lmlab.data import hub
from lmlab.data.examples import hub_splits
from lmlab.data.sources import SOURCES
from lmlab.errors import ConfigError


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither offline variable set, and datasets and huggingface_hub not in offline mode."""
    for name in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)


def test_the_hub_is_reachable_when_its_endpoint_answers(
    online: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"https://127.0.0.1:{port}")
        monkeypatch.setattr(hub.socket, "create_connection", fake_connect(port))
        assert hub.hub_reachable()
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # said offline: not asked
        assert not hub.hub_reachable()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert not hub.hub_reachable()  # closed: nothing listens on the port


def fake_connect(port: int):
    """``socket.create_connection`` to the local server's port, whatever port 443 was asked."""
    real = socket.create_connection

    def connect(address: tuple[str, int], timeout: float | None = None) -> socket.socket:
        return real((address[0], port), timeout=timeout)

    return connect


def hf_data(name: str, cache: Path) -> DataConfig:
    """A DataConfig built in Python has no cache folder of its own: its default is the text
    that Hydra resolves (``${oc.env:LMLAB_CACHE,...}``), a folder of that name here."""
    return DataConfig(source=Source.hf, name=name, cache_dir=str(cache))


def recording_load(seen: list[tuple[bool, bool]]):
    """A stand-in for ``datasets.load_dataset`` that records whether datasets and
    huggingface_hub were in offline mode, and fails as an uncached hub name does offline."""

    def load(*args: object, **kwargs: object) -> None:
        seen.append((datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE))
        raise ConnectionError("Couldn't reach 'no-such/set' on the Hub (LocalEntryNotFoundError)")

    return load


@pytest.mark.parametrize("reachable", [False, True])
def test_a_hub_dataset_loads_from_the_caches_only_when_the_hub_is_unreachable(
    reachable: bool, online: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``data=hf`` and ``task.source=hf`` alike; the refusal says why offline, and the
    switches are restored after it."""
    seen: list[tuple[bool, bool]] = []
    monkeypatch.setattr(hub, "hub_reachable", lambda: reachable)
    monkeypatch.setattr(datasets, "load_dataset", recording_load(seen))
    task = TaskConfig(kind=TaskKind.classify, source=TaskSource.hf, name="no-such/set")
    data = hf_data("no-such/set", tmp_path / "cache")
    loads = {
        "data.name='no-such/set'": lambda: SOURCES[Source.hf](data),
        "task.name='no-such/set'": lambda: hub_splits(task, tmp_path),
    }
    for field, load in loads.items():
        with pytest.raises(ConfigError) as refused:
            load()
        message = str(refused.value)
        assert message.startswith(f"{field} (subset=None"), message
        assert ("hub cannot be reached from here" in message) is not reachable, message
        assert seen.pop() == (not reachable, not reachable)
        assert (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE) == (False, False)


def test_a_local_path_never_asks_the_hub(
    online: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def asked() -> bool:
        raise AssertionError("the hub was asked about a local path")

    monkeypatch.setattr(hub, "hub_reachable", asked)
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "rows.jsonl").write_text('{"text": "a local row"}\n')
    docs = SOURCES[Source.hf](hf_data(str(tmp_path / "rows"), tmp_path / "cache"))
    assert [text for _, text in docs] == ["a local row"]
