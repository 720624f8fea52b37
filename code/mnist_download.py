"""Download the four raw MNIST IDX `.gz` files, verified against SHA-256 digests.

Mirrors are tried in order, each a few times with exponential backoff. A file is streamed into a
temporary `.part` file beside its final name, verified, and only then renamed into place, so a
failed or interrupted download never leaves a partial or unverified file under the final name. The
`.part` file stays locked (flock) while its download lives: a later run removes those of killed downloads
and leaves those of downloads still running into the same folder.

    mirrors, digests = sources_from_env(os.environ)   # MNIST_MIRRORS / MNIST_SHA256SUMS, or the defaults
    paths = download_mnist(Path("data/MNIST/raw"), mirrors, digests)
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import http.client
import os
import re
import socket
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from mnist_format import MNIST_FILES

# The public mirrors, tried in order (yann.lecun.com itself no longer serves the files reliably).
DEFAULT_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_CHUNK_BYTES = 1 << 16


@dataclass(frozen=True)
class Digests:
    """Accepted SHA-256 digests of one file: of the .gz bytes, and of the decompressed IDX payload."""

    gz: str | None
    payload: str | None = None

    def __post_init__(self) -> None:
        """Reject digests that could never match, so a typo fails here rather than as a download error."""
        if self.gz is None and self.payload is None:
            raise ValueError("Digests needs a gz digest, a payload digest or both: with neither no file verifies")
        for field, value in (("gz", self.gz), ("payload", self.payload)):
            if value is not None and not _HEX_DIGEST.fullmatch(value):
                raise ValueError(f"Digests.{field}={value!r} is not a SHA-256 digest (64 lowercase hex digits)")


# The published MNIST checksums. The payload digests let a mirror that re-compressed the same data
# (different gzip header or level, so different .gz bytes) still verify.
PUBLISHED_DIGESTS: dict[str, Digests] = {
    "train-images-idx3-ubyte.gz": Digests(
        gz="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        payload="ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train-labels-idx1-ubyte.gz": Digests(
        gz="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        payload="65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "t10k-images-idx3-ubyte.gz": Digests(
        gz="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        payload="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "t10k-labels-idx1-ubyte.gz": Digests(
        gz="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        payload="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}


class DownloadError(RuntimeError):
    """No mirror delivered a verified copy of a file; the message lists each mirror and why it failed."""


class _MirrorFailure(Exception):
    """One failed try at one mirror: why, and whether trying the same mirror again may help."""

    def __init__(self, reason: str, *, retry: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


def read_sha256sums(path: Path) -> dict[str, Digests]:
    """Read a `sha256sum`-format file ("<hex>  <name>" or "<hex> *<name>" lines) into .gz digests."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        kind = "a gzip file" if data.startswith(b"\x1f\x8b") else f"not UTF-8 text (byte {error.start})"
        raise ValueError(
            f"{path} is {kind}, not a sha256sum file: write it with `sha256sum FILE... > SHA256SUMS`"
        ) from error
    digests: dict[str, Digests] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](\S.*)", line.rstrip())
        if match is None:
            raise ValueError(
                f"{path}, line {number}: {line!r} is not a sha256sum line; expected "
                "'<64 hex digits>  <file name>' (as written by `sha256sum FILE > SHA256SUMS`)"
            )
        digests[match[2]] = Digests(gz=match[1].lower())
    if not digests:
        raise ValueError(f"{path} holds no sha256sum line: write it with `sha256sum FILE... > SHA256SUMS`")
    return digests


def _with_slash(url: str) -> str:
    """End a mirror URL with "/", so that appending a file name puts the file inside the mirror's folder."""
    return url if url.endswith("/") else url + "/"


