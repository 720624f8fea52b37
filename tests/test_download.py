"""Tests of mnist_download against loopback mirrors: good, missing, corrupt, cut short, stalled, refused."""

from __future__ import annotations

import gzip
import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import mnist_download
import mnist_mirror
from mnist_download import (
    MNIST_FILES,
    PUBLISHED_DIGESTS,
    Digests,
    DownloadError,
    download_mnist,
    read_sha256sums,
    sources_from_env,
    verify,
)
from support import free_port, pausing_handler, wait_for

REAL_T10K = Path(__file__).resolve().parents[2] / "shared/data/mnist-t10k"
LABELS = "t10k-labels-idx1-ubyte.gz"
# Small enough to keep the whole file fast; the stalling server sleeps well past it.
TIMEOUT_S = 0.3
FAST = {"attempts": 2, "backoff_s": 0.01, "timeout_s": TIMEOUT_S, "progress": False}


def sha256(data: bytes) -> str:
    """Hex SHA-256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def leftovers(dest: Path) -> list[str]:
    """Names of temporary `.part` files left in `dest`."""
    return sorted(path.name for path in dest.iterdir() if path.name.endswith(".part"))


def counting_handler(base: type[mnist_mirror.QuietHandler] = mnist_mirror.QuietHandler) -> type:
    """A fresh subclass of `base` that records the path of every request it serves."""

    class Counting(base):  # type: ignore[valid-type, misc]
        requests: list[str] = []

        def do_GET(self) -> None:
            self.requests.append(self.path)
            super().do_GET()

    return Counting


class BusyHandler(mnist_mirror.QuietHandler):
    """Answer every request with 503 Service Unavailable."""

    def do_GET(self) -> None:
        self.send_error(503)


class TruncatingHandler(mnist_mirror.QuietHandler):
    """Announce the whole file in Content-Length, send half of it, then close the connection."""

    def do_GET(self) -> None:
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True


class StallingHandler(mnist_mirror.QuietHandler):
    """Say nothing for longer than the client's timeout, then hang up."""

    def do_GET(self) -> None:
        time.sleep(TIMEOUT_S * 3)
        self.close_connection = True


class RedirectLoopHandler(mnist_mirror.QuietHandler):
    """Redirect every request to itself."""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="session")
def digests(mirror_dir: Path) -> dict[str, Digests]:
    return read_sha256sums(mirror_dir / "SHA256SUMS")


