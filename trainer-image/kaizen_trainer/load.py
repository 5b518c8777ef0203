"""Stage 1, load: read every input of the job (replay, holdout, regression suite, safety probes, feedback export) as
JSONL rows, hashing the bytes for the dataset manifest and refusing a file whose sha256 differs from the one the job
expects.

Inputs are local paths (a mounted volume; the operator mounts ``pvc://`` URIs and rewrites them to paths),
``file://``, ``http(s)://`` (the collector's export, with a bearer token) or ``s3://`` through fsspec, which the
trainer image installs only when it is built with ``s3fs``.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from pydantic import ValidationError

from kaizen.api.retrainjob import DataSource
from kaizen.api.trainer import Example, FeedbackExport, TrainerConfig
from kaizen_trainer.curate import Role, Source
from kaizen_trainer.errors import TrainerError, invalid_config, invalid_data

HTTP_TIMEOUT_SECONDS = 60


def local_path(uri: str) -> Path | None:
    """The filesystem path of a local URI, or None for a remote one."""
    if uri.startswith("file://"):
        return Path(urllib.parse.urlparse(uri).path)
    if uri.startswith("/"):
        return Path(uri)
    return None


def read_bytes(uri: str, token: str | None = None) -> bytes:
    """The bytes at ``uri``; a failure says which URI and why."""
    path = local_path(uri)
    if path is not None:
        try:
            return path.read_bytes()
        except OSError as error:
            raise invalid_data(f"cannot read {uri}: {error.strerror or error}") from None
    if uri.startswith(("http://", "https://")):
        request = urllib.request.Request(uri, headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            message = f"GET {uri} answered {error.code} {error.reason}"
            if error.code in (401, 403, 404):  # retrying will not fix a wrong URL or token
                raise invalid_config(f"{message}; check the URL and the token") from None
            raise TrainerError("Error", message) from None
        except (urllib.error.URLError, TimeoutError) as error:
            raise TrainerError("Error", f"cannot reach {uri}: {error}") from None
    if uri.startswith("s3://"):
        return _fsspec_open(uri).read()
    if uri.startswith("pvc://"):
        raise invalid_config(f"{uri}: pvc:// URIs are mounted by the operator; run the trainer through a RetrainJob "
                             "or pass the mounted path")
    raise invalid_config(f"{uri}: unsupported URI scheme; use a path, file://, http(s):// or s3://")


def require_fsspec(uri: str):
    """The fsspec module, or a clear InvalidConfig when the image was built without it."""
    try:
        import fsspec
        if uri.startswith("s3://"):
            import s3fs  # noqa: F401 -- fsspec's s3 backend, imported here so its absence is a config error
    except ImportError:
        raise invalid_config(f"{uri}: s3:// needs fsspec and s3fs, which this trainer image lacks; build the image "
                             "with them (pip install fsspec s3fs) or use a mounted volume") from None
    return fsspec


def _fsspec_open(uri: str):
    fsspec = require_fsspec(uri)
    try:
        return fsspec.open(uri, "rb").open()
    except (OSError, ImportError, ValueError) as error:
        raise TrainerError("Error", f"cannot read {uri}: {error}") from None


def parse_jsonl(uri: str, data: bytes) -> tuple[list[Example], dict | None]:
    """Rows of a JSONL file, and the collector export's closing manifest line if there is one; bad rows are reported
    by line number, the first few of them."""
    rows, problems, manifest = [], [], None
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if isinstance(raw, dict) and raw.get("kind") == "manifest":
                manifest = raw
                continue
            rows.append(Example.model_validate(raw))
        except json.JSONDecodeError as error:
            problems.append(f"line {number}: not JSON ({error.msg})")
        except ValidationError as error:
            fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in error.errors())
            problems.append(f"line {number}: {fields}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise invalid_data(f"{uri} has {len(problems)} bad row(s): {' | '.join(problems[:3])}{more}")
    return rows, manifest


def load_source(source: DataSource, role: Role, token: str | None = None) -> Source:
    data = read_bytes(source.uri, token)
    digest = hashlib.sha256(data).hexdigest()
    if source.sha256 and source.sha256 != digest:
        raise invalid_data(f"{source.uri} has sha256 {digest}, but the job expects {source.sha256}: the data changed "
                           "since the job was made; update data.*.sha256 or restore the file")
    rows, manifest = parse_jsonl(source.uri, data)
    if role == "feedback" and source.uri.startswith(("http://", "https://")) and manifest is None:
        raise TrainerError("Error", f"the feedback export {source.uri} ended without its manifest line: the stream "
                           "was cut short")
    if manifest is not None:
        # The collector exports consented items only, and says so by the manifest; an explicit false still counts.
        rows = [r if r.consent is not None else r.model_copy(update={"consent": True}) for r in rows]
    return Source(uri=source.uri, role=role, sha256=digest, rows=tuple(rows), export_manifest=manifest)


def feedback_source(feedback: FeedbackExport) -> DataSource:
    uri = feedback.url
    if feedback.since and uri.startswith(("http://", "https://")):
        uri += ("&" if "?" in uri else "?") + urllib.parse.urlencode({"since": feedback.since})
    return DataSource(uri=uri)


def load(config: TrainerConfig) -> list[Source]:
    """Every input of the job, in the order curation reads them (feedback first, so corrections win)."""
    sources = []
    if config.feedback is not None and config.data.use_feedback:
        token = None
        if config.feedback.token_file:
            try:
                token = Path(config.feedback.token_file).read_text().strip()
            except OSError as error:
                raise invalid_config(f"feedback.tokenFile {config.feedback.token_file}: {error.strerror}") from None
        sources.append(load_source(feedback_source(config.feedback), "feedback", token))
    sources += [load_source(s, "replay") for s in config.data.replay]
    if config.data.holdout is not None:
        sources.append(load_source(config.data.holdout, "holdout"))
    if config.data.regression is not None:
        sources.append(load_source(config.data.regression, "regression"))
    if config.data.safety is not None:
        sources.append(load_source(config.data.safety, "safety"))
    return sources
