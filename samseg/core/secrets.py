"""Credential scrubbing: no secret reaches MLflow, a log line, a page or an error message.

Pure string functions (re, os.environ only) so every layer can use them.
"""

from __future__ import annotations

import os
import re

# Environment variables whose VALUES must never reach MLflow.
SECRET_ENV_VARS: tuple[str, ...] = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "PREFECT_API_KEY",
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_PASSWORD",
    "LABEL_STUDIO_API_KEY",
    "SAMSEG_UI_TOKEN",
)
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@\s?#]+@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&](?:x-amz-[a-z\-]+|signature|sig|token|access_token|awsaccesskeyid|"
    r"password|passwd|secret|api_key|apikey|key|x-goog-signature|x-goog-credential)=)[^&#\s]*",
    re.IGNORECASE,
)


# Signed-request pieces botocore logs at DEBUG (headers, canonical requests, presigned URLs).
_AWS_AUTH = re.compile(
    r"(?P<key>X-Amz-Security-Token['\"]?\s*[:=]\s*b?['\"]?|X-Amz-Credential=|X-Amz-Signature=|Credential=|Signature=)"
    r"[^\s,'\"&;]+",
    re.IGNORECASE,
)


def scrub_secrets(value: str) -> str:
    """`value` with credentials removed: URI user:password@, signed-URL query values, and
    the values of secret environment variables (AWS_SECRET_ACCESS_KEY, …) → ``***``."""
    text = _USERINFO.sub(lambda m: m.group("scheme") + "***@", str(value))
    text = _QUERY_SECRET.sub(lambda m: m.group("key") + "***", text)
    text = _AWS_AUTH.sub(lambda m: m.group("key") + "***", text)
    for name in SECRET_ENV_VARS:
        secret = os.environ.get(name, "")
        if len(secret) >= 4 and secret in text:  # tiny values would redact innocent text
            text = text.replace(secret, "***")
    return text
