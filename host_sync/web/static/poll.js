// Live parts of a page without a reload: every element with data-poll="URL" has its content
// replaced by what URL returns (an HTML fragment), every data-every milliseconds. A signed-out
// session (401) reloads the page, which then shows the sign-in form. Twenty lines instead of a
// front-end framework: nothing to build, nothing fetched from elsewhere (CSP: script-src 'self').
(function () {
  function poll(el) {
    var url = el.getAttribute("data-poll"), every = +el.getAttribute("data-every") || 2000;
    function tick() {
      if (el.contains(document.activeElement) && document.activeElement !== document.body) {
        return setTimeout(tick, every);  // someone is typing in it: leave it alone
      }
      fetch(url, {credentials: "same-origin", headers: {"X-Requested-With": "poll"}})
        .then(function (r) { if (r.status === 401) { location.reload(); } return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null && el.innerHTML !== html) { el.innerHTML = html; } })
        .catch(function () {})
        .then(function () { setTimeout(tick, every); });
    }
    setTimeout(tick, every);
  }
  document.querySelectorAll("[data-poll]").forEach(poll);
})();
