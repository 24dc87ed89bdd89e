"""Source trust (DanQing): domain allow and deny lists for URL-based sources.

The domain is the host of ``origin_uri`` when it is an http(s) URL; samples from local files,
tar members or Hub datasets have no domain and are not judged. A listed domain covers its
subdomains (``example.com`` matches ``img.example.com``, not ``badexample.com``). Deny wins.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fineharbor.core.cleaning.params import CleanParams
from fineharbor.core.cleaning.reasons import DOMAIN_DENIED, DOMAIN_NOT_ALLOWED, Reject


def url_domain(uri: str | None) -> str | None:
    """Lower-cased host of an http(s) URL, or None."""
    if not uri or not isinstance(uri, str):
        return None
    head = uri[:8].lower()
    if not (head.startswith("http://") or head.startswith("https://")):
        return None
    try:
        host = urlsplit(uri.strip()).hostname
    except ValueError:
        return None
    return host.rstrip(".").lower() if host else None


def domain_matches(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


def rule_domain(origin_uri: str | None, params: CleanParams) -> Reject | None:
    if not params.check_domain or not (params.domain_allow or params.domain_deny):
        return None
    host = url_domain(origin_uri)
    if host is None:
        return None
    for domain in params.domain_deny:
        if domain_matches(host, domain):
            return Reject(DOMAIN_DENIED, f"domain {host} matches deny rule {domain}")
    if params.domain_allow and not any(domain_matches(host, d) for d in params.domain_allow):
        return Reject(DOMAIN_NOT_ALLOWED, f"domain {host} not in allowlist")
    return None
