"""Google-style sign-in (a real OpenID provider) on two hub replicas behind HAProxy: the login
begun on one replica is finished on the other, and the browser's session holds on both.

The login's state (PKCE verifier, nonce, where to go next) is kept in the shared database, not
in a replica's memory; these tests make each step land on the other replica than the step
before, as round-robin balancing does to a browser.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest

pytest.importorskip("fastapi")

import httpx2  # noqa: E402

import kachery_core as kc  # noqa: E402
from e2e.servers import OIDC_DIR, OidcProvider, provider_form, start_oidc_provider  # noqa: E402
from hub_fixtures import postgres_server, s3_server  # noqa: E402,F401
from hub_process import forget_hubs, free_port  # noqa: E402
from lb_fixtures import Cluster, run_cluster  # noqa: E402

pytestmark = pytest.mark.slow

ALICE = "alice@example.org"


@dataclass
class Site:
    cluster: Cluster
    provider: OidcProvider


@pytest.fixture(scope="module")
def site(postgres_server: str, s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:  # noqa: F811
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.skip(f"the OpenID provider is not installed (node and `npm ci` in {OIDC_DIR})")
    root = tmp_path_factory.mktemp("replicas-oidc")
    port = free_port()
    with start_oidc_provider(root / "oidc", [f"http://127.0.0.1:{port}/auth/callback"]) as provider:
        env = {"KACHERY_HUB_OIDC_ISSUER": provider.issuer, "KACHERY_HUB_OIDC_CLIENT_ID": provider.client.client_id,
               "KACHERY_HUB_OIDC_CLIENT_SECRET": provider.client.client_secret}
        with run_cluster(postgres_server, s3_server, root, port=port, env=env) as cluster:
            yield Site(cluster, provider)
    forget_hubs()


def _next_lands_elsewhere(c: Cluster, than: str) -> None:
    """Round robin (over every client of the balancer): once a request landed on ``than``, the next
    one lands on the other replica."""
    for _ in range(20):
        if c.replica_of(httpx2.get(c.url + "/api/health")) == than:
            return
    raise AssertionError(f"no request landed on {than}")


def _through_the_provider(browser: httpx2.Client, authorize: str, provider: OidcProvider, email: str) -> str:
    """Log in and consent at the provider's forms, as a person would; the URL it sends the browser back to."""
    response = browser.get(authorize)
    for _ in range(16):
        if response.is_redirect:
            target = urljoin(str(response.url), response.headers["location"])
            if not target.startswith(provider.issuer + "/"):
                return target
            response = browser.get(target)
            continue
        action, fields = provider_form(response.text, email)
        response = browser.post(urljoin(str(response.url), action), data=fields, headers={"Origin": provider.issuer})
    raise AssertionError(f"still at the provider: {response.url}\n{response.text[:2000]}")


def _csrf(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m, page[:2000]
    return html.unescape(m.group(1))


def test_a_login_begun_on_one_replica_is_finished_on_the_other(site: Site, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    c = site.cluster
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "notebook"))
    kc.use_hub(c.url)
    request = kc.start_sign_in(label="notebook on two replicas")
    rid = str(request["id"])
    with httpx2.Client(base_url=c.url, headers={"Origin": c.url}, timeout=30) as browser:
        to_login = browser.get(f"/sign-in/{rid}")
        assert to_login.status_code == 303 and to_login.headers["location"] == f"/auth/login?next=/sign-in/{rid}"
        begun = browser.get(to_login.headers["location"])
        assert begun.status_code == 303, begun.text
        first = c.replica_of(begun)
        authorize = begun.headers["location"]
        assert parse_qs(urlsplit(authorize).query)["redirect_uri"] == [c.url + "/auth/callback"]

        callback = _through_the_provider(browser, authorize, site.provider, ALICE)
        assert callback.startswith(c.url + "/auth/callback?"), callback
        _next_lands_elsewhere(c, first)
        back = browser.get(callback)
        assert back.status_code == 303 and back.headers["location"] == f"/sign-in/{rid}", back.text
        second = c.replica_of(back)
        assert {first, second} == {"r1", "r2"}  # begun on one, finished on the other

        _next_lands_elsewhere(c, second)
        page = browser.get(f"/sign-in/{rid}")  # the browser's session, made on the second, holds on the first
        assert c.replica_of(page) == first
        assert page.status_code == 200 and f"asks to act as <b>{ALICE}</b>" in page.text, page.text
        _next_lands_elsewhere(c, first)
        done = browser.post(f"/sign-in/{rid}", data={"action": "confirm", "csrf": _csrf(page.text)})
        assert c.replica_of(done) == second
        assert done.status_code == 200 and "confirmed" in done.text, done.text
    assert kc.get_sign_in_status(rid) == "confirmed"
    assert kc.get_client_info()["user"]["email"] == ALICE


def test_a_callback_replayed_at_the_other_replica_is_refused(site: Site) -> None:
    """The login's state is used up when the first replica finishes it: the other one refuses it too."""
    c = site.cluster
    with httpx2.Client(base_url=c.url, headers={"Origin": c.url}, timeout=30) as browser:
        begun = browser.get("/auth/login?next=/")
        assert begun.status_code == 303, begun.text
        callback = _through_the_provider(browser, begun.headers["location"], site.provider, ALICE)
        first = browser.get(callback)
        assert first.status_code == 303 and first.headers["location"] == "/", first.text
        _next_lands_elsewhere(c, c.replica_of(first))
        again = browser.get(callback)
        assert c.replica_of(again) != c.replica_of(first)
        assert again.status_code >= 400 and ALICE not in again.text, again.text
