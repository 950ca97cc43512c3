"""kachery_hub: the self-hostable hub that kachery clients share.

Needs the ``hub`` extra (FastAPI, uvicorn, SQLAlchemy; psycopg for PostgreSQL,
boto3 for S3). Run it with ``kachery-hub serve``; embed it with
``create_app(Settings(...))``.

Command line::

    kachery-hub serve [--host 127.0.0.1] [--port 8555] [--data DIR] [--database URL] [--storage URL]
                      [--admin-email admin@localhost] [--log-level warning]
                      [--oidc-issuer URL] [--oidc-client-id ID] [--oidc-client-secret S] [--admin-emails A,B]
                      [--public-url URL] [--trusted-proxies IPS] [--log-format text|json] [--workers N]
        prints a sign-in URL with an admin token (reused across restarts), as Jupyter does;
        with an OpenID Connect client ID (Google by default) browsers sign in there.
        --public-url (repeatable, or comma-separated; ``KACHERY_HUB_PUBLIC_URL``) names the
        URLs clients reach the hub at, e.g. https://lab.example.org behind a reverse proxy;
        signed requests for any other host are refused (``wrong_hub``). Default: where it
        listens (http://127.0.0.1:PORT and http://localhost:PORT; on 0.0.0.0 also this
        machine's host name). --trusted-proxies (comma-separated addresses or networks;
        ``KACHERY_HUB_TRUSTED_PROXIES``): reverse proxies whose X-Forwarded-For/-Proto
        are believed; default none, so a client's address is always its TCP peer's.
        --log-format json (``KACHERY_HUB_LOG_FORMAT``): one JSON object a line on stderr (time,
        level, logger, message, request_id; access lines add method, route, status,
        duration_ms). --workers N: N processes on the one socket (PostgreSQL only; refused on
        the embedded SQLite database); metrics are summed over them
    kachery-hub token create --data DIR --user EMAIL [--admin] [--label TEXT] [--expires-in 7d] [--database URL]
        prints a new sign-in token for EMAIL (the user is created if new); it expires after
        --expires-in (3600, 30m, 12h, 7d, 2w or never; default 7d). The token ``serve``
        prints never expires; once revoked, the next ``serve`` prints a new one
    kachery-hub token list [--user EMAIL]  /  kachery-hub token revoke ID [--sign-out-clients]
        tokens by ID (never the secret) with user, status, dates; revoking ends the browser
        sessions the token opened (and, with --sign-out-clients, the clients it signed in)
    kachery-hub client list [--user EMAIL]  /  kachery-hub client revoke CLIENT_ID
        signed-in clients (keys) with user and the token that signed them in; sign one out
    kachery-hub gc [--data DIR] [--database URL] [--storage URL] [--grace 1h] [--dry-run]
        removes file bytes no project references any more, except those recorded or written
        within the grace period or wanted by an upload in progress (safe while hubs run; see
        ``_gc``); prints one line: counts and MiB. ``serve`` runs it every
        ``KACHERY_HUB_GC_INTERVAL`` seconds when that is set (default 0: off). No HTTP endpoint
    kachery-hub migrate [--data DIR] [--database URL] [--check]
        upgrades the database's schema now (the hub does on start) and prints the database's
        Alembic revision and this release's newest; --check changes nothing and exits 1 if behind

Backends, chosen by URL only (or ``KACHERY_HUB_DATA``, ``KACHERY_HUB_DATABASE_URL``,
``KACHERY_HUB_STORAGE_URL``; ``KACHERY_HUB_MAX_CLOCK_SKEW`` sets the accepted clock
skew in seconds, default 300; ``KACHERY_HUB_OIDC_ISSUER``, ``KACHERY_HUB_OIDC_CLIENT_ID``,
``KACHERY_HUB_OIDC_CLIENT_SECRET`` and ``KACHERY_HUB_ADMIN_EMAILS`` configure browser sign-in):

- metadata: ``sqlite:///<data>/hub.sqlite`` (default) or ``postgresql+psycopg://user@host/db``;
  the schema is upgraded in place on start by Alembic revisions (``kachery_hub/migrations``;
  a database from a release before Alembic is adopted), one at a time across replicas;
- bytes: ``file://<data>/blobs`` (default; the hub streams and verifies them) or
  ``s3://bucket/prefix?endpoint_url=...`` (clients use presigned URLs; the store
  checks the sha1; AWS credentials from the usual environment variables); files over
  ``KACHERY_HUB_S3_MULTIPART_THRESHOLD`` go as resumable multipart uploads in parts of
  ``KACHERY_HUB_S3_PART_SIZE``, verified by the hub reading them back (see ``_s3store``).

HTTP API (OpenAPI document at ``/openapi.json``, browsable at ``/docs``).
Requests are signed by the client key (``kachery_core._signing``); unsigned
requests may only read public projects. Every error is
``{"error": {"code": ..., "message": ...}}`` with a 4xx status for bad requests.

==============  ================================================  ===============================================
method          path                                              what
==============  ================================================  ===============================================
GET             /api/health                                       up? and ``direct_transfers`` (liveness)
GET             /api/ready                                        database and byte store answer? 200, else 503 naming which
GET             /metrics                                          Prometheus text (``KACHERY_HUB_METRICS``: local by default)
GET,POST        /api/clients                                      all clients (hub admins); bind the signing key to a token's user
DELETE          /api/clients/{client_id}                          sign a client out (hub admins)
GET,DELETE      /api/me                                           the client, its user, default project; sign out
PUT             /api/me/default-project                           set the default project
GET,POST        /api/tokens                                       tokens, never their secrets; a new one (hub admins)
DELETE          /api/tokens/{token_id}                            revoke a token, end its sessions (hub admins)
POST            /api/sign-in-requests                             a one-time browser sign-in link
GET             /api/sign-in-requests/{rid}                       pending / confirmed / refused / expired
GET             /api/sign-in-methods                              anonymous: ``{"oidc": {"name"} or null, "token": true}``
GET,POST        /api/projects                                     your projects; create one
GET,PATCH       /api/projects/{project_id}                        one project; rename, public-read
GET             /api/projects/{project_id}/members                members and roles
PUT,DELETE      /api/projects/{project_id}/members/{email}        add, change (read/write/admin), remove
GET             /api/projects/{project_id}/files                  files of a project (paged; ?q= label search)
GET,PUT,DELETE  /api/projects/{project_id}/files/{sha1}           record; upload through the hub; remove
POST            /api/projects/{project_id}/files/{sha1}/upload    where to upload (S3: presigned, an upload id;
                                                                  over KACHERY_HUB_S3_MULTIPART_THRESHOLD a multipart
                                                                  upload: part size, parts stored, URLs of the next
                                                                  missing parts; asked again, the same upload)
POST            /api/projects/{project_id}/files/{sha1}/complete  record a direct upload the store verified (a
                                                                  multipart one: read back and hashed by the hub)
GET             /api/files/{sha1}                                 download from any readable project (ranges)
GET             /api/files/{sha1}/info                            size and label
GET             /api/projects/{project_id}/mutables               keys by ``prefix`` (paged)
GET,PUT,DELETE  /api/projects/{project_id}/mutables/{key}         get, set (at most 1 MiB), delete
GET,POST        /api/projects/{project_id}/feeds                  feeds of a project, newest first; create one
GET             /api/feeds/{feed_id}                              project, label, message count, ``can_append``
GET,POST        /api/feeds/{feed_id}/messages                     a page by number (``start``, ``limit``); append
GET             /api/feeds/{feed_id}/events                       follow live (Server-Sent Events; ``Last-Event-ID``)
POST            /api/projects/{project_id}/tasks/requests         request a task: its job (a cached calculation: finished)
POST            /api/projects/{project_id}/tasks/requests/batch   one task for up to 1,000 inputs: their jobs, in order
POST            /api/projects/{project_id}/tasks/jobs/wait        up to 1,000 jobs, answered once all ended (``wait``)
GET             /api/projects/{project_id}/tasks/jobs             recent jobs (``status``, ``limit``)
GET             /api/projects/{project_id}/tasks/jobs/{job_id}    a job: status, progress, error, result (``wait``)
GET             /api/projects/{project_id}/tasks/jobs/{job_id}/events  follow a job (Server-Sent Events)
POST            /api/projects/{project_id}/tasks/jobs/{job_id}/cancel  cancel (its requester, or write)
POST            /api/projects/{project_id}/tasks/jobs/{job_id}/complete  a backend's result, error or cancel
GET             /api/projects/{project_id}/tasks/backends         backends online and their handlers
PUT,DELETE      /api/projects/{project_id}/tasks/backends/{backend_id}  register a backend's handlers; leave
POST            /api/projects/{project_id}/tasks/backends/{backend_id}/claim  renew leases, take jobs (long-poll)
GET             /api/session                                      a session: signed requests as WebSocket frames
==============  ================================================  ===============================================

Browser pages: ``/`` (signed in: the user's projects, signed-in computers and how to connect a
notebook; signed out: a sign-in token field; ``/?token=...`` asks "Sign in to this hub as X?"; the
browser is signed in only when that form is posted), ``/projects/{project_id}`` (members and a page
of files, read-only), ``POST /computers/sign-out`` (sign out one of the user's computers),
``/sign-in/{rid}`` (confirm a notebook's sign-in; "Not X?" signs
the browser out to choose another token or account), ``POST /sign-out``, ``/auth/login`` and
``/auth/callback`` (OpenID Connect authorization code with PKCE; state, nonce and the id_token
checked). Forms are CSRF-protected and same-origin (the origin the hub was reached at, or one of
its public URLs); pages send their origin only as Referer. Every page uses one stylesheet served by
the hub (``/static/hub.css``, light or dark as the system prefers); ``/docs`` is Swagger UI served
from the ``fastapi-offline`` package's files (``/static/docs/...``), so it works offline.

Limits (``Settings`` fields; see :mod:`kachery_hub._settings`): a request body is
counted as it arrives and refused with 413 ``payload_too_large`` past 4 MiB on
``/api/...`` (uploads excepted: streamed and hash-checked) or 64 KiB on a page
(16 KiB for the sign-in forms); any answer given before the body was read closes
the connection; ``serve`` refuses a request line plus headers over 64 KiB with 431
``headers_too_large``; the sign-in endpoints (``POST /api/sign-in-requests``,
``POST /api/clients``, ``/auth/login``, ``POST /sign-in/{rid}``, ``/?token=``,
``POST /``) allow 30 requests a minute per client address, bursts of 60
(``KACHERY_HUB_RATE_LIMIT``; 0 is off), then answer 429 ``rate_limited`` with
``Retry-After``; request bodies being read hold at most 64 MiB in all and a
quarter of it per client address (``KACHERY_HUB_MAX_INFLIGHT_BODY_BYTES``), else
503 ``busy`` with ``Retry-After``; a body with no progress for 30 s
(``KACHERY_HUB_BODY_TIMEOUT``) gets 408 ``body_timeout``; an unsigned API
request with a body gets 401 before it is read. The data folder and all in it are
owner-only (umask 077; an older, looser folder is tightened on start).
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
