/* Live logs of the imaginator pages: keep the newest line in view unless the
 * reader scrolled up (scrolling back to the end follows again).
 *
 * data-mode="stream" (/followBuildLog): the page itself grows while the
 * server streams the log; follow it until the page has loaded (the build
 * ended and its result was appended).
 * data-mode="poll" (/showCurrentBuildLog, /logs): every 2 s fetch the page
 * again and replace its #live part, until that part says it is no longer
 * "running" (the build ended: the new part shows its result and links).
 * Without JavaScript the pages reload themselves (<noscript> refresh).
 */
(function () {
  "use strict";
  var mode = (document.currentScript && document.currentScript.dataset.mode) || "poll";
  var POLL_MS = 2000;
  var SLACK = 48; // pixels from the end that still count as "at the end"
  var follow = true;
  var lastTop = -1; // where the page last scrolled itself to

  function root() {
    return document.scrollingElement || document.documentElement;
  }
  function atEnd() {
    var r = root();
    return r.scrollTop + window.innerHeight >= r.scrollHeight - SLACK;
  }
  function toEnd() {
    var r = root();
    // Scrolled up since (even if the scroll event is not handled yet): stay there.
    if (lastTop >= 0 && r.scrollTop < lastTop - SLACK) {
      follow = false;
    }
    if (follow) {
      r.scrollTop = r.scrollHeight;
      lastTop = r.scrollTop;
    }
  }
  window.addEventListener("scroll", function () {
    var top = root().scrollTop;
    // At the end, or back down to where the page last followed the log (the
    // log may have grown before this event was handled): follow again.
    follow = atEnd() || (lastTop >= 0 && top >= lastTop - SLACK);
    if (follow) {
      lastTop = top;
    }
  }, { passive: true });

  if (mode === "stream") {
    var timer = setInterval(toEnd, 100);
    window.addEventListener("load", function () {
      clearInterval(timer);
      toEnd();
    });
    return;
  }

  function note(text) {
    var live = document.getElementById("live");
    var p = document.createElement("p");
    p.className = "state";
    p.textContent = text;
    if (live) {
      live.setAttribute("data-state", "gone");
      live.insertBefore(p, live.firstChild);
    }
  }

  function poll() {
    fetch(location.pathname + location.search, {
      cache: "no-store",
      headers: { Accept: "text/html" },
    }).then(function (response) {
      var type = response.headers.get("Content-Type") || "";
      return response.text().then(function (text) {
        if (!response.ok || type.indexOf("text/html") !== 0) {
          note(text.trim() || "the page is gone (" + response.status + ")");
          return;
        }
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("live");
        var live = document.getElementById("live");
        if (!fresh || !live) {
          return;
        }
        live.replaceWith(document.importNode(fresh, true));
        toEnd();
        if (fresh.getAttribute("data-state") === "running") {
          setTimeout(poll, POLL_MS);
        }
      });
    }, function () {
      setTimeout(poll, POLL_MS); // the daemon may be restarting: try again
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    toEnd();
    var live = document.getElementById("live");
    if (live && live.getAttribute("data-state") === "running") {
      setTimeout(poll, POLL_MS);
    }
  });
})();
