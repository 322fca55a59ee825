"""Signed tracking tokens (HMAC-SHA256), the URLs built from them, and the tracking of an email's HTML.
Pure: the key is passed in.

A token is `<payload>.<tag>`: the payload is compact JSON in urlsafe base64 without padding, the tag the first
128 bits of HMAC-SHA256 over the payload *text*, also urlsafe base64. Signing the text rather than the decoded
bytes makes every token canonical: base64 has several spellings of the same bytes (the unused low bits of the
last character), and each of them would otherwise verify.

Every token names its kind in "k", and a reader accepts one kind only, so no token can stand in for another:

    u  unsubscribe    l=lead, d=delivery (optional)     /u/{token}
    o  open pixel     l=lead, d=delivery                /t/o/{token}
    c  click          l=lead, d=delivery, u=target URL  /t/c/{token}
    p  share link     l=lead, u=target URL, n=label     /t/p/{token}  (a rep's tracked link: "proposal")
    v  visitor        l=lead                            the `nl` landing parameter that site.js keeps
    s  session        a=API key, e=expiry, n=session id a rep's session cookie (ended at once by logout)
    l  login link     a=API key, e=expiry, n=nonce      /login/{token}  (works once: the nonce is claimed)

A click's target comes from its signed token only, so the redirect can never be pointed elsewhere. A session
and a login link are different kinds, so a link can never be set as a cookie to get around its single use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape, unescape
from html.entities import html5
from html.parser import HTMLParser, tagfind_tolerant  # type: ignore[attr-defined]
from typing import Final, cast

from nurture.errors import TrackingTokenError

_TAG_BYTES: Final = 16  # 128 bits: forging needs ~2**128 guesses, each one a web request
MAX_TOKEN_CHARS: Final = 4096  # longer input is refused before any decoding work; fits ~2900-char URLs
# Domain separation: a token tag can never be replayed as a Message-ID tag, and the reverse.
_TOKEN_CONTEXT: Final = b"nurture.token.v1\x00"
_MESSAGE_ID_CONTEXT: Final = b"nurture.message-id.v1\x00"
_DOMAIN_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")
_NONCE_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")

TrackingPayload = dict[str, str | int]


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _tag(body: str, key: bytes) -> str:
    mac = hmac.new(key, _TOKEN_CONTEXT + body.encode("ascii"), hashlib.sha256).digest()
    return _b64encode(mac[:_TAG_BYTES])


def _check_key(key: bytes) -> None:
    if not key:
        raise ValueError("the signing key must not be empty")


def sign_token(payload: Mapping[str, str | int], *, key: bytes) -> str:
    """Return a URL-safe token carrying `payload`, which only the holder of `key` can produce."""
    _check_key(key)
    for name, value in payload.items():
        # bool is an int subclass and would come back as True, not 1: refuse it rather than change it
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, str | int):
            raise TypeError(f"token payload values must be str or int, not {type(value).__name__}")
    text = json.dumps(dict(payload), separators=(",", ":"), sort_keys=True)
    body = _b64encode(text.encode("ascii"))  # json.dumps escapes everything outside ASCII
    return f"{body}.{_tag(body, key)}"


def verify_token(token: str, *, key: bytes) -> TrackingPayload:
    """Return the payload of a token signed with `key`.

    Raises:
        TrackingTokenError: the token was altered, truncated, extended, signed with another key or is garbage.
    """
    _check_key(key)
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise TrackingTokenError("malformed tracking token")
    body, dot, tag = token.partition(".")
    if not dot or not hmac.compare_digest(_tag(body, key), tag):
        raise TrackingTokenError("tracking token signature does not match")
    try:
        decoded = json.loads(_b64decode(body).decode("ascii"))
    except (binascii.Error, ValueError) as exc:  # only reachable with a leaked key
        raise TrackingTokenError("tracking token payload is unreadable") from exc
    if not isinstance(decoded, dict) or not all(
        isinstance(v, str | int) and not isinstance(v, bool) for v in decoded.values()
    ):
        raise TrackingTokenError("tracking token payload has the wrong shape")
    return cast(TrackingPayload, decoded)


def unsubscribe_url(base_url: str, *, lead_id: int, delivery_id: int | None, key: bytes) -> str:
    """Return the one-click unsubscribe URL for a lead, optionally naming the delivery it came from.

    The payload is `{"k": "u", "l": lead_id, "d": delivery_id}`; "d" is left out when `delivery_id` is None
    (an unsubscribe link outside any delivery), so readers use `payload.get("d")`.
    """
    payload: dict[str, str | int] = {"k": "u", "l": lead_id}
    if delivery_id is not None:
        payload["d"] = delivery_id
    return f"{base_url.rstrip('/')}/u/{sign_token(payload, key=key)}"


def _check_domain(domain: str) -> None:
    if not domain or not set(domain) <= _DOMAIN_CHARS or domain.startswith(".") or ".." in domain:
        raise ValueError(f"not a usable Message-ID domain: {domain!r}")


def message_id_for(delivery_id: int, *, domain: str, key: bytes) -> str:
    """Return the Message-ID of a delivery: `<d{id}.{tag}@{domain}>`.

    It is a function of the delivery alone, so a retry reuses it; the keyed tag keeps ids of one deployment
    from being guessed, or collided with, by another.
    """
    _check_key(key)
    _check_domain(domain)
    mac = hmac.new(key, _MESSAGE_ID_CONTEXT + str(delivery_id).encode("ascii"), hashlib.sha256).digest()
    # hex, not base64: some mail systems compare Message-IDs case-insensitively
    return f"<d{delivery_id}.{mac[:8].hex()}@{domain}>"


def message_id_for_test_copy(nonce: str, *, domain: str) -> str:
    """Return the Message-ID of one test send: `<test.{nonce}@{domain}>`, given a fresh `nonce` each time.

    A test send has no delivery, so its id cannot be derived from one: each copy gets its own, or the
    outbox would overwrite the last one and a mailbox could drop a repeat as a duplicate. The `test.`
    marker can never parse as a delivery's `d{id}.{tag}`, so a complaint about a test copy names no delivery.
    """
    _check_domain(domain)
    if not nonce or not set(nonce) <= _NONCE_CHARS:
        raise ValueError(f"a test Message-ID nonce is letters and digits: {nonce!r}")
    return f"<test.{nonce}@{domain}>"


# --- tracking links -------------------------------------------------------------------------------------

MAX_ID: Final = 2**63 - 1  # ids are BIGINT: a larger number can only be in a token we never issued
# WHATWG URL parsing strips leading and trailing C0 controls and spaces from an href, so we do too.
_URL_EDGE: Final = "".join(map(chr, range(0x21)))
# Absolute http(s) with a host; no whitespace or control character anywhere (they end up in a Location).
_TARGET: Final = re.compile(r"[hH][tT][tT][pP][sS]?://[^\x00-\x20\x7f/?#\\@]+(?:[/?#][^\x00-\x20\x7f]*)?")
_LABEL: Final = re.compile(r"[a-z][a-z0-9_]{0,29}")
# Which payload keys each kind must carry, and which it may.
_FIELDS: Final[dict[str, tuple[frozenset[str], frozenset[str]]]] = {
    "u": (frozenset("kl"), frozenset("d")),
    "o": (frozenset("kld"), frozenset()),
    "c": (frozenset("kldu"), frozenset()),
    "p": (frozenset("klun"), frozenset()),
    "v": (frozenset("kl"), frozenset()),
}


@dataclass(frozen=True, slots=True)
class TrackedLink:
    """What a verified tracking token says. `label` is a share link's kind ("proposal")."""

    kind: str
    lead_id: int
    delivery_id: int | None = None
    url: str | None = None
    label: str | None = None


