// Checks attachments before the upload starts, so a customer is told "too large" at once instead
// of waiting for a long upload to fail (the server checks again; this is only a courtesy). Applies
// to every form that carries the limits (data-max-files): the contact form and the status page's
// "add a message".
(function () {
  "use strict";
  var forms = document.querySelectorAll("form[data-max-files]");
  Array.prototype.forEach.call(forms, function (form) {
    var input = form.querySelector("input[type=file]");
    var out = form.querySelector("#attachments-client-error");
    var button = form.querySelector("button[type=submit]");
    if (!input || !out || !button) { return; }
    var maxFiles = parseInt(form.getAttribute("data-max-files"), 10);
    var maxBytes = parseInt(form.getAttribute("data-max-bytes"), 10);

    function check() {
      var problem = "";
      if (input.files.length > maxFiles) {
        problem = form.getAttribute("data-too-many");
      } else {
        for (var i = 0; i < input.files.length; i++) {
          if (input.files[i].size > maxBytes) {
            problem = form.getAttribute("data-too-large").replace("{filename}", input.files[i].name);
            break;
          }
        }
      }
      input.setCustomValidity(problem);
      out.textContent = problem;
      out.hidden = !problem;
    }

    input.addEventListener("change", check);
    form.addEventListener("submit", function (event) {
      check();
      if (!form.checkValidity()) { event.preventDefault(); form.reportValidity(); return; }
      // One click, one message (the server deduplicates anyway).
      window.setTimeout(function () { button.disabled = true; }, 0);
    });
    // Coming back with the browser's Back button must not leave the button disabled.
    window.addEventListener("pageshow", function () { button.disabled = false; });
  });
})();
