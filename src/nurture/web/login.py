"""Signing reps in and out of the pages they read (`GET /leads/{id}`), and telling who is asking.

    GET  /login           a form with one field: the rep's API key (from `nurture apikey create`)
    POST /login           checks the key as the API does, sets the session cookie, 303 to `next`
    GET  /login/{token}   a one-time login link (`nurture login-link`): sets the cookie, 303 to `next`
    POST /logout          ends the session on every web process, clears the cookie, 303 to /login
    GET  /                where a sign-in without `next` lands

The cookie (see `sessions`) is HttpOnly, SameSite=Lax and Path=/, and Secure, under a `__Host-` name, when
the base URL is https. `next` is followed only when it is a path on this site, never to another host. The
session can change nothing but itself, so CSRF is met by SameSite=Lax, a POST-only logout, and refusing a
POST that the browser marks as cross-site (`Sec-Fetch-Site`, or without it an `Origin` of another host):
no other site can sign a rep in or out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from nurture.db.queries.apikeys import StoredApiKey
from nurture.errors import DatabaseUnavailableError
from nurture.runtime import Runtime
from nurture.web.auth import authenticate
from nurture.web.hosts import is_foreign_origin
from nurture.web.http import BodyError, read_form
from nurture.web.sessions import (
    SessionCookie,
    key_of_session,
    local_path,
    redeem_login_link,
    sign_out,
    start_session,
)
from nurture.web.views import Views

MAX_FORM_BYTES: Final = 4096
BAD_KEY: Final = "That key is not valid, or it was revoked. Check it and try again."
BAD_LINK: Final = (
    "This sign-in link has expired or was used already. Sign in with your key, or ask for a new link."
)

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who made a request: the API key it presented, and whether through the session cookie."""

    api_key: StoredApiKey
    session: bool


class RepAuth:
    """Reads a request's bearer key or session cookie, and sets or clears the cookie."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.cookie = SessionCookie.for_base_url(runtime.mailer.base_url)

    async def identify(self, request: Request) -> Identity | None:
        """The active key behind `Authorization: Bearer ...`, else behind the session cookie; None if neither.

        A request that sends an Authorization header is judged by it alone.
        """
        authorization = request.headers.get("authorization")
        if authorization is not None:
            stored = await authenticate(self._runtime.db, authorization)
            return Identity(stored, session=False) if stored is not None else None
        token = request.cookies.get(self.cookie.name)
        if not token:
            return None
        rt = self._runtime
        stored = await key_of_session(rt.db, token, key=rt.mailer.secret_key, now=rt.clock.now())
        return Identity(stored, session=True) if stored is not None else None

    def signed_in(self, api_key: StoredApiKey, next_path: str) -> Response:
        """A 303 to `next_path` that sets the session cookie for `api_key`."""
        rt, ttl = self._runtime, self._runtime.settings.session_ttl
        token = start_session(api_key, key=rt.mailer.secret_key, now=rt.clock.now(), ttl=ttl)
        response = RedirectResponse(next_path, status_code=303)
        response.set_cookie(
            self.cookie.name,
            token,
            max_age=int(ttl.total_seconds()),
            path="/",
            secure=self.cookie.secure,
            httponly=True,
            samesite="lax",
        )
        return response

    async def signed_out(self, request: Request, location: str) -> Response:
        """A 303 to `location` that clears the cookie, once the session it names is ended."""
        token = request.cookies.get(self.cookie.name)
        if token:
            rt = self._runtime
            await sign_out(rt.db, token, key=rt.mailer.secret_key, now=rt.clock.now())
        response = RedirectResponse(location, status_code=303)
        response.delete_cookie(
            self.cookie.name, path="/", secure=self.cookie.secure, httponly=True, samesite="lax"
        )
        return response


def login_redirect(request: Request) -> Response:
    """A 303 to the login form that comes back to the page asked for."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?{urlencode({'next': local_path(here)})}", status_code=303)


class LoginEndpoints:
    def __init__(self, runtime: Runtime, views: Views, auth: RepAuth) -> None:
        self._runtime = runtime
        self._views = views
        self._auth = auth

    async def form(self, request: Request) -> Response:
        next_path = local_path(request.query_params.get("next"))
        if await self._auth.identify(request) is not None:
            return RedirectResponse(next_path, status_code=303)
        return self._views.page("login.html", next=next_path, error=None)

    async def sign_in(self, request: Request) -> Response:
        if _is_cross_site(request):
            return self._message(403, "Not allowed", "Sign in from this site's own form.")
        try:
            form = await read_form(request, max_bytes=MAX_FORM_BYTES)
        except BodyError as exc:
            return self._message(exc.status_code, "Cannot sign in", exc.message)
        next_path = local_path(form.get("next"))
        stored = await authenticate(self._runtime.db, f"Bearer {form.get('api_key', '').strip()}")
        if stored is None:
            return self._views.page("login.html", status_code=401, next=next_path, error=BAD_KEY)
        return self._auth.signed_in(stored, next_path)

    async def link(self, request: Request) -> Response:
        next_path = local_path(request.query_params.get("next"))
        if request.method == "HEAD":  # a link preview or scanner: the link stays unused for the rep
            return Response(status_code=200, media_type="text/html")
        rt = self._runtime
        token = request.path_params["token"]
        stored = await redeem_login_link(rt.db, token, key=rt.mailer.secret_key, now=rt.clock.now())
        if stored is None:
            return self._views.page("login.html", status_code=403, next=next_path, error=BAD_LINK)
        return self._auth.signed_in(stored, next_path)

    async def sign_out(self, request: Request) -> Response:
        if _is_cross_site(request):
            return self._message(403, "Not allowed", "Sign out from this site's own button.")
        return await self._auth.signed_out(request, "/login")

    async def home(self, request: Request) -> Response:
        identity = await self._auth.identify(request)
        if identity is None:
            return RedirectResponse("/login", status_code=303)
        return self._views.page("home.html", key_name=identity.api_key.name, signed_in=identity.session)

    def _message(self, status_code: int, title: str, sentence: str) -> Response:
        return self._views.page("message.html", status_code=status_code, title=title, sentence=sentence)


def _is_cross_site(request: Request) -> bool:
    """The browser says so (`Sec-Fetch-Site`), or, without that header, `Origin` names another site."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site.lower() == "cross-site"
    return is_foreign_origin(request.headers.get("origin"), request.app.state.allowed_hosts)


def database_guard(views: Views, handler: Handler) -> Handler:
    """`handler`, answering 503 with a page while the database is unreachable."""

    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except DatabaseUnavailableError:
            return views.page(
                "message.html",
                status_code=503,
                headers={"Retry-After": "5"},
                title="Try again in a moment",
                sentence="The database is not answering right now.",
            )

    return guarded


def login_routes(endpoints: LoginEndpoints, views: Views) -> list[Route]:
    return [
        Route("/", database_guard(views, endpoints.home), methods=["GET"]),
        Route("/login", database_guard(views, endpoints.form), methods=["GET"]),
        Route("/login", database_guard(views, endpoints.sign_in), methods=["POST"]),
        Route("/login/{token}", database_guard(views, endpoints.link), methods=["GET"]),
        Route("/logout", database_guard(views, endpoints.sign_out), methods=["POST"]),
    ]