def is_trackable_url(url: str) -> bool:
    """True for an absolute http(s) URL with a host and no whitespace or control character in it."""
    return len(url) <= MAX_TOKEN_CHARS and _TARGET.fullmatch(url) is not None


def is_link_label(label: str) -> bool:
    """True for a share-link kind: a lower-case slug of up to 30 characters (`proposal`, `pricing_sheet`)."""
    return _LABEL.fullmatch(label) is not None


def open_url(base_url: str, *, lead_id: int, delivery_id: int, key: bytes) -> str:
    """Return the open-pixel URL of one delivery."""
    return _tracking_url(base_url, {"k": "o", "l": lead_id, "d": delivery_id}, key=key)


def click_url(base_url: str, *, lead_id: int, delivery_id: int, url: str, key: bytes) -> str:
    """Return the URL that records a click on `url` in one delivery and redirects to it.

    Raises:
        ValueError: `url` is not an absolute http(s) URL, or is too long to fit in a token.
    """
    if not is_trackable_url(url):
        raise ValueError("only absolute http(s) URLs can be tracked")
    return _tracking_url(base_url, {"k": "c", "l": lead_id, "d": delivery_id, "u": url}, key=key)


def share_url(base_url: str, *, lead_id: int, url: str, kind: str, key: bytes) -> str:
    """Return a rep's tracked link to `url` for one lead; each opening is a `<kind>_view` event.

    Raises:
        ValueError: `url` is not an absolute http(s) URL or is too long, or `kind` is not a slug.
    """
    if not is_trackable_url(url):
        raise ValueError("only absolute http(s) URLs can be tracked")
    if not is_link_label(kind):
        raise ValueError("a link kind is a lower-case slug such as 'proposal'")
    return _tracking_url(base_url, {"k": "p", "l": lead_id, "u": url, "n": kind}, key=key)