def sources_from_env(environ: Mapping[str, str]) -> tuple[list[str], dict[str, Digests]]:
    """Read the mirrors (MNIST_MIRRORS) and their digests (MNIST_SHA256SUMS), or return the defaults."""
    if "MNIST_MIRRORS" in environ:
        value = environ["MNIST_MIRRORS"]
        mirrors = [_with_slash(entry.strip()) for entry in value.split(",") if entry.strip()]
        if not mirrors:
            raise ValueError(
                f"MNIST_MIRRORS={value!r} lists no mirror: set it to comma-separated base URLs "
                "(e.g. http://127.0.0.1:8000/) or unset it to use the public mirrors"
            )
        for mirror in mirrors:
            if not mirror.startswith(("http://", "https://")):
                raise ValueError(f"MNIST_MIRRORS entry {mirror!r} is not an http:// or https:// URL")
    else:
        mirrors = list(DEFAULT_MIRRORS)

    if "MNIST_SHA256SUMS" not in environ:
        return mirrors, dict(PUBLISHED_DIGESTS)
    sums = Path(environ["MNIST_SHA256SUMS"])
    if not sums.is_file():
        raise ValueError(
            f"MNIST_SHA256SUMS={str(sums)!r}: no such file. Point it at the sha256sum file of the mirror "
            "in MNIST_MIRRORS, or unset it to verify against the published MNIST checksums"
        )
    try:
        return mirrors, read_sha256sums(sums)
    except ValueError as error:
        raise ValueError(f"MNIST_SHA256SUMS={str(sums)!r}: {error}") from error


