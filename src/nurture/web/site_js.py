"""The snippet the marketing site embeds (`<script src="{base}/t/site.js" async></script>`).

A tracked click lands on the site with `nl=<visitor token>` in its URL. The script keeps that token on the
site's own domain (localStorage, and a first-party cookie as a fallback), takes it out of the address bar so a
shared or bookmarked URL does not carry it, and on every page load of a known visitor posts
`{token, url, referrer}` to `/t/v`. It posts as text/plain, a CORS-safelisted type, so neither
`navigator.sendBeacon` nor `fetch(..., {keepalive: true})` needs a preflight; no cookie of ours is involved.
A single-page site calls `window.nurtureTrackPage()` after each client-side navigation.
"""

from __future__ import annotations

import json
from typing import Final

_TEMPLATE: Final = """(function () {
  "use strict";
  var endpoint = %(endpoint)s;
  var name = "nurture_nl";
  var token = null;
  var query = window.location.search.replace(/^\\?/, "");
  var parts = query ? query.split("&") : [];
  var kept = [];
  for (var i = 0; i < parts.length; i++) {
    if (parts[i].slice(0, 3) === "nl=") { token = parts[i].slice(3) || token; }
    else if (parts[i] !== "nl") { kept.push(parts[i]); }
  }
  if (token) {
    try { window.localStorage.setItem(name, token); } catch (e) {}
    document.cookie = name + "=" + token + "; path=/; max-age=31536000; SameSite=Lax" +
      (window.location.protocol === "https:" ? "; Secure" : "");
    try {
      window.history.replaceState(window.history.state, "", window.location.pathname +
        (kept.length ? "?" + kept.join("&") : "") + window.location.hash);
    } catch (e) {}
  } else {
    try { token = window.localStorage.getItem(name); } catch (e) {}
    if (!token) {
      var found = document.cookie.match(/(?:^|;\\s*)nurture_nl=([^;]+)/);
      token = found ? found[1] : null;
    }
  }
  function trackPage() {
    if (!token) { return; }
    var body = JSON.stringify({token: token, url: window.location.href, referrer: document.referrer || null});
    try {
      if (navigator.sendBeacon && navigator.sendBeacon(endpoint, new Blob([body], {type: "text/plain"}))) {
        return;
      }
    } catch (e) {}
    try {
      window.fetch(endpoint, {method: "POST", body: body, keepalive: true, mode: "cors", credentials: "omit",
        headers: {"Content-Type": "text/plain"}});
    } catch (e) {}
  }
  window.nurtureTrackPage = trackPage;
  trackPage();
})();
"""


def site_script(visit_url: str) -> str:
    """Return the snippet's source, posting to `visit_url` (the absolute URL of `/t/v`)."""
    endpoint = json.dumps(visit_url).replace("<", "\\u003c")  # a URL can never close the script element
    return _TEMPLATE % {"endpoint": endpoint}
