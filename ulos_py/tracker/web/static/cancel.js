// A journey's cancel form (shown only when the tracker has a token): the operator types the
// token, and it goes in this one request's Authorization header to POST
// /api/tasks/{id}/cancel. The page never holds it otherwise (the server does not write it
// into the page, nothing stores it) and the field is emptied once the request is answered.
(function () {
  "use strict";

  function reasonOf(response, text) {
    try { return JSON.parse(text).detail || text; } catch (error) { return text; }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var section = document.querySelector("[data-cancel]");
    var form = document.getElementById("cancel-form");
    var result = document.getElementById("cancel-result");
    if (!section || !form || !result) { return; }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var token = form.elements.token.value;
      var body = { reason: form.elements.reason.value };
      if (form.elements.by.value) { body.by = form.elements.by.value; }
      var button = form.querySelector("button");
      button.disabled = true;
      result.dataset.state = "sending";
      result.textContent = "Sending the cancel…";
      fetch(section.dataset.cancel, {
        method: "POST",
        cache: "no-store",
        credentials: "omit",
        headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" },
        body: JSON.stringify(body)
      })
        .then(function (response) {
          return response.text().then(function (text) {
            if (response.status === 202) {
              var sent = JSON.parse(text);
              result.dataset.state = "sent";
              result.textContent = "Cancel sent by " + sent.cancelledBy + " at " + sent.cancelledAt +
                ". The task turns cancelled when the node that has it stops it.";
              form.hidden = true;
              return;
            }
            result.dataset.state = "refused";
            result.textContent = response.status === 401
              ? "The token was not accepted: nothing was cancelled."
              : "Not cancelled (" + response.status + "): " + String(reasonOf(response, text));
          });
        })
        .catch(function (error) {
          result.dataset.state = "refused";
          result.textContent = "Not cancelled: " + String(error);
        })
        .then(function () {
          form.elements.token.value = "";
          button.disabled = false;
        });
    });
  });
})();