def _sha256(stream: BinaryIO) -> str:
    """Hash a stream in chunks, so the 47 MB training images never sit in memory at once."""
    digest = hashlib.sha256()
    while chunk := stream.read(_CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


def _mismatch(path: Path, expected: Digests) -> str | None:
    """Return why `path` does not verify against `expected`, or None when it does."""
    with open(path, "rb") as raw:
        gz_digest = _sha256(raw)
    if gz_digest == expected.gz:
        return None
    reasons = [] if expected.gz is None else [f"sha256 {gz_digest[:12]}… is not the expected {expected.gz[:12]}…"]
    if expected.payload is not None:
        try:
            with gzip.open(path, "rb") as payload:
                payload_digest = _sha256(payload)
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:
            reasons.append(f"not a valid gzip file ({str(error) or type(error).__name__})")
        else:
            if payload_digest == expected.payload:
                return None
            reasons.append(
                f"decompressed sha256 {payload_digest[:12]}… is not the expected {expected.payload[:12]}…"
            )
    return "checksum mismatch: " + "; ".join(reasons)


def verify(path: Path, expected: Digests) -> bool:
    """Return True when the file's .gz digest, or failing that its decompressed payload's, is as expected."""
    return _mismatch(path, expected) is None


def _describe(error: BaseException, timeout_s: float) -> str:
    """Say in a few words why a request failed, without urllib's wrapping."""
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        error = error.reason
    if isinstance(error, TimeoutError):
        return f"timed out after {timeout_s:g} s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return f"host name lookup failed ({error.strerror})"
    return f"{type(error).__name__}: {error}"


def _stream(url: str, out: BinaryIO, *, name: str, timeout_s: float, progress: bool) -> None:
    """Copy the body at `url` into `out`, failing on HTTP errors, stalls and bodies cut short."""
    try:
        response = urllib.request.urlopen(url, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        error.close()
        # 4xx (and a redirect loop) will not change on a retry; a 5xx may be a passing overload.
        reason = " ".join(str(error.reason).split())
        raise _MirrorFailure(f"HTTP {error.code} {reason}", retry=error.code >= 500) from error
    except (OSError, http.client.HTTPException) as error:
        raise _MirrorFailure(_describe(error, timeout_s), retry=True) from error

    with response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None and length.isdigit() else None
        received = 0
        with tqdm(total=expected, desc=name, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as error:
                    raise _MirrorFailure(_describe(error, timeout_s), retry=True) from error
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    # http.client ends the body quietly when the server closes early, so compare with Content-Length here.
    if expected is not None and received < expected:
        raise _MirrorFailure(f"body cut short: {received} of {expected} bytes", retry=True)


def _locked_part_file(final: Path) -> BinaryIO:
    """Create the temporary `.part` file of a download of `final`, locked for as long as it stays open.

    The lock tells a concurrent download's clean-up that the file is live (see `_remove_stale_parts`);
    the kernel drops it when the process ends, however it ends.
    """
    while True:
        part = tempfile.NamedTemporaryFile(dir=final.parent, prefix=f".{final.name}.", suffix=".part", delete=False)
        # A concurrent clean-up may take the new file for a stale one before it is locked (it then holds the
        # lock, or has already removed the file): that file is given up and another one made.
        with contextlib.suppress(BlockingIOError, FileNotFoundError):
            fcntl.flock(part.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(part.name).st_ino == os.fstat(part.fileno()).st_ino:
                return part
        part.close()


def _remove_stale_parts(final: Path) -> None:
    """Remove the `.part` files of `final` left by killed downloads; leave those of live ones, which hold a lock."""
    for stale in final.parent.glob(f".{final.name}.*.part"):
        try:
            with open(stale, "rb") as file:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                stale.unlink()
        except BlockingIOError:
            continue  # another download is writing it
        except FileNotFoundError:
            continue  # its download finished or removed it meanwhile


def _fetch_verified(url: str, final: Path, expected: Digests, *, timeout_s: float, progress: bool) -> None:
    """Download `url` into a temporary file beside `final`, verify it, then rename it onto `final`."""
    part = _locked_part_file(final)
    part_path = Path(part.name)
    try:
        with part:  # open, and so locked, until it is renamed into place
            _stream(url, part, name=final.name, timeout_s=timeout_s, progress=progress)
            part.flush()
            # Sync before the rename: a crash just after it must not leave an empty file under the final name.
            os.fsync(part.fileno())
            mismatch = _mismatch(part_path, expected)
            if mismatch is not None:
                raise _MirrorFailure(mismatch, retry=True)
            os.chmod(part_path, 0o644)  # temporary files are private (0600); the data is not
            os.replace(part_path, final)
    finally:
        part_path.unlink(missing_ok=True)


def _try_mirror(
    url: str, final: Path, expected: Digests, *, attempts: int, backoff_s: float, timeout_s: float, progress: bool
) -> str | None:
    """Try one URL up to `attempts` times; return None once `final` is in place, else why it failed."""
    reasons: list[str] = []
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            _fetch_verified(url, final, expected, timeout_s=timeout_s, progress=progress)
        except _MirrorFailure as failure:
            reasons.append(failure.reason)
            if not failure.retry:
                break
        else:
            return None
    tries = f" ({len(reasons)} attempts)" if len(reasons) > 1 else ""
    # The same reason on every try is said once; different ones are all worth reading.
    return "; ".join(dict.fromkeys(reasons)) + tries


def download_mnist(
    dest: Path,
    mirrors: Sequence[str] = DEFAULT_MIRRORS,
    digests: Mapping[str, Digests] = PUBLISHED_DIGESTS,
    *,
    files: Sequence[str] = MNIST_FILES,
    attempts: int = 3,
    backoff_s: float = 1.0,
    timeout_s: float = 30.0,
    progress: bool = True,
) -> list[Path]:
    """Download each of `files` into `dest` from the first mirror that delivers a verified copy; return the paths."""
    if not mirrors:
        raise ValueError("download_mnist needs at least one mirror URL (see DEFAULT_MIRRORS or MNIST_MIRRORS)")
    if attempts < 1:
        raise ValueError(f"attempts={attempts}: each mirror needs at least one attempt")
    unverifiable = [name for name in files if name not in digests]
    if unverifiable:
        raise ValueError(
            f"No SHA-256 digest for {', '.join(unverifiable)}: unverified data is never accepted. "
            "Add the file to the sha256sum file named by MNIST_SHA256SUMS (or to `digests`)"
        )

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in files:
        final = dest / name
        paths.append(final)
        _remove_stale_parts(final)
        if final.exists():
            if verify(final, digests[name]):
                continue
            warnings.warn(f"{final} does not match its SHA-256 digest; downloading it again", stacklevel=2)
            # Removed now, so that if every mirror fails no unverified file is left under the final name.
            final.unlink()

        failures = []
        for mirror in mirrors:
            url = _with_slash(mirror) + name
            failure = _try_mirror(
                url, final, digests[name],
                attempts=attempts, backoff_s=backoff_s, timeout_s=timeout_s, progress=progress,
            )
            if failure is None:
                break
            failures.append(f"  - {url}: {failure}")
        else:
            raise DownloadError(
                f"Could not download {name} from any of {len(mirrors)} mirror(s):\n"
                + "\n".join(failures)
                + "\nCheck the network connection, or set MNIST_MIRRORS to comma-separated base URLs of a "
                "reachable mirror and MNIST_SHA256SUMS to the sha256sum file of the files it serves."
            )
    return paths
