"""A lease on a stage output kept on object storage, for machines that share no disk.

In: an `OutputStore` (pipeline/store.py) and one of its outputs. Out: `StoreLease`, a place that
`pipeline.leases.lease` holds (`store_lease(...)` gives it, or None where the store cannot keep
one), so that two machines that start one output at once do not both compute it and push their
files over each other: the second waits, then pulls what the first pushed.

Object stores have no exclusive create by link or rename; S3 has conditional writes. The lease is
the object `<workdir URL>/<stage>/.<fingerprint>.lease`:

- taken with a PUT `If-None-Match: *` (made only where no lease is);
- its owner (`pipeline.leases.lease_owner`) is its body and its metadata, so one HEAD gives the
  owner, the version (ETag) and the age together;
- its heartbeat is a PUT `If-Match: <our ETag>`, which also tells its owner when it lost it;
- its age is the store's `Date` minus its `Last-Modified`: both the store's clock, so machines
  whose clocks differ agree on it;
- a stale lease (owner gone: the rules of pipeline/leases.py) is taken over by a PUT
  `If-Match: <the ETag read>`: of two machines that both found it stale, exactly one wins;
- released by a DELETE `If-Match: <our ETag>` after a HEAD that finds it still ours.

S3 (AWS since 2024, and the S3-compatible servers that implement conditional writes, moto's
among them) only: for other protocols `store_lease` returns None and the caller says so. A
store that answers the first conditional write with an error other than "precondition failed"
(one that does not implement them) raises `LeaseUnsupported`, which the caller reports and
runs on without a store lease, as before leases were kept there.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from pipeline.outputs import StageOutput

if TYPE_CHECKING:
    from pipeline.store import OutputStore

PRECONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


class LeaseUnsupported(RuntimeError):
    """The store refused a conditional write for another reason than its condition."""


def _precondition_failed(exc: BaseException) -> bool:
    """True for a refused conditional write (s3fs turns it into an OSError of some kind)."""
    cause = exc.__cause__ or exc.__context__
    code = str(getattr(cause, "response", {}).get("Error", {}).get("Code", ""))
    return code in PRECONDITION_FAILED or "pre-conditions you specified did not hold" in str(exc)


class StoreLease:
    """The lease object of one output on an S3 store (see the module's docstring)."""

    def __init__(self, fs: Any, bucket: str, key: str, url: str):
        self.fs, self.bucket, self.key = fs, bucket, key
        self.name = url
        self.etag: str | None = None  # of the lease we hold
        self._read_etag: str | None = None  # of the lease read last

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)

    def _put(self, text: str, **condition: str) -> bool:
        try:
            body = text.encode("utf-8")
            reply = self._call("put_object", Body=body, Metadata={"owner": text}, **condition)
        except OSError as exc:
            if _precondition_failed(exc):
                return False
            raise
        self.etag = reply["ETag"]
        return True

    def create(self, text: str) -> bool:
        try:
            return self._put(text, IfNoneMatch="*")
        except (FileNotFoundError, PermissionError):
            raise  # no bucket, no rights: the store's own error says it
        except OSError as exc:
            if getattr(exc.__cause__ or exc.__context__, "response", None) is None:
                raise  # not the store's answer (the network, say): not a missing feature
            raise LeaseUnsupported(f"{self.name}: a conditional write was refused: {exc}") from exc

    def _head(self) -> dict[str, Any] | None:
        self.fs.invalidate_cache()
        try:
            return self._call("head_object")
        except FileNotFoundError:
            return None

    def read(self) -> tuple[str, float] | None:
        head = self._head()
        if head is None:
            return None
        date = head["ResponseMetadata"]["HTTPHeaders"].get("date")
        now = parsedate_to_datetime(date) if date else None
        age = (now - head["LastModified"]).total_seconds() if now else 0.0
        self._read_etag = head["ETag"]
        return head.get("Metadata", {}).get("owner", ""), max(age, 0.0)

    def take_over(self, held: str, text: str) -> bool:
        # The version read last: a lease changed since (beaten, taken) is not replaced.
        return self._put(text, IfMatch=self._read_etag)

    def beat(self, text: str) -> bool:
        return self.etag is not None and self._put(text, IfMatch=self.etag)

    def release(self, text: str) -> bool:
        head = self._head()
        if head is None or head["ETag"] != self.etag:
            return False  # taken over meanwhile: not ours to remove
        try:
            self._call("delete_object", IfMatch=self.etag)
        except OSError as exc:
            if _precondition_failed(exc):
                return False
            raise
        return True


def store_lease(store: OutputStore, output: StageOutput) -> StoreLease | None:
    """The lease of `output` on `store`, or None when its protocol has no
    conditional writes here (anything but s3://)."""
    if store.url.split("://", 1)[0] not in ("s3", "s3a"):
        return None
    bucket, _, prefix = store.root.partition("/")
    key = "/".join(part for part in (prefix, output.stage, f".{output.fingerprint}.lease") if part)
    url = f"{store.url}/{output.stage}/.{output.fingerprint}.lease"
    return StoreLease(store.fs, bucket, key, url)
