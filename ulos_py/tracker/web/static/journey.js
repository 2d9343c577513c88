// A journey's stage output, fetched through the tracker (GET /api/tasks/{id}/output) when
// asked for and shown as text, one box per `output_*.txt` (the tracker heads each with
// `==> name <==`): the files' content never becomes HTML.
(function () {
  "use strict";
  var HEADER = /^==> (.*) <==$/;

  function show(target, name, text) {
    var box = document.createElement("details");
    box.open = true;
    var title = document.createElement("summary");
    title.textContent = name;
    var body = document.createElement("pre");
    body.className = "output-text";
    body.textContent = text;
    box.appendChild(title);
    box.appendChild(body);
    target.appendChild(box);
  }

  function showFiles(target, text) {
    var name = "output";
    var lines = [];
    var shown = 0;
    var flush = function () {
      if (lines.length || shown === 0) { show(target, name, lines.join("\n").replace(/\n+$/, "")); shown += 1; }
      lines = [];
    };
    text.split("\n").forEach(function (line) {
      var header = HEADER.exec(line);
      if (header) {
        if (lines.length) { flush(); }
        name = header[1];
      } else {
        lines.push(line);
      }
    });
    flush();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var section = document.querySelector("[data-output]");
    var button = document.getElementById("load-output");
    if (!section || !button) { return; }
    button.addEventListener("click", function () {
      var target = document.getElementById("output-files");
      target.textContent = "";
      button.disabled = true;
      fetch(section.dataset.output, { cache: "no-store" })
        .then(function (response) {
          return response.text().then(function (text) {
            if (response.ok) { showFiles(target, text); return; }
            var reason = text;
            try { reason = JSON.parse(text).detail || text; } catch (error) { /* plain text */ }
            show(target, "not available (" + response.status + ")", String(reason));
          });
        })
        .catch(function (error) { show(target, "not available", String(error)); })
        .then(function () { button.disabled = false; });
    });
  });
})();
