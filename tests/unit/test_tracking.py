"""Tracking tokens: they round-trip, and nothing but the signer's exact output verifies."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from html import escape

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from nurture.core.tracking import (
    MAX_ID,
    TrackedLink,
    add_open_pixel,
    attribute_text,
    click_url,
    message_id_for,
    open_url,
    read_token,
    rewrite_links,
    share_url,
    sign_token,
    track_html,
    unsubscribe_url,
    verify_token,
    visitor_token,
    with_visitor_param,
    without_visitor_param,
)
from nurture.errors import TrackingTokenError

KEY = b"k" * 32
OTHER_KEY = b"o" * 32

payloads = st.dictionaries(
    st.text(max_size=8),
    st.one_of(st.integers(min_value=-(2**63), max_value=2**63), st.text(max_size=40)),
    max_size=5,
)
TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.="


@given(payload=payloads)
def test_verify_token_returns_what_sign_token_signed(payload: dict[str, str | int]) -> None:
    assert verify_token(sign_token(payload, key=KEY), key=KEY) == payload


@given(payload=payloads)
def test_sign_token_output_is_url_safe(payload: dict[str, str | int]) -> None:
    assert re.fullmatch(r"[A-Za-z0-9_-]*\.[A-Za-z0-9_-]{22}", sign_token(payload, key=KEY))


@given(payload=payloads, data=st.data())
def test_verify_token_rejects_any_single_character_change(
    payload: dict[str, str | int], data: st.DataObject
) -> None:
    token = sign_token(payload, key=KEY)
    index = data.draw(st.integers(min_value=0, max_value=len(token) - 1), label="index")
    replacement = data.draw(st.characters(codec="utf-8"), label="replacement")
    assume(replacement != token[index])
    with pytest.raises(TrackingTokenError):
        verify_token(token[:index] + replacement + token[index + 1 :], key=KEY)


@given(payload=payloads, data=st.data())
def test_verify_token_rejects_truncation(payload: dict[str, str | int], data: st.DataObject) -> None:
    token = sign_token(payload, key=KEY)
    start = data.draw(st.integers(min_value=0, max_value=len(token)), label="start")
    end = data.draw(st.integers(min_value=start, max_value=len(token)), label="end")
    assume((start, end) != (0, len(token)))
    with pytest.raises(TrackingTokenError):
        verify_token(token[start:end], key=KEY)


@given(payload=payloads, suffix=st.text(min_size=1), prefix=st.text())
def test_verify_token_rejects_appended_or_prepended_data(
    payload: dict[str, str | int], suffix: str, prefix: str
) -> None:
    token = sign_token(payload, key=KEY)
    with pytest.raises(TrackingTokenError):
        verify_token(token + suffix, key=KEY)
    with pytest.raises(TrackingTokenError):
        verify_token(prefix + suffix + token, key=KEY)


@given(garbage=st.one_of(st.text(), st.text(alphabet=TOKEN_ALPHABET)))
def test_verify_token_rejects_random_strings(garbage: str) -> None:
    with pytest.raises(TrackingTokenError):
        verify_token(garbage, key=KEY)


@given(payload=payloads)
def test_verify_token_rejects_a_token_signed_with_another_key(payload: dict[str, str | int]) -> None:
    with pytest.raises(TrackingTokenError):
        verify_token(sign_token(payload, key=OTHER_KEY), key=KEY)


def test_verify_token_rejects_a_swapped_payload_under_a_valid_tag() -> None:
    _, _, tag_a = sign_token({"l": 1}, key=KEY).partition(".")
    body_b, _, _ = sign_token({"l": 2}, key=KEY).partition(".")
    with pytest.raises(TrackingTokenError):
        verify_token(f"{body_b}.{tag_a}", key=KEY)


def test_verify_token_rejects_an_overlong_token() -> None:
    with pytest.raises(TrackingTokenError):
        verify_token("a" * 5000 + "." + "b" * 22, key=KEY)


@pytest.mark.parametrize("value", [True, 1.5, None, [1]])
def test_sign_token_refuses_values_that_would_not_round_trip(value: object) -> None:
    with pytest.raises(TypeError):
        sign_token({"x": value}, key=KEY)  # type: ignore[dict-item]


def test_sign_token_refuses_an_empty_key() -> None:
    with pytest.raises(ValueError, match="key"):
        sign_token({"x": 1}, key=b"")


def test_unsubscribe_url_carries_lead_and_delivery() -> None:
    url = unsubscribe_url("https://t.example/", lead_id=7, delivery_id=42, key=KEY)
    assert url.startswith("https://t.example/u/")
    token = url.removeprefix("https://t.example/u/")
    assert verify_token(token, key=KEY) == {"k": "u", "l": 7, "d": 42}


def test_unsubscribe_url_without_a_delivery_leaves_d_out() -> None:
    url = unsubscribe_url("https://t.example", lead_id=7, delivery_id=None, key=KEY)
    assert verify_token(url.rsplit("/", 1)[1], key=KEY) == {"k": "u", "l": 7}


def test_message_id_for_is_stable_for_one_delivery_and_key() -> None:
    first = message_id_for(42, domain="mail.acme.example", key=KEY)
    assert first == message_id_for(42, domain="mail.acme.example", key=KEY)
    assert re.fullmatch(r"<d42\.[0-9a-f]{16}@mail\.acme\.example>", first)


def test_message_id_for_differs_across_deliveries_and_deployments() -> None:
    ids = {
        message_id_for(42, domain="acme.example", key=KEY),
        message_id_for(43, domain="acme.example", key=KEY),
        message_id_for(42, domain="acme.example", key=OTHER_KEY),
    }
    assert len(ids) == 3


@pytest.mark.parametrize("domain", ["", "a b", "a>b", "x@y", ".acme", "a..b", "acme\r\n"])
def test_message_id_for_refuses_an_unusable_domain(domain: str) -> None:
    with pytest.raises(ValueError, match="domain"):
        message_id_for(1, domain=domain, key=KEY)


# --- tracking links ---------------------------------------------------------------------------------------

BASE = "https://t.example"
ids = st.integers(min_value=1, max_value=MAX_ID)
hosts = st.from_regex(
    r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?(?:\.[a-z]{2,6}){1,2}(?::[0-9]{2,5})?", fullmatch=True
)
# Anything but whitespace and control characters (which no trackable URL holds), quotes and markup included.
url_chars = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"))
urls = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}/{path}",
    st.sampled_from(["http", "https", "HTTPS"]),
    hosts,
    st.text(alphabet=url_chars, max_size=40),
)
labels = st.from_regex(r"[a-z][a-z0-9_]{0,29}", fullmatch=True)


def _token_of(url: str, path: str) -> str:
    assert url.startswith(f"{BASE}/t/{path}/")
    return url.removeprefix(f"{BASE}/t/{path}/")


@given(lead_id=ids, delivery_id=ids)
def test_open_url_carries_the_lead_and_the_delivery(lead_id: int, delivery_id: int) -> None:
    token = _token_of(open_url(BASE, lead_id=lead_id, delivery_id=delivery_id, key=KEY), "o")
    assert read_token(token, kind="o", key=KEY) == TrackedLink("o", lead_id, delivery_id)


@given(lead_id=ids, delivery_id=ids, url=urls)
def test_click_url_carries_the_lead_the_delivery_and_the_exact_target(
    lead_id: int, delivery_id: int, url: str
) -> None:
    token = _token_of(click_url(BASE, lead_id=lead_id, delivery_id=delivery_id, url=url, key=KEY), "c")
    assert read_token(token, kind="c", key=KEY) == TrackedLink("c", lead_id, delivery_id, url)


@given(lead_id=ids, url=urls, kind=labels)
def test_share_url_carries_the_lead_the_target_and_the_kind(lead_id: int, url: str, kind: str) -> None:
    token = _token_of(share_url(BASE, lead_id=lead_id, url=url, kind=kind, key=KEY), "p")
    assert read_token(token, kind="p", key=KEY) == TrackedLink("p", lead_id, None, url, kind)


@given(lead_id=ids)
def test_visitor_token_carries_the_lead(lead_id: int) -> None:
    assert read_token(visitor_token(lead_id, key=KEY), kind="v", key=KEY) == TrackedLink("v", lead_id)


@given(lead_id=ids, delivery_id=ids, url=urls, other=urls)
def test_a_click_token_whose_url_was_swapped_never_verifies(
    lead_id: int, delivery_id: int, url: str, other: str
) -> None:
    assume(other != url)
    token = _token_of(click_url(BASE, lead_id=lead_id, delivery_id=delivery_id, url=url, key=KEY), "c")
    swapped = {"k": "c", "l": lead_id, "d": delivery_id, "u": other}
    body = base64.urlsafe_b64encode(
        json.dumps(swapped, separators=(",", ":"), sort_keys=True).encode()
    ).rstrip(b"=")
    with pytest.raises(TrackingTokenError):
        read_token(f"{body.decode()}.{token.partition('.')[2]}", kind="c", key=KEY)


@given(lead_id=ids, delivery_id=ids, url=urls, data=st.data())
def test_a_tampered_click_token_never_verifies(
    lead_id: int, delivery_id: int, url: str, data: st.DataObject
) -> None:
    token = _token_of(click_url(BASE, lead_id=lead_id, delivery_id=delivery_id, url=url, key=KEY), "c")
    index = data.draw(st.integers(min_value=0, max_value=len(token) - 1), label="index")
    replacement = data.draw(st.sampled_from(TOKEN_ALPHABET), label="replacement")
    assume(replacement != token[index])
    with pytest.raises(TrackingTokenError):
        read_token(token[:index] + replacement + token[index + 1 :], kind="c", key=KEY)


KINDS: dict[str, dict[str, str | int]] = {
    "o": {"k": "o", "l": 1, "d": 2},
    "c": {"k": "c", "l": 1, "d": 2, "u": "https://a.example/"},
    "p": {"k": "p", "l": 1, "u": "https://a.example/", "n": "proposal"},
    "v": {"k": "v", "l": 1},
    "u": {"k": "u", "l": 1, "d": 2},
}


@pytest.mark.parametrize("signed_as", KINDS)
@pytest.mark.parametrize("read_as", KINDS)
def test_read_token_accepts_a_token_of_its_own_kind_only(signed_as: str, read_as: str) -> None:
    token = sign_token(KINDS[signed_as], key=KEY)
    if signed_as == read_as:
        assert read_token(token, kind=read_as, key=KEY).lead_id == 1
    else:
        with pytest.raises(TrackingTokenError):
            read_token(token, kind=read_as, key=KEY)


@pytest.mark.parametrize(
    "payload",
    [
        {"k": "c", "l": 1, "d": 2, "u": "javascript:alert(1)"},
        {"k": "c", "l": 1, "d": 2, "u": "//evil.example/"},
        {"k": "c", "l": 1, "d": 2, "u": "https://a.example/\r\nSet-Cookie: x=1"},
        {"k": "c", "l": 1, "u": "https://a.example/"},
        {"k": "c", "l": 1, "d": 2, "u": "https://a.example/", "x": 1},
        {"k": "c", "l": "1", "d": 2, "u": "https://a.example/"},
        {"k": "c", "l": 0, "d": 2, "u": "https://a.example/"},
        {"k": "c", "l": 2**63, "d": 2, "u": "https://a.example/"},
        {"k": "p", "l": 1, "u": "https://a.example/", "n": "Proposal View"},
        {"k": "v", "l": 1, "d": 2},
    ],
    ids=str,
)
def test_read_token_refuses_a_signed_payload_we_never_issue(payload: dict[str, str | int]) -> None:
    with pytest.raises(TrackingTokenError):
        read_token(sign_token(payload, key=KEY), kind=str(payload["k"]), key=KEY)


@pytest.mark.parametrize(
    "url",
    ["mailto:a@b.example", "tel:+100", "#top", "/relative", "ftp://a.example/", "https://", "https://a b/"],
)
def test_click_and_share_urls_refuse_what_is_not_an_absolute_http_url(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        click_url(BASE, lead_id=1, delivery_id=2, url=url, key=KEY)
    with pytest.raises(ValueError, match="http"):
        share_url(BASE, lead_id=1, url=url, kind="proposal", key=KEY)


def test_click_url_refuses_a_url_too_long_to_fit_in_a_token() -> None:
    with pytest.raises(ValueError, match="too long"):
        click_url(BASE, lead_id=1, delivery_id=2, url="https://a.example/" + "x" * 3500, key=KEY)


@pytest.mark.parametrize("kind", ["", "Proposal", "proposal view", "x" * 31, "1st"])
def test_share_url_refuses_a_kind_that_is_not_a_slug(kind: str) -> None:
    with pytest.raises(ValueError, match="slug"):
        share_url(BASE, lead_id=1, url="https://a.example/", kind=kind, key=KEY)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://a.example/", "https://a.example/?nl=TOKEN"),
        ("https://a.example/p?x=1&y=%20", "https://a.example/p?x=1&y=%20&nl=TOKEN"),
        ("https://a.example/p?nl=old&x=1#part", "https://a.example/p?x=1&nl=TOKEN#part"),
        ("https://a.example/p#a?b", "https://a.example/p?nl=TOKEN#a?b"),
        ("https://a.example/p?", "https://a.example/p?nl=TOKEN"),
        ("https://a.example/p?x=1&&y&nl", "https://a.example/p?x=1&&y&nl=TOKEN"),
    ],
)
def test_with_visitor_param_appends_nl_and_keeps_every_other_byte(url: str, expected: str) -> None:
    assert with_visitor_param(url, "TOKEN") == expected
    assert without_visitor_param(expected) == re.sub(r"nl=old&|&nl$|\?$", "", url)


def test_without_visitor_param_leaves_a_url_without_nl_untouched() -> None:
    for url in ("https://a.example/p?x=1&&y", "https://a.example/p?", "https://a.example/?nlx=1"):
        assert without_visitor_param(url) == url


# --- rewriting an email's links ---------------------------------------------------------------------------

KEEP = "https://t.example/u/unsubscribe-token"


def _numeric_refs(url: str) -> str:
    return "".join(f"&#x{ord(c):x};" if c in "&\"'<>" else c for c in url)


def _escape(url: str) -> str:
    return escape(url, quote=True)


def _link(
    url: str,
    quote: str,
    encode: Callable[[str], str],
    name: str,
    attribute: str,
    equals: str,
    before: str,
    after: str,
) -> tuple[str, str, str, str]:
    """An `<a>` tag as (source before the value, raw value, source after it, the URL a browser reads)."""
    if not quote and re.search(r"\s", url):
        quote = '"'  # an unquoted value ends at the first whitespace
    if not quote and after.strip():  # an unquoted value needs a space before a following attribute
        after = f" {after.lstrip()}"
    return f"<{name}{before} {attribute}{equals}", f"{quote}{encode(url)}{quote}", f"{after}>", url


links = st.builds(
    _link,
    urls,
    st.sampled_from(['"', "'", ""]),
    st.sampled_from([_escape, _numeric_refs]),
    st.sampled_from(["a", "A"]),
    st.sampled_from(["href", "HREF", "Href"]),
    st.sampled_from(["=", " = ", "=\n"]),
    st.sampled_from(["", ' class="btn"', " style='color:#0f766e'", " target=_blank"]),
    st.sampled_from(["", ' title="Read more"', " rel=noopener", "\n"]),
)
texts = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="<"), max_size=20)
fixed = st.sampled_from(
    [
        '<a href="mailto:sales@acme.example">mail</a>',
        "<a href='tel:+1-555-0100'>call</a>",
        '<a href="#top">top</a>',
        '<a href="/relative">rel</a>',
        f'<a class="unsubscribe" href="{KEEP}">Unsubscribe</a>',
        '<a href="https://c.example/no" data-nurture-notrack>untracked</a>',
        '<img src="https://cdn.example/logo.png" alt="">',
        '<!--[if mso]><a href="https://outlook.example/">vml</a><![endif]-->',
        "<script>var a = '<a href=\"https://script.example/\">';</script>",
        "<p>&amp; &copy; &#169;</p>",
        "<br/>",
    ]
)


@given(pieces=st.lists(st.one_of(texts, fixed, links), max_size=12), wrap=st.booleans())
def test_rewrite_links_changes_only_the_href_values_and_each_decodes_back(
    pieces: list[str | tuple[str, str, str, str]], wrap: bool
) -> None:
    # Given a document of text, markup that is not a trackable link, and http(s) links written every way
    def make_url(url: str) -> str:
        return click_url(BASE, lead_id=7, delivery_id=42, url=url, key=KEY)

    source, expected, targets = [], [], []
    for piece in pieces:
        if isinstance(piece, str):
            source.append(piece)
            expected.append(piece)
        else:
            before, raw, after, url = piece
            source.append(f"{before}{raw}{after}x</a>")
            expected.append(f'{before}"{escape(make_url(url), quote=True)}"{after}x</a>')
            targets.append(url)
    head, tail = ("<html><body>", "</body></html>") if wrap else ("", "")
    html = head + "".join(source) + tail

    # When its links are rewritten
    rewritten = rewrite_links(html, make_url, skip=lambda url: url == KEEP)

    # Then every other byte is as it was, and each new href names the link's original URL
    assert rewritten == head + "".join(expected) + tail
    hrefs = re.findall(r'href\s*=\s*"https://t\.example/t/c/([^"]+)"', rewritten, re.IGNORECASE)
    assert [read_token(token, kind="c", key=KEY).url for token in hrefs] == targets


@given(html=st.text(max_size=200))
def test_rewrite_links_never_fails_and_an_identity_rewrite_changes_nothing(html: str) -> None:
    assert rewrite_links(html, lambda url: url) == html
    rewrite_links(html, lambda _url: "https://t.example/t/c/x")


@given(html=st.text(alphabet="<>aA hrefHREF=\"'&;#x/!-[]tps:.", max_size=120))
def test_rewrite_links_survives_markup_shaped_garbage(html: str) -> None:
    rewritten = rewrite_links(html, lambda _url: "https://t.example/t/c/x")
    assert rewrite_links(html, lambda url: url) == html
    assert isinstance(rewritten, str)


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("https://a.example/?a=1&amp;b=2", "https://a.example/?a=1&b=2"),
        ("https://a.example/?a=1&region=eu&copy2=1", "https://a.example/?a=1&region=eu&copy2=1"),
        ("https://a.example/?a=1&#38;b=2", "https://a.example/?a=1&b=2"),
        ("  https://a.example/x \n", "https://a.example/x"),
    ],
)
def test_rewrite_links_reads_an_href_as_a_browser_does(raw: str, url: str) -> None:
    seen: list[str] = []

    def make_url(found: str) -> str:
        seen.append(found)
        return found

    rewrite_links(f'<a href="{raw}">x</a>', make_url)
    assert seen == [url]
    assert attribute_text("&reg;&reg &regx") == "®® &regx"


def test_add_open_pixel_goes_before_the_last_closing_body_or_at_the_end() -> None:
    pixel = '<img src="https://t.example/t/o/a.b?x=1&amp;y" width="1" height="1" alt="" border="0">'
    url = "https://t.example/t/o/a.b?x=1&y"
    assert add_open_pixel("<p>x</p></BODY ></html>", url) == f"<p>x</p>{pixel}</BODY ></html>"
    assert add_open_pixel("<body>a</body>b</body>", url) == f"<body>a</body>b{pixel}</body>"
    assert add_open_pixel("<p>no body</p>", url) == f"<p>no body</p>{pixel}"


def test_track_html_keeps_the_unsubscribe_link_and_our_own_links_and_adds_the_pixel() -> None:
    ours = f"{BASE}/t/p/share-token"
    html = (
        f'<body><a href="https://acme.example/guide">guide</a><a href="{KEEP}">unsubscribe</a>'
        f'<a href="{ours}">proposal</a><a href="https://acme.example/{"x" * 3500}">long</a></body>'
    )
    tracked = track_html(html, base_url=BASE + "/", lead_id=7, delivery_id=42, key=KEY, keep={KEEP})
    [click] = re.findall(r'href="https://t\.example/t/c/([^"]+)"', tracked)
    assert read_token(click, kind="c", key=KEY) == TrackedLink("c", 7, 42, "https://acme.example/guide")
    for unchanged in (KEEP, ours, "x" * 3500):
        assert unchanged in tracked
    [pixel] = re.findall(r'<img src="https://t\.example/t/o/([^"]+)"[^>]*></body>$', tracked)
    assert read_token(pixel, kind="o", key=KEY) == TrackedLink("o", 7, 42)
