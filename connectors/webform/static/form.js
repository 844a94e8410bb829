// Checks attachments before the upload starts, so a customer is told "too large" at once instead
// of waiting for a long upload to fail (the server checks again; this is only a courtesy).
(function () {
  "use strict";
  var form = document.getElementById("contact-form");
  if (!form) { return; }
  var input = document.getElementById("attachments");
  var out = document.getElementById("attachments-client-error");
  var button = document.getElementById("submit");
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
})();
