"""kachery_hub: the self-hostable hub that kachery clients share.

Needs the ``hub`` extra (FastAPI, uvicorn, SQLAlchemy; psycopg for PostgreSQL,
boto3 for S3). Run it with ``kachery-hub serve``; embed it with
``create_app(Settings(...))``.

Command line::

    kachery-hub serve [--host 127.0.0.1] [--port 8555] [--data DIR] [--database URL] [--storage URL]
                      [--admin-email admin@localhost] [--log-level warning]
                      [--oidc-issuer URL] [--oidc-client-id ID] [--oidc-client-secret S] [--admin-emails A,B]
        prints a sign-in URL with an admin token (reused across restarts), as Jupyter does;
        with an OpenID Connect client ID (Google by default) browsers sign in there
    kachery-hub token create --data DIR --user EMAIL [--admin] [--label TEXT] [--database URL]
        prints a new sign-in token for EMAIL (the user is created if new)

Backends, chosen by URL only (or ``KACHERY_HUB_DATA``, ``KACHERY_HUB_DATABASE_URL``,
``KACHERY_HUB_STORAGE_URL``; ``KACHERY_HUB_MAX_CLOCK_SKEW`` sets the accepted clock
skew in seconds, default 300; ``KACHERY_HUB_OIDC_ISSUER``, ``KACHERY_HUB_OIDC_CLIENT_ID``,
``KACHERY_HUB_OIDC_CLIENT_SECRET`` and ``KACHERY_HUB_ADMIN_EMAILS`` configure browser sign-in):

- metadata: ``sqlite:///<data>/hub.sqlite`` (default) or ``postgresql+psycopg://user@host/db``;
  the schema is upgraded in place by numbered migrations on start;
- bytes: ``file://<data>/blobs`` (default; the hub streams and verifies them) or
  ``s3://bucket/prefix?endpoint_url=...`` (clients use presigned URLs; the store
  checks the sha1; AWS credentials from the usual environment variables).

HTTP API (OpenAPI document at ``/openapi.json``, browsable at ``/docs``).
Requests are signed by the client key (``kachery_core._signing``); unsigned
requests may only read public projects. Every error is
``{"error": {"code": ..., "message": ...}}`` with a 4xx status for bad requests.

==============  ================================================  ===============================================
method          path                                              what
==============  ================================================  ===============================================
GET             /api/health                                       up? and ``direct_transfers``
POST            /api/clients                                      bind the signing key to a token's user
GET,DELETE      /api/me                                           the client, its user, default project; sign out
PUT             /api/me/default-project                           set the default project
POST            /api/tokens                                       new sign-in token (hub admins)
POST            /api/sign-in-requests                             a one-time browser sign-in link
GET             /api/sign-in-requests/{rid}                       pending / confirmed / refused / expired
GET,POST        /api/projects                                     your projects; create one
GET,PATCH       /api/projects/{project_id}                        one project; rename, public-read
GET             /api/projects/{project_id}/members                members and roles
PUT,DELETE      /api/projects/{project_id}/members/{email}        add, change (read/write/admin), remove
GET             /api/projects/{project_id}/files                  files of a project (paged)
GET,PUT,DELETE  /api/projects/{project_id}/files/{sha1}           record; upload through the hub; remove
POST            /api/projects/{project_id}/files/{sha1}/upload    where to upload (S3: presigned, an upload id)
POST            /api/projects/{project_id}/files/{sha1}/complete  record a direct upload the store verified
GET             /api/files/{sha1}                                 download from any readable project (ranges)
GET             /api/files/{sha1}/info                            size and label
GET             /api/projects/{project_id}/mutables               keys by ``prefix`` (paged)
GET,PUT,DELETE  /api/projects/{project_id}/mutables/{key}         get, set (at most 1 MiB), delete
==============  ================================================  ===============================================

Browser pages: ``/`` (``/?token=...`` signs the browser in), ``/sign-in/{rid}`` (confirm a
notebook's sign-in; CSRF-protected form), ``/auth/login`` and ``/auth/callback`` (OpenID Connect
authorization code with PKCE; state, nonce and the id_token checked).
"""

from __future__ import annotations

from ._app import create_app
from ._bytestore import ByteStore, LocalFolderStore, open_byte_store
from ._settings import Settings
from .errors import HubError

__all__ = [
    "ByteStore",
    "HubError",
    "LocalFolderStore",
    "Settings",
    "create_app",
    "open_byte_store",
]
