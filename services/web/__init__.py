"""The node's HTTP face: one Starlette app on uvicorn, in a thread of the node's process.

    app.py        the app: /healthz, /metrics, STOW-RS in, the operator page
    page.py       the operator page at / (and its live part at /live), Retry, thumbnails
    login.py      the page's login (a session cookie) and what protects Retry (CSRF, Origin)
    thumbnails.py PNG thumbnails of the node's saliency captures, cached in the storage folder
    templates/    the page's Jinja2 templates; static/ its CSS and small script
    auth.py       who asks (the node's token, a site's token or client certificate) and where
                  each may go; 401 without a hint
    stow.py       STOW-RS in: each part streamed to the spool and decided as a C-STORE is
    multipart.py  the streaming reader of multipart bodies that stow.py uses
    server.py     uvicorn in a thread: start (a port in use is an OSError), stop (graceful)
    context.py    WebContext: what of the node the routes see

Node.start builds it (services/node.py); nothing else in the node serves HTTP.
"""

from .app import create_app
from .auth import Credentials, Principal, Role, TokenError
from .context import WebContext
from .server import WebServer, https_context

__all__ = ["Credentials", "Principal", "Role", "TokenError", "WebContext", "WebServer",
           "create_app", "https_context"]