def visitor_token(lead_id: int, *, key: bytes) -> str:
    """Return the token that identifies a lead on the marketing site (the `nl` landing parameter)."""
    return sign_token({"k": "v", "l": lead_id}, key=key)


def _tracking_url(base_url: str, payload: dict[str, str | int], *, key: bytes) -> str:
    token = sign_token(payload, key=key)
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError("the URL is too long to track")
    return f"{base_url.rstrip('/')}/t/{payload['k']}/{token}"


def read_token(token: str, *, kind: str, key: bytes) -> TrackedLink:
    """Return what a token of `kind` says.

    Raises:
        TrackingTokenError: the token does not verify under `key`, is of another kind, or does not carry
            exactly the fields its kind has.
    """
    payload = verify_token(token, key=key)
    required, optional = _FIELDS[kind]
    if payload.get("k") != kind or not required <= payload.keys() <= required | optional:
        raise TrackingTokenError(f"not a tracking token of kind {kind!r}")
    url, label = payload.get("u"), payload.get("n")
    if url is not None and not (isinstance(url, str) and is_trackable_url(url)):
        raise TrackingTokenError("tracking token carries an unusable URL")
    if label is not None and not (isinstance(label, str) and is_link_label(label)):
        raise TrackingTokenError("tracking token carries an unusable label")
    delivery_id = payload.get("d")
    return TrackedLink(kind, _id(payload["l"]), None if delivery_id is None else _id(delivery_id), url, label)


def _id(value: str | int) -> int:
    if not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise TrackingTokenError("tracking token carries an unusable id")
    return value


def with_visitor_param(url: str, token: str) -> str:
    """Return `url` with `nl=<token>` as its last query parameter; every other byte of it is kept.

    An `nl` the URL already had is dropped, so the landing page sees exactly one.
    """
    return _with_query(url, [f"nl={token}"])


def without_visitor_param(url: str) -> str:
    """Return `url` without its `nl` query parameters; every other byte of it is kept."""
    return _with_query(url, [])


def _with_query(url: str, added: list[str]) -> str:
    rest, hash_, fragment = url.partition("#")
    path, _, query = rest.partition("?")
    existing = query.split("&") if query else []
    kept = [part for part in existing if part.partition("=")[0] != "nl"]
    if not added and len(kept) == len(existing):
        return url  # nothing to take out
    parts = [*kept, *added]
    return f"{path}{'?' if parts else ''}{'&'.join(parts)}{hash_}{fragment}"


# --- tracking an email's HTML -----------------------------------------------------------------------------

# The tag and attribute syntax of the standard library's tolerant parser (html.parser, CPython 3.11), so an
# attribute is found where that parser found it.
_TAG_NAME: Final = re.compile(r"<[a-zA-Z][^\t\n\r\f />\x00]*(?:\s|/(?!>))*")
_ATTRIBUTE: Final = re.compile(
    r"((?<=['\"\s/])[^\s/>][^\s/=>]*)(\s*=+\s*('[^']*'|\"[^\"]*\"|(?!['\"])[^>\s]*))?(?:\s|/(?!>))*"
)
_BODY_END: Final = re.compile(r"</body\s*>", re.IGNORECASE)
_CHARREF: Final = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")  # as html.unescape
NO_TRACKING_ATTRIBUTE: Final = "data-nurture-notrack"  # <a href=... data-nurture-notrack> stays as written


