"""Moving bytes into a storage pool safely: nothing half-written ever sits under the final name.

Every writer streams into a hidden `.<name>.part-<random>` beside the destination, hashes as it goes, checks the
checksum and the size, fsyncs, and only then links the file into place. Any failure, including KeyboardInterrupt
or a cancelled task, removes the partial file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from virtfleet.errors import Conflict, InsufficientStorage, InvalidSpec, VirtfleetError
from virtfleet.hostcmd import STOPPED, abandoned
from virtfleet.private_files import PRIVATE_FILE, create_private
from virtfleet.storage import addresses
from virtfleet.storage.addresses import IPNetwork

CHUNK = 4 << 20
MAX_REDIRECTS = 5  # per download; each hop's address is checked like the first
_SHA256 = re.compile(r"[0-9a-f]{64}")

ByteProgress = Callable[[int, int], None]


class TransferError(VirtfleetError):
    """Bytes could not be moved into place (I/O, HTTP, size or checksum); nothing was left behind."""

    code = "transfer_failed"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    def details(self) -> dict[str, object]:
        return {"status": self.status} if self.status is not None else {}


_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def write_failure(error: OSError, what: str) -> VirtfleetError:
    """The error for a failed write: a full (or over-quota) file system is the pool's state, said as such (HTTP
    507); anything else is a failed transfer."""
    if error.errno in _NO_SPACE:
        return InsufficientStorage(f"{what}: {error.strerror or error}; free space in the pool and retry")
    return TransferError(f"{what}: {error.strerror or error}")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(temp: Path, final: Path) -> None:
    """Move `temp` to `final` unless `final` exists (os.rename would silently replace it)."""
    try:
        os.link(temp, final)
    except FileExistsError:
        raise Conflict(f"{final} already exists") from None
    except OSError:
        # Filesystems without hard links: a check-then-rename leaves a tiny race, better than no publish at all.
        if os.path.lexists(final):
            raise Conflict(f"{final} already exists") from None
        os.rename(temp, final)
    else:
        temp.unlink()


@contextmanager
def atomic_destination(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final` (not yet created); on success it becomes `final`, else it is removed.

    The caller creates and fills the file (exclusively, e.g. private_files.create_private or qemu-img convert).
    What is published is private (0600): a disk image holds whatever its guest wrote.
    """
    if os.path.lexists(final):
        raise Conflict(f"{final} already exists")
    temp = final.with_name(f".{final.name}.part-{secrets.token_hex(8)}")
    try:
        yield temp
        if not temp.is_file():
            raise TransferError(f"nothing was written for {final.name}")
        os.chmod(temp, PRIVATE_FILE)  # also what a caller moved in or a tool made with looser rights
        try:
            # Data reaches the disk before the name does: a crash never leaves a complete-looking but empty file.
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            _publish(temp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            raise write_failure(exc, f"cannot store {final.name}") from exc
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _normalized_sha256(expected: str | None) -> str | None:
    if expected is None:
        return None
    value = expected.strip().lower()
    if not _SHA256.fullmatch(value):
        raise InvalidSpec("sha256", f"{expected!r} is not a sha256 hex digest (64 hex digits)")
    return value


def _check_limit(size: int, max_bytes: int | None, name: str) -> None:
    if max_bytes is not None and size > max_bytes:
        raise TransferError(f"{name} is larger than the limit of {max_bytes} bytes")


def _write_chunks(
    chunks: Iterable[bytes],
    dst: Path,
    *,
    total: int | None,
    progress: ByteProgress | None,
    expected_sha256: str | None,
    max_bytes: int | None,
) -> str:
    """The one writer behind copy, download and upload: limit, hash, verify, then publish."""
    expected = _normalized_sha256(expected_sha256)
    if total is not None:
        _check_limit(total, max_bytes, dst.name)
    digest = hashlib.sha256()
    done = 0
    with atomic_destination(dst) as temp:
        try:
            with os.fdopen(create_private(temp), "wb") as out:
                for chunk in chunks:
                    if abandoned():  # a cancelled job: a thread cannot be stopped, so it stops itself
                        raise TransferError(f"{dst.name}: {STOPPED}")
                    done += len(chunk)
                    _check_limit(done, max_bytes, dst.name)
                    digest.update(chunk)
                    out.write(chunk)
                    if progress is not None:
                        progress(done, total or 0)
        except OSError as exc:
            raise write_failure(exc, f"cannot write {dst.name}") from exc
        if total is not None and done != total:
            raise TransferError(f"{dst.name}: received {done} bytes, expected {total}")
        actual = digest.hexdigest()
        if expected is not None and actual != expected:
            raise TransferError(f"{dst.name} checksum mismatch: expected sha256 {expected}, got {actual}")
    return actual


def _read_file(src: Path, chunk: int) -> Iterator[bytes]:
    try:
        with open(src, "rb") as f:
            while data := f.read(chunk):
                yield data
    except OSError as exc:
        raise TransferError(f"cannot read {src}: {exc.strerror or exc}") from exc


def copy_file(
    src: Path,
    dst: Path,
    *,
    progress: ByteProgress | None = None,
    expected_sha256: str | None = None,
    chunk: int = CHUNK,
) -> str:
    """Copy `src` to the new file `dst`; returns the sha256 hex digest of what was written."""
    try:
        total = src.stat().st_size
    except OSError as exc:
        raise TransferError(f"cannot read {src}: {exc.strerror or exc}") from exc
    return _write_chunks(
        _read_file(src, chunk), dst, total=total, progress=progress, expected_sha256=expected_sha256, max_bytes=None
    )


def check_url(url: str, allow: Sequence[IPNetwork] = ()) -> httpx.URL:
    """An http(s) URL whose host, if an address literal, is one we may fetch from (names are checked when
    resolved, at download time); InvalidSpec("url") if not."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise InvalidSpec("url", f"{url!r} is not a valid URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidSpec("url", f"{url!r} is not an http or https URL")
    given = addresses.literal(parsed.host)
    if given is not None:
        _check_address(parsed.host, given, allow)
    return parsed


def _check_address(host: str, address: addresses.IPAddress, allow: Sequence[IPNetwork]) -> None:
    why = addresses.refusal(address, allow)
    if why is not None:
        shown = f"{host} is" if addresses.literal(host) == address else f"{host} resolves to {address},"
        raise InvalidSpec("url", f"{shown} {why}; an admin can allow it with {addresses.ALLOW_VARIABLE}")


def _pinned_address(url: httpx.URL, allow: Sequence[IPNetwork]) -> addresses.IPAddress:
    """The address to connect to for `url`'s host, after checking every address the name has (a name with a public
    and a loopback address is refused: which one a client uses must not be up to the name's owner)."""
    host = url.raw_host.decode("ascii")
    try:
        found = addresses.resolve(host, url.port or (443 if url.scheme == "https" else 80))
    except (OSError, UnicodeError) as exc:
        raise TransferError(f"cannot resolve {url.host}: {getattr(exc, 'strerror', None) or exc}") from exc
    for address in found:
        _check_address(url.host, address, allow)
    return found[0]


@contextmanager
def _get_pinned(client: httpx.Client, url: httpx.URL, address: addresses.IPAddress) -> Iterator[httpx.Response]:
    """GET `url` from `address`: the request goes to that address while Host and TLS (SNI and the certificate
    check) keep the name, so no second DNS answer can send it elsewhere."""
    extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else None
    with client.stream("GET", url.copy_with(host=str(address)), headers={"Host": url.netloc.decode("ascii")},
                       extensions=extensions) as response:
        yield response


def _redirect(url: str, current: httpx.URL, location: str,
              allow: Sequence[IPNetwork]) -> tuple[httpx.URL, addresses.IPAddress]:
    """The next hop and its checked address; a refusal names the redirect, not only the original URL."""
    try:
        target = check_url(str(current.join(location)), allow)
        return target, _pinned_address(target, allow)
    except InvalidSpec as exc:
        raise InvalidSpec("url", f"{url} redirects to {location}: {exc.problem}") from None
    except httpx.InvalidURL as exc:
        raise InvalidSpec("url", f"{url} redirects to {location!r}: {exc}") from None


def download_url(
    url: str,
    dst: Path,
    *,
    progress: ByteProgress | None = None,
    expected_sha256: str | None = None,
    timeout: float = 30.0,
    max_bytes: int | None = None,
    allow: Sequence[IPNetwork] = (),
) -> str:
    """Download `url` into the new file `dst`; returns the sha256 hex digest. `timeout` bounds each network wait.

    Only public addresses, and those in `allow`, are fetched from; every redirect is checked the same way."""
    current = check_url(url, allow)
    _normalized_sha256(expected_sha256)  # fail before connecting
    # identity: the checksum and Content-Length are of the file itself, not of a compressed transfer.
    headers = {"Accept-Encoding": "identity"}
    # Our own transport: no proxy from the environment, since the address checked must be the one connected to.
    transport = httpx.HTTPTransport()
    try:
        with httpx.Client(transport=transport, follow_redirects=False, timeout=timeout, headers=headers) as client:
            address = _pinned_address(current, allow)
            for _hop in range(MAX_REDIRECTS + 1):
                with _get_pinned(client, current, address) as response:
                    if not response.is_redirect:
                        return _save_response(response, url, dst, progress, expected_sha256, max_bytes)
                    current, address = _redirect(url, current, response.headers["Location"], allow)
            raise TransferError(f"GET {url} failed: more than {MAX_REDIRECTS} redirects")
    except httpx.HTTPError as exc:
        raise TransferError(f"GET {url} failed: {str(exc) or type(exc).__name__}") from exc


def _save_response(response: httpx.Response, url: str, dst: Path, progress: ByteProgress | None,
                   expected_sha256: str | None, max_bytes: int | None) -> str:
    if response.status_code >= 400:
        raise TransferError(
            f"GET {url} failed: HTTP {response.status_code} {response.reason_phrase}", status=response.status_code
        )
    length = response.headers.get("Content-Length", "")
    encoded = response.headers.get("Content-Encoding", "identity") != "identity"
    # A server may compress anyway; then Content-Length counts compressed bytes, not the file's.
    total = int(length) if length.isdigit() and not encoded else None
    return _write_chunks(
        response.iter_bytes(CHUNK), dst, total=total, progress=progress, expected_sha256=expected_sha256,
        max_bytes=max_bytes,
    )


def write_stream(
    chunks: Iterable[bytes],
    dst: Path,
    *,
    total: int | None,
    progress: ByteProgress | None = None,
    expected_sha256: str | None = None,
    max_bytes: int | None = None,
) -> str:
    """Write an upload body into the new file `dst`; returns the sha256 hex digest. `total` is the declared size."""
    return _write_chunks(
        chunks, dst, total=total, progress=progress, expected_sha256=expected_sha256, max_bytes=max_bytes
    )
