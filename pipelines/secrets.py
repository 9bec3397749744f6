"""Credentials in URIs: shown masked wherever we print or log a URI, and turned into a basic-auth header for the
tracking server's pre-flight check (``http://user:password@host`` is how MLflow users commonly write them).
:func:`guard_secrets` keeps them out of what libraries print too (MLflow's run links, any log record, a traceback)."""
from __future__ import annotations

import base64
import logging
import os
import re
import sys
import traceback
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"
#: Where a URL's credentials sit: ``scheme://user:password@``.
_URL_CREDENTIALS = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*):[^\s/@]+@")
#: Variables whose values are secrets MLflow, boto3 and Ray read from the environment.
SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
              "AWS_SECURITY_TOKEN", "DATABRICKS_TOKEN", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_CONNECTION_STRING")
#: MLflow prints "View run NAME at: <tracking URI>/#/..." to stdout as a run ends (the URI's password included)
#: unless this is set; read by MLflow at each call, in the driver and in every Ray worker that inherits it.
MLFLOW_QUIET_URL_ENV = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
#: Query parameters that carry a secret in the URLs users pass us (object-store presigned URLs, tokens).
_SECRET_QUERY = re.compile(r"(pass|secret|token|key|signature|sig|credential|auth)", re.I)


def _host_port(parts) -> str:
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # a malformed port: keep the text after the credentials as it is
        return parts.netloc.rsplit("@", 1)[-1]
    return f"{host}:{port}" if port is not None else host


def mask_uri(uri: str | None) -> str:
    """``uri`` with its password (and secret-looking query values) replaced by ``***``; anything else unchanged.
    Never raises: a string that is no URL comes back as it was."""
    if not uri:
        return "" if uri is None else uri
    try:
        parts = urlsplit(str(uri))
    except ValueError:
        return str(uri)
    netloc = parts.netloc
    if "@" in netloc:
        user = parts.username or ""
        userinfo = f"{user}:{MASK}" if parts.password is not None else (user or MASK)
        netloc = f"{userinfo}@{_host_port(parts)}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_QUERY.search(k) for k, _ in pairs):
            query = urlencode([(k, MASK if _SECRET_QUERY.search(k) else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return str(uri)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def split_basic_auth(url: str) -> tuple[str, dict[str, str]]:
    """(``url`` without its credentials, the ``Authorization`` header they make; empty without credentials)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, {}
    token = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
    bare = urlunsplit((parts.scheme, _host_port(parts), parts.path, parts.query, parts.fragment))
    return bare, {"Authorization": "Basic " + base64.b64encode(token).decode("ascii")}


def mask_text(text: str) -> str:
    """``text`` with every URL password and every value of a :data:`SECRET_ENV` variable (6+ characters, so that no
    common word is taken for one) replaced by ``***``."""
    out = _URL_CREDENTIALS.sub(lambda m: f"{m['head']}:{MASK}@", text) if "@" in text else text
    for name in SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= 6 and value in out:
            out = out.replace(value, MASK)
    return out


def guard_secrets() -> None:
    """For a command's whole process: no run links from MLflow, and a second guard behind every masked line of ours:
    each log record (message and traceback) and an uncaught exception's traceback masked by :func:`mask_text`."""
    os.environ[MLFLOW_QUIET_URL_ENV] = "true"
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "_dept_masks", False):
        return

    def masked_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001  (a record that cannot format is logging's to report, as it would be)
            return record
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = mask_text("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record

    masked_record._dept_masks = True
    logging.setLogRecordFactory(masked_record)
    hook = sys.excepthook

    def masked_excepthook(kind, value, tb) -> None:
        if hook is not sys.__excepthook__:
            return hook(kind, value, tb)
        sys.stderr.write(mask_text("".join(traceback.format_exception(kind, value, tb))))

    sys.excepthook = masked_excepthook
