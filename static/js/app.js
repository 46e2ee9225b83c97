// A request htmx could not complete (network down, server error) must never look saved:
// show a banner and leave the page, with whatever the reviewer typed, as it is.
(function () {
  "use strict";
  var banner = function () { return document.getElementById("connection-problem"); };
  document.addEventListener("htmx:sendError", function () { banner().hidden = false; });
  document.addEventListener("htmx:responseError", function (event) {
    var el = banner();
    el.textContent = "Not saved: the server answered " + event.detail.xhr.status +
      ". Nothing you typed is lost; try again.";
    el.hidden = false;
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    if (event.detail.successful) { banner().hidden = true; }
  });
})();

// The project page polls: #project-status is swapped whole every few seconds. A live region
// outside it takes the new summary only when it changed, so a screen reader announces
// progress once.
(function () {
  "use strict";
  document.addEventListener("htmx:afterSwap", function () {
    var tasks = document.getElementById("project-status");
    var region = document.getElementById("tasks-status");
    if (!tasks || !region || !tasks.dataset.status) { return; }
    if (region.textContent !== tasks.dataset.status) { region.textContent = tasks.dataset.status; }
  });
})();
