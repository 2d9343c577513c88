// Live pages: when the tracker's event stream says a task changed, fetch the page's live
// part again (`?partial=1`, rendered and escaped by the server) and put it in place. At most
// one fetch a second however many events come; a journey page only reacts to its own task.
// Every 15 s it refreshes anyway: a task becomes stuck by the clock, with no event to say so.
// Rows with data-href open their task. No framework, no build step.
(function () {
  "use strict";
  var status = null;
  var region = null;
  var pending = false;
  var last = 0;
  var inFlight = false;

  function say(text, state) {
    if (status) { status.textContent = text; status.dataset.state = state; }
  }

  function partialUrl() {
    var url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    return url.toString();
  }

  function refresh() {
    if (inFlight) { pending = true; return; }
    var wait = 1000 - (Date.now() - last);
    if (wait > 0) {
      if (!pending) { pending = true; setTimeout(function () { pending = false; refresh(); }, wait); }
      return;
    }
    inFlight = true;
    last = Date.now();
    fetch(partialUrl(), { headers: { "Accept": "text/html" }, cache: "no-store" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html !== null) {
          region.innerHTML = html;
          region.dataset.refreshed = String(Date.now());
        }
      })
      .catch(function () { say("offline", "error"); })
      .then(function () {
        inFlight = false;
        if (pending) { pending = false; refresh(); }
      });
  }

  function concerns(event) {
    var wanted = region.dataset.taskId;
    if (wanted === undefined) { return true; }
    try {
      var data = JSON.parse(event.data);
      return !data || typeof data.taskId !== "string" || data.taskId === wanted;
    } catch (error) {
      return true;
    }
  }

  function listen() {
    if (!window.EventSource) { say("no live updates", "error"); return; }
    var source = new EventSource("/api/events");
    var onEvent = function (event) { if (concerns(event)) { refresh(); } };
    source.onopen = function () { say("live", "live"); };
    source.onerror = function () { say("reconnecting…", "error"); };
    source.onmessage = onEvent;
    ["task", "change", "update"].forEach(function (name) { source.addEventListener(name, onEvent); });
  }

  function openRow(event) {
    if (event.target.closest("a, button, input, select")) { return; }
    var row = event.target.closest("tr[data-href]");
    if (row) { window.location.assign(row.dataset.href); }
  }

  document.addEventListener("DOMContentLoaded", function () {
    status = document.getElementById("live-status");
    region = document.querySelector("main[data-live]");
    document.addEventListener("click", openRow);
    if (region) {
      listen();
      setInterval(refresh, 15000);
    } else {
      say("", "off");
    }
  });
})();
