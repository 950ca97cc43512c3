"""Signing users in with OpenID Connect (Google by default): the relying party.

Authorization code flow with PKCE (S256). The hub keeps, per login attempt, a
random ``state`` (single use, bound to the browser by a cookie), a ``nonce``
and the PKCE ``code_verifier``; the callback exchanges the code with that
verifier and accepts the id_token only if its signature checks against the
provider's published keys and its issuer, audience, expiry and nonce are the
expected ones. Users are identified by issuer + subject and carry the email
the provider verified.

A person who wants to sign in with another account than the one the provider
remembers ("Not you?" on a sign-in page) gets a login with ``prompt``
``select_account`` or ``login``, as the provider's ``prompt_values_supported``
says (without it: ``select_account`` at Google, ``login`` elsewhere), so the
provider asks rather than reusing its session.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx2
from authlib.integrations.httpx_client import OAuth2Client
from authlib.integrations.base_client.errors import OAuthError
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ._settings import GOOGLE_ISSUER
from .errors import HubError

SCOPES = "openid email profile"
LOGIN_SECONDS = 10 * 60
_LEEWAY_SECONDS = 60
_METADATA_SECONDS = 3600
#: id_token signatures the hub accepts (never "none", never HMAC with a public key)
_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


class SignInFailed(HubError, PermissionError):
    status = 400
    code = "sign_in_failed"


class ProviderUnavailable(HubError, ConnectionError):
    status = 502
    code = "identity_provider_unavailable"


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str


@dataclass(frozen=True)
class LoginAttempt:
    state: str
    nonce: str
    code_verifier: str


@dataclass(frozen=True)
class VerifiedIdentity:
    issuer: str
    subject: str
    email: str
    name: str


class OidcProvider:
    """One configured provider; its discovery document and keys are fetched lazily and cached."""

    def __init__(self, config: OidcConfig, http: httpx2.Client | None = None) -> None:
        self.config = config
        self._http = http or httpx2.Client(timeout=15.0)
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None

    # -- provider documents --------------------------------------------------

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = self._http.get(url)
        except httpx2.TransportError as e:
            raise ProviderUnavailable(f"cannot reach the identity provider at {url}: {e}") from None
        if response.status_code != 200:
            raise ProviderUnavailable(f"the identity provider answered {response.status_code} for {url}")
        data = response.json()
        if not isinstance(data, dict):
            raise ProviderUnavailable(f"the identity provider sent no JSON object at {url}")
        return data

    def metadata(self) -> dict[str, Any]:
        with self._lock:
            if self._metadata is None or time.time() - self._metadata_at > _METADATA_SECONDS:
                url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
                meta = self._get_json(url)
                if meta.get("issuer") != self.config.issuer:
                    raise ProviderUnavailable(
                        f"the discovery document at {url} names issuer {meta.get('issuer')!r}, "
                        f"not the configured {self.config.issuer!r}"
                    )
                self._metadata, self._metadata_at = meta, time.time()
            return self._metadata

    def _key_set(self, refresh: bool = False) -> KeySet:
        with self._lock:
            cached = self._keys
        if cached is not None and not refresh:
            return cached
        keys: KeySet = KeySet.import_key_set(self._get_json(self.metadata()["jwks_uri"]))  # type: ignore[arg-type]
        with self._lock:
            self._keys = keys
        return keys

    def _client(self, redirect_uri: str) -> OAuth2Client:
        methods = self.metadata().get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        auth_method = "client_secret_basic" if "client_secret_basic" in methods else "client_secret_post"
        return OAuth2Client(
            client_id=self.config.client_id, client_secret=self.config.client_secret, scope=SCOPES,
            redirect_uri=redirect_uri, code_challenge_method="S256",
            token_endpoint_auth_method=auth_method, timeout=15.0,
        )

    # -- the flow ------------------------------------------------------------

    def _choose_account_prompt(self) -> str | None:
        supported = self.metadata().get("prompt_values_supported")
        if not isinstance(supported, list):
            # Google does not list them and prefers select_account; "login" is the one providers implement.
            return "select_account" if self.config.issuer == GOOGLE_ISSUER else "login"
        for value in ("select_account", "login"):
            if value in supported:
                return value
        return None

    def begin(self, redirect_uri: str, *, choose_account: bool = False) -> tuple[str, LoginAttempt]:
        """The provider URL to send the browser to, and what to keep until the callback.

        ``choose_account``: the provider is to ask which account, not reuse the one signed in there.
        """
        attempt = LoginAttempt(
            state=secrets.token_urlsafe(24), nonce=secrets.token_urlsafe(24),
            code_verifier=secrets.token_urlsafe(48),
        )
        extra: dict[str, str] = {}
        prompt = self._choose_account_prompt() if choose_account else None
        if prompt is not None:
            extra["prompt"] = prompt
        with self._client(redirect_uri) as client:
            url, _ = client.create_authorization_url(
                self.metadata()["authorization_endpoint"], state=attempt.state,
                code_verifier=attempt.code_verifier, nonce=attempt.nonce, **extra,
            )
        return str(url), attempt

    def finish(self, code: str, attempt: LoginAttempt, redirect_uri: str) -> VerifiedIdentity:
        """Exchange ``code`` (with the PKCE verifier) and verify the id_token it brings."""
        try:
            with self._client(redirect_uri) as client:
                token = client.fetch_token(
                    self.metadata()["token_endpoint"], grant_type="authorization_code", code=code,
                    code_verifier=attempt.code_verifier,
                )
        except OAuthError as e:
            raise SignInFailed(f"the identity provider refused the sign-in code: {e.error}"
                               + (f" ({e.description})" if e.description else "")) from None
        except httpx2.TransportError as e:
            raise ProviderUnavailable(f"cannot reach the identity provider's token endpoint: {e}") from None
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise SignInFailed("the identity provider sent no id_token")
        return self.verify_id_token(id_token, attempt.nonce)

    def verify_id_token(self, id_token: str, nonce: str) -> VerifiedIdentity:
        claims = self._decode(id_token)
        registry = jwt.JWTClaimsRegistry(
            leeway=_LEEWAY_SECONDS,
            iss={"essential": True, "value": self.config.issuer},
            aud={"essential": True, "value": self.config.client_id},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            registry.validate(claims)
        except JoseError as e:
            raise SignInFailed(f"the id_token was refused: {e.error}: {e.description or ''}".rstrip(": ")) from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.config.client_id:
            raise SignInFailed("the id_token has several audiences and is not authorized for this hub")
        email = claims.get("email")
        if not isinstance(email, str) or not email:
            raise SignInFailed("the identity provider did not share an email address")
        if claims.get("email_verified") is not True:
            raise SignInFailed(f"the identity provider has not verified the email address {email}")
        return VerifiedIdentity(
            issuer=self.config.issuer, subject=str(claims["sub"]), email=email.lower(),
            name=str(claims.get("name") or ""),
        )

    def _decode(self, id_token: str) -> dict[str, Any]:
        keys = self._key_set()
        kid = _kid_of(id_token)
        if kid is not None and all(k.kid != kid for k in keys.keys):
            keys = self._key_set(refresh=True)  # the provider rotated its keys; fetch them once more
        try:
            return dict(jwt.decode(id_token, keys, algorithms=_ALGORITHMS).claims)
        except JoseError as e:
            raise SignInFailed(f"the id_token's signature does not check: {e.error}") from None
        except ValueError as e:
            raise SignInFailed(f"the id_token is malformed: {e}") from None


def _kid_of(token: str) -> str | None:
    try:
        header = json.loads(base64.urlsafe_b64decode(token.split(".", 1)[0] + "=="))
    except (ValueError, IndexError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None
