"""S3 buckets of team mode (AWS, MinIO, Ceph): is a bucket reachable and writable from here?

Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, ``~/.aws``, instance roles) or from a DVC remote's config; the endpoint of
a non-AWS store from ``--endpoint-url``, the DVC remote's ``endpointurl``,
``MLFLOW_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL(_S3)``. Nothing here prints a secret.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ddmops.errors import DdmopsError

ENDPOINT_VARS = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


class RemoteError(DdmopsError):
    """A bucket cannot be used: unreachable, missing, or refused with these credentials."""


@dataclass(frozen=True)
class S3Target:
    url: str                                # s3://bucket/prefix
    endpoint_url: str | None = None         # None: the environment's, else AWS
    profile: str | None = None
    region: str | None = None
    access_key_id: str | None = None        # from a DVC remote's (local) config only
    secret_access_key: str | None = None
    session_token: str | None = None

    @property
    def bucket(self) -> str:
        return split_s3_url(self.url)[0]

    @property
    def prefix(self) -> str:
        return split_s3_url(self.url)[1]

    @property
    def where(self) -> str:
        return f"{self.url} at {self.endpoint_url or 'AWS'}"


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


def split_s3_url(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise RemoteError(f"{url!r} is not an S3 URL (expected s3://bucket/prefix)")
    return parsed.netloc, parsed.path.strip("/")


def endpoint_from_env() -> str | None:
    return next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), None)


def target_from_url(url: str, endpoint_url: str | None = None) -> S3Target:
    split_s3_url(url)
    return S3Target(url=url, endpoint_url=endpoint_url or endpoint_from_env())


def target_from_dvc(root: Path, name: str | None = None, endpoint_url: str | None = None) -> S3Target:
    """The S3 target of DVC remote ``name`` (default: the repo's default remote), with the
    settings of `dvc remote modify [--local]`."""
    from dvc.config import Config
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        config = Config(dvc_dir=Repo.find_dvc_dir(str(root)))
    except DvcException as exc:
        raise RemoteError(f"{root}: no usable DVC repository ({exc}); pass an s3:// URL instead") from None
    name = name or config["core"].get("remote")
    if not name:
        raise RemoteError("no URL given and no default DVC remote here; pass s3://bucket/prefix "
                          "or add one with `dvc remote add -d NAME s3://bucket/prefix`")
    remote = config["remote"].get(name)
    if remote is None:
        raise RemoteError(f"no DVC remote named {name!r}; known: {', '.join(config['remote']) or 'none'}")
    if not is_s3(remote["url"]):
        raise RemoteError(f"DVC remote {name!r} is {remote['url']!r}, not an s3:// remote")
    return S3Target(url=remote["url"], endpoint_url=endpoint_url or remote.get("endpointurl") or endpoint_from_env(),
                    profile=remote.get("profile"), region=remote.get("region"),
                    access_key_id=remote.get("access_key_id"), secret_access_key=remote.get("secret_access_key"),
                    session_token=remote.get("session_token"))


def check_bucket(target: S3Target, timeout: float = 5.0) -> str:
    """Write, read back and delete a small probe object under the target's prefix; return a
    one-line summary or raise :class:`RemoteError` with a one-line reason. Each request
    gives up after ``timeout`` seconds and is not retried, so a bad endpoint fails fast."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    key = "/".join(p for p in (target.prefix, f".ddmops-check-{uuid.uuid4().hex}") if p)
    body = uuid.uuid4().bytes
    start = time.monotonic()
    try:
        session = boto3.Session(profile_name=target.profile, region_name=target.region,
                                aws_access_key_id=target.access_key_id,
                                aws_secret_access_key=target.secret_access_key,
                                aws_session_token=target.session_token)
        s3 = session.client("s3", endpoint_url=target.endpoint_url, config=Config(
            connect_timeout=timeout, read_timeout=timeout, retries={"total_max_attempts": 1, "mode": "standard"}))
        step = "write to"
        s3.put_object(Bucket=target.bucket, Key=key, Body=body)
        step = "read back from"
        if s3.get_object(Bucket=target.bucket, Key=key)["Body"].read() != body:
            raise RemoteError(f"{target.where}: the probe object read back differs from what was written")
        step = "delete from"
        s3.delete_object(Bucket=target.bucket, Key=key)
        source = session.get_credentials().method
    except ClientError as exc:
        raise RemoteError(_client_error(exc, target, step)) from None
    except (BotoCoreError, ValueError) as exc:  # ValueError: a malformed endpoint URL
        raise RemoteError(_connection_error(exc, target, timeout)) from None
    return f"{target.where}: reachable and writable ({time.monotonic() - start:.2f} s, credentials: {source})"


def _client_error(exc, target: S3Target, step: str) -> str:
    err = exc.response.get("Error", {})
    code, status = err.get("Code", ""), exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("NoSuchBucket", "404") or status == 404:
        return f"bucket {target.bucket!r} does not exist at {target.endpoint_url or 'AWS'}"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
        return f"{target.where}: the credentials were refused ({code}); check AWS_ACCESS_KEY_ID / " \
               "AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
    if code in ("AccessDenied", "Forbidden", "403") or status == 403:
        return f"{target.where}: access denied when trying to {step} the bucket; these credentials lack permission"
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "301") or status == 301:
        return f"{target.where}: the bucket is in another region; set AWS_DEFAULT_REGION (or the remote's region)"
    return f"{target.where}: cannot {step} the bucket: {code or status} {err.get('Message', '')}".rstrip()


def _connection_error(exc, target: S3Target, timeout: float) -> str:
    from botocore import exceptions as bx

    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return f"{target.where}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY " \
               "or AWS_PROFILE"
    if isinstance(exc, bx.ProfileNotFound):
        return f"AWS profile {target.profile or os.environ.get('AWS_PROFILE')!r} not found in ~/.aws/config"
    if isinstance(exc, bx.ReadTimeoutError):
        return f"{target.where}: the endpoint did not answer within {timeout:g} s"
    if isinstance(exc, bx.ConnectTimeoutError):
        return f"{target.where}: timed out connecting to the endpoint after {timeout:g} s"
    if isinstance(exc, bx.EndpointConnectionError):
        return f"{target.where}: cannot reach the endpoint (connection failed); check the endpoint URL and network"
    return f"{target.where}: {type(exc).__name__}: {exc}".splitlines()[0]
