// A journey's stage output, fetched through the tracker (GET /api/tasks/{id}/output) when
// asked for, and shown as text: the files' content never becomes HTML.
(function () {
  "use strict";

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

  function render(target, response) {
    var type = response.headers.get("Content-Type") || "";
    if (type.indexOf("application/json") === 0) {
      return response.json().then(function (data) {
        var files = Array.isArray(data) ? data : (data.files || data.items || []);
        if (!files.length) { show(target, "no output", "The task's zip holds no stage output yet."); }
        files.forEach(function (file) {
          show(target, String(file.name || file.path || "output"), String(file.text || file.content || ""));
        });
      });
    }
    return response.text().then(function (text) { show(target, "output", text); });
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
          if (!response.ok) {
            return response.text().then(function (text) {
              var reason = text;
              try { reason = JSON.parse(text).detail || text; } catch (error) { /* plain text */ }
              show(target, "not available (" + response.status + ")", String(reason));
            });
          }
          return render(target, response);
        })
        .catch(function (error) { show(target, "not available", String(error)); })
        .then(function () { button.disabled = false; });
    });
  });
})();
