"""Checks of the URLs and addresses a user types (tracking URI, Ray address, data URL), before any work starts."""

from __future__ import annotations

import os
import re

from mimlab.errors import UserError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$", re.S)
_TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "file")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def check_not_a_broken_url(text: str, what: str) -> None:
    """Refuse ``s3:/bucket`` or ``gs:bucket`` (a scheme without ``//``) given as a path; Windows drives pass."""
    m = _SCHEME.match(text)
    if m and len(m.group(1)) > 1 and not m.group(2).startswith("//"):
        raise UserError(f"{what} '{text}' is malformed: expected {m.group(1)}://…, a path, or file://…")


def check_tracking_uri(uri: str | None, env: bool = True) -> None:
    """An MLflow tracking URI: ``sqlite:///path``, ``http(s)://host[:port]``, a database URI ``scheme://…`` or
    ``databricks``. ``None`` checks ``$MLFLOW_TRACKING_URI`` instead (when set and ``env``), naming the variable."""
    what = "tracking URI"
    if uri is None:
        uri = os.environ.get("MLFLOW_TRACKING_URI") if env else None
        what = "MLFLOW_TRACKING_URI (environment variable)"
        if not uri:
            return
    if uri == "databricks":
        return
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", uri, re.S)
    expected = ("expected sqlite:///path/mlflow.db, http(s)://host:port, or a database URI such as "
                "postgresql://user@host/db")
    if not m:
        raise UserError(f"{what} '{uri}' is malformed; {expected}")
    scheme, rest = m.group(1).lower(), m.group(2)
    base = scheme.split("+", 1)[0]
    if base not in _TRACKING_SCHEMES:
        raise UserError(f"{what} '{uri}' has an unknown scheme '{scheme}://'; {expected}")
    if base == "sqlite" and not rest.startswith("/"):
        raise UserError(f"{what} '{uri}' is malformed: SQLite needs three slashes (sqlite:///path)")
    if base in ("http", "https", "postgresql", "mysql", "mssql"):
        host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
        if not host or not _valid_host_port(host, port_required=False):
            raise UserError(f"{what} '{uri}' names no valid host[:port]; {expected}")


def check_ray_address(address: str | None) -> None:
    """A Ray address: ``auto``, ``local``, ``host:port``, or ``ray://host:port``. ``None`` checks ``$RAY_ADDRESS``
    instead (when set), naming the variable."""
    what = "Ray address"
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or None
        what = "RAY_ADDRESS (environment variable)"
    if address is None or address in ("auto", "local"):
        return
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    if "://" in rest or not _HOST_PORT.match(rest) or not 0 < int(_HOST_PORT.match(rest).group(2)) < 65536:
        raise UserError(f"{what} '{address}' is malformed; expected host:port, ray://host:port, auto or local")


def _valid_host_port(text: str, port_required: bool) -> bool:
    if _HOST_PORT.match(text):
        return 0 < int(_HOST_PORT.match(text).group(2)) < 65536
    return not port_required and re.match(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)$", text) is not None