class _StartTags(HTMLParser):
    """Collects (offset, source) of each start tag named `name`, outside comments, scripts and styles."""

    def __init__(self, name: str) -> None:
        super().__init__(convert_charrefs=True)
        self._name = name
        self._fully_parsed = frozenset({name, *self.CDATA_CONTENT_ELEMENTS})
        self._tag_at = 0  # where the start tag being parsed begins
        self.found: list[tuple[int, str]] = []

    def parse_marked_section(self, i: int, report: bool = True) -> int:
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:  # CPython 3.11 refuses `<![foo]>`; browsers skip such a section as a comment
            end = self.rawdata.find(">", i)
            return -1 if end < 0 else end + 1

    def parse_starttag(self, i: int) -> int:
        # Reading a tag's attributes is most of the parser's work, and only <a> tags (ours) and the raw-text
        # elements (they change how what follows is read) need it: any other start tag needs only its end.
        name = tagfind_tolerant.match(self.rawdata, i + 1)
        if name is not None and name.group(1).lower() not in self._fully_parsed:
            return self.check_for_whole_start_tag(i)
        self._tag_at = i
        return super().parse_starttag(i)

    def updatepos(self, _i: int, j: int) -> int:
        # Offsets come from parse_starttag, so the parser's line and column counting is not needed.
        return j

    def handle_starttag(self, tag: str, _attrs: list[tuple[str, str | None]]) -> None:
        text = self.get_starttag_text()
        if tag == self._name and text is not None:
            self.found.append((self._tag_at, text))


def _attributes(tag_text: str) -> dict[str, tuple[int, int, str]]:
    """Map each attribute name (lower case, first one wins) to the span and raw text of its value."""
    found: dict[str, tuple[int, int, str]] = {}
    head = _TAG_NAME.match(tag_text)
    position = head.end() if head else len(tag_text)
    while (match := _ATTRIBUTE.match(tag_text, position)) is not None and match.end() > position:
        name = match.group(1).lower()
        start, end = match.span(3) if match.group(2) else (match.end(1), match.end(1))
        found.setdefault(name, (start, end, tag_text[start:end] if match.group(2) else ""))
        position = match.end()
    return found


def _never(_url: str) -> bool:
    return False


def rewrite_links(html: str, make_url: Callable[[str], str], *, skip: Callable[[str], bool] = _never) -> str:
    """Return `html` with the href of every `<a>` that holds an http(s) URL replaced by `make_url(url)`.

    `url` is the href as a browser reads it (entities such as `&amp;` decoded, the ends stripped). Links are
    left as written when `skip(url)` is true, when `make_url` returns `url` itself, when they are not
    absolute http(s) (mailto:, tel:, #anchors, relative), and when the tag carries `data-nurture-notrack`.
    Links inside comments (Outlook's conditional blocks included), scripts and styles are not links. Every
    byte but the rewritten values is kept; a new value is always written double-quoted and escaped.
    """
    parser = _StartTags("a")
    parser.feed(html)
    parser.close()
    edits: list[tuple[int, int, str]] = []
    for offset, tag_text in parser.found:
        if not html.startswith(tag_text, offset):  # never edit a place the parser did not point at exactly
            continue
        attributes = _attributes(tag_text)
        href = attributes.get("href")
        if href is None or NO_TRACKING_ATTRIBUTE in attributes:
            continue
        start, end, raw = href
        url = attribute_text(raw[1:-1] if raw[:1] in ("'", '"') else raw).strip(_URL_EDGE)
        if not is_trackable_url(url) or skip(url):
            continue
        new = make_url(url)
        if new != url:
            edits.append((offset + start, offset + end, f'"{escape(new, quote=True)}"'))
    return _apply(html, edits)