@pytest.fixture(scope="session")
def corrupt_dir(tmp_path_factory: pytest.TempPathFactory, mirror_dir: Path) -> Path:
    """The mirror's files with one byte flipped in each: same length, wrong digest."""
    directory = tmp_path_factory.mktemp("corrupt")
    for name in MNIST_FILES:
        data = bytearray((mirror_dir / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (directory / name).write_bytes(bytes(data))
    return directory


@pytest.fixture(scope="session")
def recompressed_dir(tmp_path_factory: pytest.TempPathFactory, mirror_dir: Path) -> Path:
    """The mirror's IDX payloads gzip-compressed at another level: other .gz bytes, same data."""
    directory = tmp_path_factory.mktemp("recompressed")
    for name in MNIST_FILES:
        payload = gzip.decompress((mirror_dir / name).read_bytes())
        (directory / name).write_bytes(gzip.compress(payload, compresslevel=1, mtime=0))
    return directory


@pytest.fixture
def refused_url() -> str:
    """A loopback URL whose port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}/"


@pytest.fixture
def bad_mirror(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mirror_dir: Path,
               corrupt_dir: Path, refused_url: str) -> Iterator[str]:
    """The base URL of a mirror failing in the way named by the test's parameter."""
    kind = request.param
    if kind == "refused":
        yield refused_url
        return
    directory, handler = {
        "404": (tmp_path_factory.mktemp("empty"), mnist_mirror.QuietHandler),
        "corrupt": (corrupt_dir, mnist_mirror.QuietHandler),
        "truncated": (mirror_dir, TruncatingHandler),
        "stalled": (mirror_dir, StallingHandler),
        "redirect loop": (mirror_dir, RedirectLoopHandler),
    }[kind]
    with mnist_mirror.serve(directory, handler) as url:
        yield url


def test_good_mirror_downloads_every_file_and_a_second_call_makes_no_request(
    tmp_path: Path, mirror_dir: Path, digests: dict[str, Digests], capfd: pytest.CaptureFixture[str]
) -> None:
    handler = counting_handler()
    with mnist_mirror.serve(mirror_dir, handler) as url:
        paths = download_mnist(tmp_path / "raw", [url], digests, progress=False)
        assert paths == [tmp_path / "raw" / name for name in MNIST_FILES]
        assert [path.read_bytes() for path in paths] == [(mirror_dir / name).read_bytes() for name in MNIST_FILES]
        assert sorted(handler.requests) == sorted(f"/{name}" for name in MNIST_FILES)
        stamps = [path.stat().st_mtime_ns for path in paths]

        assert download_mnist(tmp_path / "raw", [url], digests, progress=False) == paths
        assert len(handler.requests) == len(MNIST_FILES)
        assert [path.stat().st_mtime_ns for path in paths] == stamps
    assert sorted(path.name for path in (tmp_path / "raw").iterdir()) == sorted(MNIST_FILES)
    assert capfd.readouterr().err == ""


def test_a_mirror_served_from_a_relative_folder_serves_it_after_the_working_folder_changes(
    tmp_path: Path, mirror_dir: Path, digests: dict[str, Digests], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `make tutorial` serves build/mirror, and papermill runs each notebook from notebooks/.
    monkeypatch.chdir(mirror_dir.parent)
    with mnist_mirror.serve(Path(mirror_dir.name)) as url:
        monkeypatch.chdir(tmp_path)
        paths = download_mnist(tmp_path / "raw", [url], digests, progress=False)

    assert [path.read_bytes() for path in paths] == [(mirror_dir / name).read_bytes() for name in MNIST_FILES]


def test_two_downloads_into_one_folder_both_succeed(
    tmp_path: Path, mirror_dir: Path, digests: dict[str, Digests]
) -> None:
    dest = tmp_path / "raw"
    handler = pausing_handler(finish=True)
    outcome: dict[str, object] = {}

    def first_download() -> None:
        try:
            outcome["paths"] = download_mnist(dest, [url], digests, files=[LABELS], attempts=1, progress=False)
        except Exception as error:  # noqa: BLE001 - handed to the test's thread, which asserts on it
            outcome["error"] = error

    with mnist_mirror.serve(mirror_dir, handler) as url:
        first = threading.Thread(target=first_download)
        first.start()
        try:
            wait_for(lambda: handler.half_sent.is_set() and leftovers(dest), "the first download to be paused mid-body")
            [live_part] = leftovers(dest)
            # The second download starts and ends while the first one is paused, writing its .part file.
            second = download_mnist(dest, [url], digests, files=[LABELS], attempts=1, progress=False)
            live_part_kept = (dest / live_part).exists()
        finally:
            handler.release.set()
            first.join(timeout=60)

    assert "error" not in outcome, f"the first download failed: {outcome.get('error')!r}"
    assert outcome["paths"] == second == [dest / LABELS]
    assert live_part_kept
    assert handler.served == [f"/{LABELS}"] * 2
    assert (dest / LABELS).read_bytes() == (mirror_dir / LABELS).read_bytes()
    assert leftovers(dest) == []


def test_progress_bar_names_the_file(
    tmp_path: Path, mirror_url: str, digests: dict[str, Digests], capfd: pytest.CaptureFixture[str]
) -> None:
    download_mnist(tmp_path, [mirror_url], digests, files=[LABELS])
    assert LABELS in capfd.readouterr().err


@pytest.mark.parametrize(
    "bad_mirror", ["404", "corrupt", "truncated", "stalled", "refused", "redirect loop"], indirect=True
)
def test_falls_back_to_the_next_mirror(
    tmp_path: Path, bad_mirror: str, mirror_url: str, mirror_dir: Path, digests: dict[str, Digests]
) -> None:
    # The two test-set files: every failure costs a full round of attempts per file, stalls most of all.
    t10k = MNIST_FILES[2:]
    paths = download_mnist(tmp_path, [bad_mirror, mirror_url], digests, files=t10k, **FAST)
    assert [path.read_bytes() for path in paths] == [(mirror_dir / name).read_bytes() for name in t10k]
    assert leftovers(tmp_path) == []


def test_5xx_is_retried_with_exponential_backoff_and_404_is_not(
    tmp_path: Path, mirror_url: str, digests: dict[str, Digests], monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(mnist_download.time, "sleep", sleeps.append)
    not_found, busy = counting_handler(), counting_handler(BusyHandler)
    (tmp_path / "empty").mkdir()
    with mnist_mirror.serve(tmp_path / "empty", not_found) as empty_url, \
            mnist_mirror.serve(tmp_path / "empty", busy) as busy_url:
        download_mnist(tmp_path / "raw", [empty_url, busy_url, mirror_url], digests,
                       files=[LABELS], attempts=3, backoff_s=0.5, progress=False)
    assert not_found.requests == [f"/{LABELS}"]
    assert busy.requests == [f"/{LABELS}"] * 3
    assert sleeps == [0.5, 1.0]
    assert (tmp_path / "raw" / LABELS).exists()


def test_every_mirror_failing_raises_one_error_naming_each_mirror_and_why(
    tmp_path: Path, mirror_dir: Path, corrupt_dir: Path, refused_url: str, digests: dict[str, Digests]
) -> None:
    (tmp_path / "empty").mkdir()
    dest = tmp_path / "raw"
    with mnist_mirror.serve(tmp_path / "empty") as missing, mnist_mirror.serve(corrupt_dir) as corrupt, \
            mnist_mirror.serve(mirror_dir, TruncatingHandler) as truncated, \
            mnist_mirror.serve(mirror_dir, StallingHandler) as stalled:
        mirrors = [missing, corrupt, truncated, stalled, refused_url]
        with pytest.raises(DownloadError) as caught:
            download_mnist(dest, mirrors, digests, **FAST)

    message = str(caught.value)
    first = MNIST_FILES[0]
    expected_reasons = {
        missing: "HTTP 404 File not found",
        corrupt: "checksum mismatch: sha256 ",
        truncated: "body cut short: ",
        stalled: f"timed out after {TIMEOUT_S:g} s",
        refused_url: "connection refused",
    }
    lines = message.splitlines()
    for mirror, reason in expected_reasons.items():
        [line] = [line for line in lines if f"{mirror}{first}" in line]
        assert reason in line
    assert f"is not the expected {digests[first].gz[:12]}" in message
    assert "MNIST_MIRRORS" in message and "MNIST_SHA256SUMS" in message
    assert list(dest.iterdir()) == []


def test_a_corrupt_existing_file_is_replaced_by_a_verified_one(
    tmp_path: Path, mirror_url: str, mirror_dir: Path, digests: dict[str, Digests]
) -> None:
    (tmp_path / LABELS).write_bytes(b"not the labels")
    with pytest.warns(UserWarning, match=LABELS):
        [path] = download_mnist(tmp_path, [mirror_url], digests, files=[LABELS], progress=False)
    assert path.read_bytes() == (mirror_dir / LABELS).read_bytes()
    assert leftovers(tmp_path) == []


def test_a_corrupt_existing_file_is_removed_when_no_mirror_has_a_good_copy(
    tmp_path: Path, refused_url: str, digests: dict[str, Digests]
) -> None:
    (tmp_path / LABELS).write_bytes(b"not the labels")
    with pytest.warns(UserWarning, match=LABELS), pytest.raises(DownloadError, match="connection refused"):
        download_mnist(tmp_path, [refused_url], digests, files=[LABELS], **{**FAST, "attempts": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_recompressed_mirror_verifies_by_its_payload(
    tmp_path: Path, recompressed_dir: Path, mirror_dir: Path, digests: dict[str, Digests]
) -> None:
    original = (mirror_dir / LABELS).read_bytes()
    recompressed = (recompressed_dir / LABELS).read_bytes()
    assert recompressed != original
    by_payload = {LABELS: Digests(gz=digests[LABELS].gz, payload=sha256(gzip.decompress(original)))}
    wrong_payload = {LABELS: Digests(gz=digests[LABELS].gz, payload=sha256(b"other data"))}
    with mnist_mirror.serve(recompressed_dir) as url:
        [path] = download_mnist(tmp_path / "good", [url], by_payload, files=[LABELS], **FAST)
        assert path.read_bytes() == recompressed
        with pytest.raises(DownloadError, match="decompressed sha256 .* is not the expected"):
            download_mnist(tmp_path / "bad", [url], wrong_payload, files=[LABELS], **FAST)
        with pytest.raises(DownloadError, match="checksum mismatch"):
            download_mnist(tmp_path / "gz only", [url], digests, files=[LABELS], **FAST)
    assert list((tmp_path / "bad").iterdir()) == []


def test_verify(tmp_path: Path, mirror_dir: Path) -> None:
    data = (mirror_dir / LABELS).read_bytes()
    payload_digest = sha256(gzip.decompress(data))
    assert verify(mirror_dir / LABELS, Digests(gz=sha256(data)))
    assert verify(mirror_dir / LABELS, Digests(gz=None, payload=payload_digest))
    assert not verify(mirror_dir / LABELS, Digests(gz=sha256(b"x")))
    (tmp_path / "bad.gz").write_bytes(b"plain text, not gzip")
    assert not verify(tmp_path / "bad.gz", Digests(gz=sha256(b"x"), payload=payload_digest))
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])
    assert not verify(tmp_path / "cut.gz", Digests(gz=sha256(b"x"), payload=payload_digest))


def test_digests_reject_values_that_can_never_match() -> None:
    with pytest.raises(ValueError, match="neither"):
        Digests(gz=None)
    with pytest.raises(ValueError, match="'abc' is not a SHA-256 digest"):
        Digests(gz="abc")


def test_a_file_without_a_digest_is_refused_before_any_request(
    tmp_path: Path, mirror_dir: Path, digests: dict[str, Digests]
) -> None:
    handler = counting_handler()
    partial = {name: digest for name, digest in digests.items() if name != LABELS}
    with mnist_mirror.serve(mirror_dir, handler) as url:
        with pytest.raises(ValueError, match=f"No SHA-256 digest for {LABELS}"):
            download_mnist(tmp_path, [url], partial, progress=False)
    assert handler.requests == []


def test_sources_from_env_defaults() -> None:
    mirrors, digests = sources_from_env({})
    assert mirrors == list(mnist_download.DEFAULT_MIRRORS)
    assert digests == PUBLISHED_DIGESTS


def test_sources_from_env_custom_mirrors_and_sums(tmp_path: Path, mirror_dir: Path) -> None:
    environ = {
        "MNIST_MIRRORS": " http://127.0.0.1:8000/mnist , ,https://example.org/a/ ,",
        "MNIST_SHA256SUMS": str(mirror_dir / "SHA256SUMS"),
    }
    mirrors, digests = sources_from_env(environ)
    assert mirrors == ["http://127.0.0.1:8000/mnist/", "https://example.org/a/"]
    assert digests == {name: Digests(gz=sha256((mirror_dir / name).read_bytes())) for name in MNIST_FILES}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MNIST_SHA256SUMS": "/nonexistent/SHA256SUMS"}, "MNIST_SHA256SUMS='/nonexistent/SHA256SUMS': no such file"),
        ({"MNIST_MIRRORS": " , "}, "MNIST_MIRRORS=' , ' lists no mirror"),
        ({"MNIST_MIRRORS": "ftp://example.org/"}, "'ftp://example.org/' is not an http:// or https:// URL"),
    ],
)
def test_sources_from_env_errors_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        sources_from_env(environ)


def test_read_sha256sums_formats_and_malformed_line(tmp_path: Path) -> None:
    first, second = sha256(b"1"), sha256(b"2")
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{first}  a.gz\n\n{second.upper()} *b c.gz\n")
    assert read_sha256sums(sums) == {"a.gz": Digests(gz=first), "b c.gz": Digests(gz=second)}
    sums.write_text(f"{first}  a.gz\n{first[:10]}  b.gz\n")
    with pytest.raises(ValueError, match=rf"{sums}, line 2: .* is not a sha256sum line"):
        read_sha256sums(sums)


MALFORMED_SUMS = {
    "gzip-compressed": lambda text: gzip.compress(text.encode(), mtime=0),
    "not UTF-8": lambda text: text.encode() + "caf\u00e9  x.gz\n".encode("latin-1"),
    "a malformed line": lambda text: text.encode() + b"not a digest line\n",
    "empty": lambda text: b"",
}


@pytest.mark.parametrize("kind", list(MALFORMED_SUMS))
def test_a_malformed_sha256sums_file_names_the_file_and_the_variable(
    tmp_path: Path, mirror_dir: Path, kind: str
) -> None:
    sums = tmp_path / "SHA256SUMS"
    sums.write_bytes(MALFORMED_SUMS[kind]((mirror_dir / "SHA256SUMS").read_text()))

    with pytest.raises(ValueError) as caught:
        sources_from_env({"MNIST_SHA256SUMS": str(sums)})

    assert type(caught.value) is ValueError  # not a UnicodeDecodeError, which says neither
    message = str(caught.value)
    assert message.startswith(f"MNIST_SHA256SUMS={str(sums)!r}: ") and "sha256sum" in message


@pytest.mark.skipif(not REAL_T10K.is_dir(), reason=f"the real MNIST test set is not at {REAL_T10K}")
def test_real_t10k_files_verify_against_the_published_payload_digests(tmp_path: Path) -> None:
    t10k = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    # These copies were re-compressed by a third party: only their payloads match the published digests.
    assert all(sha256((REAL_T10K / name).read_bytes()) != PUBLISHED_DIGESTS[name].gz for name in t10k)
    with mnist_mirror.serve(REAL_T10K) as url:
        paths = download_mnist(tmp_path, [url], PUBLISHED_DIGESTS, files=t10k, progress=False)
    assert [path.read_bytes() for path in paths] == [(REAL_T10K / name).read_bytes() for name in t10k]
    assert [sha256(gzip.decompress(path.read_bytes())) for path in paths] == [
        PUBLISHED_DIGESTS[name].payload for name in t10k
    ]
