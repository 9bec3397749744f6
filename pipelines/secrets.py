"""Credentials in URIs: shown masked wherever we print or log a URI, and turned into a basic-auth header for the
tracking server's pre-flight check (``http://user:password@host`` is how MLflow users commonly write them)."""
from __future__ import annotations

import base64
import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"
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
