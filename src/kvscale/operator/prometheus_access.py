"""Which Prometheus a spec may send the operator to, and which Secrets may hold its token (pure).

An LLMDeployment names a URL and a Secret; the operator, not the user, makes the request. Without
bounds, anyone who may create an LLMDeployment could have the operator read any Secret it can read
and send it to any host (a confused deputy). So a URL must match one the operator's settings allow,
and a Secret must opt in with a label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

#: the label a Secret carries to let kvscale send its token to an allowed Prometheus
SECRET_OPT_IN = "kvscale.io/prometheus-token"


def url_error(url: str, allowed: Sequence[str]) -> str | None:
    """Why ``url`` may not be queried, or None.

    An allowed entry is ``scheme://host[:port][/path]``: the same scheme and host, the same port (any
    when the entry has none) and a path under the entry's.
    """
    field = "spec.autoscaling.metrics.prometheusURL"
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        return f"{field} {url!r}: not an http(s) URL"
    if u.username or u.password:
        return f"{field}: credentials in the URL are not accepted (use bearerTokenSecret)"
    for entry in allowed:
        a = urlsplit(entry.strip())
        prefix = a.path.rstrip("/")
        if (a.scheme == u.scheme and a.hostname == u.hostname and (a.port is None or a.port == u.port)
                and (u.path.rstrip("/") == prefix or u.path.startswith(prefix + "/"))):
            return None
    listed = ", ".join(allowed) if allowed else "none (operator setting KVSCALE_PROMETHEUS_URLS)"
    return f"{field} {u.scheme}://{u.netloc}{u.path}: not among the Prometheus URLs the operator allows: {listed}"


def secret_error(name: str, labels: Mapping[str, str] | None) -> str | None:
    if (labels or {}).get(SECRET_OPT_IN) == "true":
        return None
    return (f"spec.autoscaling.metrics.bearerTokenSecret {name}: the Secret lacks the label {SECRET_OPT_IN}=true "
            "that allows kvscale to send its token")
