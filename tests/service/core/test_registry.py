"""Dataset registry: mirror, cache and download paths, against a real HTTP server on loopback."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from service.core.model import file_sha256
from service.core.settings import Settings
from training.core.datasets import REGISTRY, DatasetError, DatasetFile, fetch, get_spec, is_available

SMALL = "uci-computer-hardware"  # two small files: quick to serve and hash


@pytest.fixture
def http_mirror(mirror: Path) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving the mirror directory."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class TruncatingHandler(http.server.SimpleHTTPRequestHandler):
    """Announces the whole file, sends half of it and drops the connection, while ``cuts`` lasts."""

    cuts = [0]

    def do_GET(self) -> None:  # noqa: N802 (the http.server hook's name)
        if self.cuts[0] <= 0:
            super().do_GET()
            return
        self.cuts[0] -= 1
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def flaky_mirror(mirror: Path) -> Iterator[tuple[str, list[int]]]:
    """An HTTP server whose next ``cuts[0]`` downloads are interrupted half-way."""
    cuts = [0]
    handler = functools.partial(type("Cut", (TruncatingHandler,), {"cuts": cuts}), directory=str(mirror))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", cuts
    finally:
        server.shutdown()
        server.server_close()


def local_spec(base_url: str, name: str = SMALL):
    spec = get_spec(name)
    files = tuple(replace(f, url=f"{base_url}/{name}/{f.file}") for f in spec.files)
    return replace(spec, files=files)


def test_registry_lists_every_shared_dataset(mirror: Path) -> None:
    import json

    manifest = json.loads((mirror / "manifest.json").read_text())
    assert set(REGISTRY) == set(manifest)
    for name, entry in manifest.items():
        assert {(f["file"], f["sha256"]) for f in entry["files"]} == {
            (f.file, f.sha256) for f in REGISTRY[name].files
        }


def test_mirror_files_are_verified_and_used_in_place(settings: Settings, mirror: Path) -> None:
    paths = fetch(get_spec(SMALL), settings, progressbar=False)
    assert all(p.parent == mirror / SMALL for p in paths.values())
    assert is_available(get_spec(SMALL), settings)


def test_tampered_mirror_file_is_refused(tmp_path: Path, mirror: Path) -> None:
    bad = tmp_path / "mirror"
    shutil.copytree(mirror / SMALL, bad / SMALL)
    target = bad / SMALL / "machine.data"
    target.chmod(0o644)
    target.write_bytes(target.read_bytes() + b"tampered\n")
    settings = Settings(data_mirror=bad, data_home=tmp_path / "cache")
    with pytest.raises(DatasetError, match=r"uci-computer-hardware: machine.data .* sha256"):
        fetch(get_spec(SMALL), settings, progressbar=False)


def test_download_over_http_caches_and_verifies(tmp_path: Path, http_mirror: str) -> None:
    settings = Settings(data_mirror=None, data_home=tmp_path / "cache")
    spec = local_spec(http_mirror)
    paths = fetch(spec, settings, progressbar=False)
    for f in spec.files:
        assert paths[f.file] == tmp_path / "cache" / SMALL / f.file
        assert file_sha256(paths[f.file]) == f.sha256
    assert is_available(spec, settings)


def test_cached_file_is_used_without_network(tmp_path: Path, http_mirror: str) -> None:
    settings = Settings(data_mirror=None, data_home=tmp_path / "cache")
    fetch(local_spec(http_mirror), settings, progressbar=False)
    offline = local_spec("http://127.0.0.1:9")  # discard port: nothing listens
    assert fetch(offline, settings, progressbar=False)


def test_checksum_mismatch_on_download_leaves_no_file(tmp_path: Path, http_mirror: str) -> None:
    settings = Settings(data_mirror=None, data_home=tmp_path / "cache", download_retries=0)
    spec = local_spec(http_mirror)
    wrong = replace(spec, files=(DatasetFile(spec.files[0].file, "0" * 64, spec.files[0].url),))
    with pytest.raises(DatasetError, match="fails its sha256 check and was discarded"):
        fetch(wrong, settings, progressbar=False)
    assert not (tmp_path / "cache" / SMALL / spec.files[0].file).exists()


def test_interrupted_download_leaves_nothing_and_the_next_fetch_restarts_cleanly(
    tmp_path: Path, flaky_mirror: tuple[str, list[int]]
) -> None:
    url, cuts = flaky_mirror
    spec = local_spec(url)
    cache = tmp_path / "cache"
    cuts[0] = 1
    with pytest.raises(DatasetError, match="could not be downloaded"):
        fetch(spec, Settings(data_mirror=None, data_home=cache, download_retries=0), progressbar=False)
    assert cuts[0] == 0  # the interruption really happened
    assert [p.name for p in (cache / SMALL).iterdir()] == []  # no partial or temporary file is left
    paths = fetch(spec, Settings(data_mirror=None, data_home=cache, download_retries=0), progressbar=False)
    assert all(file_sha256(paths[f.file]) == f.sha256 for f in spec.files)


def test_interrupted_download_is_retried_within_one_fetch(
    tmp_path: Path, flaky_mirror: tuple[str, list[int]]
) -> None:
    url, cuts = flaky_mirror
    spec = local_spec(url)
    cuts[0] = 1
    settings = Settings(data_mirror=None, data_home=tmp_path / "cache", download_retries=1)
    paths = fetch(spec, settings, progressbar=False)
    assert cuts[0] == 0
    assert all(file_sha256(paths[f.file]) == f.sha256 for f in spec.files)


def test_no_network_is_a_clear_error(tmp_path: Path) -> None:
    settings = Settings(
        data_mirror=tmp_path / "empty-mirror", data_home=tmp_path / "cache", download_retries=0
    )
    with pytest.raises(
        DatasetError,
        match=r"uci-computer-hardware: machine.data could not be downloaded .*PERFCOST_DATA_MIRROR",
    ):
        fetch(local_spec("http://127.0.0.1:9"), settings, progressbar=False)


def test_missing_file_on_server_is_a_clear_error(tmp_path: Path, http_mirror: str) -> None:
    settings = Settings(data_mirror=None, data_home=tmp_path / "cache", download_retries=0)
    spec = local_spec(http_mirror)
    missing = replace(spec, files=(replace(spec.files[0], url=f"{http_mirror}/nope/machine.data"),))
    with pytest.raises(DatasetError, match="could not be downloaded"):
        fetch(missing, settings, progressbar=False)


def test_unknown_dataset_names_the_known_ones() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'nope'; known: .*neusight-gemm"):
        get_spec("nope")