def attribute_text(value: str) -> str:
    """Decode the character references of an attribute value as a browser does.

    Unlike text, an attribute keeps a legacy reference written without ";" when a letter, digit or "=" follows
    it: `?a=1&region=eu` is not `?a=1®ion=eu` (html.unescape would decode it).
    """

    def decode(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("#") or name in html5:
            return unescape(match.group(0))
        for end in range(len(name.rstrip(";")), 1, -1):  # the longest legacy name, as html.unescape
            if name[:end] in html5:
                rest = name[end:]
                if rest[:1] == "=" or (rest[:1].isascii() and rest[:1].isalnum()):
                    return match.group(0)
                return html5[name[:end]] + rest
        return match.group(0)

    return _CHARREF.sub(decode, value) if "&" in value else value


def _apply(text: str, edits: list[tuple[int, int, str]]) -> str:
    parts, position = [], 0
    for start, end, replacement in edits:  # in document order, never overlapping
        parts += [text[position:start], replacement]
        position = end
    parts.append(text[position:])
    return "".join(parts)


def add_open_pixel(html: str, pixel_url: str) -> str:
    """Return `html` with a 1x1 image of `pixel_url` just before its last `</body>` (or at its end)."""
    image = f'<img src="{escape(pixel_url, quote=True)}" width="1" height="1" alt="" border="0">'
    ends = [match.start() for match in _BODY_END.finditer(html)]
    if not ends:
        return html + image
    return html[: ends[-1]] + image + html[ends[-1] :]


def track_html(
    html: str, *, base_url: str, lead_id: int, delivery_id: int, key: bytes, keep: Collection[str] = ()
) -> str:
    """Rewrite the links of one delivery's HTML to signed click URLs and add its open pixel.

    URLs in `keep` (the unsubscribe URL) and URLs already under `base_url`'s tracking paths stay as they
    are; a URL too long to fit in a token stays as it is, untracked.
    """
    base = base_url.rstrip("/")
    ours = (f"{base}/t/", f"{base}/u/")

    def to_click(url: str) -> str:
        try:
            return click_url(base, lead_id=lead_id, delivery_id=delivery_id, url=url, key=key)
        except ValueError:
            return url

    tracked = rewrite_links(html, to_click, skip=lambda url: url in keep or url.startswith(ours))
    return add_open_pixel(tracked, open_url(base, lead_id=lead_id, delivery_id=delivery_id, key=key))


# --- reps' sessions ---------------------------------------------------------------------------------------

_LOGIN_FIELDS: Final = {"s": frozenset("kaen"), "l": frozenset("kaen")}
_NONCE: Final = re.compile(r"[A-Za-z0-9_-]{16,32}")  # short: the database keeps it once used
_MAX_EXPIRY_S: Final = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second a datetime can hold


@dataclass(frozen=True, slots=True)
class SignedLogin:
    """What a verified session ("s") or login-link ("l") token says."""

    kind: str
    api_key_id: int
    expires_at: datetime  # aware UTC, whole seconds
    # A login link's is claimed when it is used, so it works once; a session's is its id, which a logout
    # records as ended.
    nonce: str


def session_token(api_key_id: int, *, expires_at: datetime, session_id: str, key: bytes) -> str:
    """Return a session cookie value for the rep who signed in with API key `api_key_id`; `session_id`
    (16-32 URL-safe characters, random) is what a logout records as ended.

    Raises:
        ValueError: `session_id` is not 16-32 URL-safe characters, `expires_at` is naive or the id is not one.
    """
    return _login_token("s", api_key_id, expires_at=expires_at, nonce=session_id, key=key)


def login_link_token(api_key_id: int, *, expires_at: datetime, nonce: str, key: bytes) -> str:
    """Return the token of a login link (`/login/{token}`) that starts a session for `api_key_id` once.

    Raises:
        ValueError: `nonce` is not 16-32 URL-safe characters, `expires_at` is naive or the id is not one.
    """
    return _login_token("l", api_key_id, expires_at=expires_at, nonce=nonce, key=key)


def _login_token(kind: str, api_key_id: int, *, expires_at: datetime, nonce: str, key: bytes) -> str:
    if not _NONCE.fullmatch(nonce):
        raise ValueError("a login link nonce or session id is 16-32 URL-safe characters")
    payload: dict[str, str | int] = {"k": kind, "a": _key_id(api_key_id), "e": _epoch(expires_at), "n": nonce}
    return sign_token(payload, key=key)


def read_login_token(token: str, *, kind: str, now: datetime, key: bytes) -> SignedLogin:
    """Return what a session (`kind="s"`) or login-link (`kind="l"`) token says, if still valid at `now`.

    Raises:
        TrackingTokenError: the token does not verify, is of another kind or shape, or has expired.
    """
    payload = verify_token(token, key=key)
    if payload.get("k") != kind or payload.keys() != _LOGIN_FIELDS[kind]:
        raise TrackingTokenError(f"not a token of kind {kind!r}")
    expiry, nonce = payload["e"], payload["n"]
    if not isinstance(expiry, int) or not 0 < expiry <= _MAX_EXPIRY_S:
        raise TrackingTokenError("token carries an unusable expiry")
    if not (isinstance(nonce, str) and _NONCE.fullmatch(nonce)):
        raise TrackingTokenError("token carries an unusable nonce")
    expires_at = datetime.fromtimestamp(expiry, UTC)
    if expires_at <= now:
        raise TrackingTokenError("token has expired")
    return SignedLogin(kind, _id(payload["a"]), expires_at, nonce)


def _key_id(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise ValueError(f"not an API key id: {value!r}")
    return value


def _epoch(at: datetime) -> int:
    if at.tzinfo is None:
        raise ValueError("expires_at must be timezone-aware")
    return int(at.timestamp())
