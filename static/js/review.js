// Keyboard flow on the review page: a accept, e edit, r reject reason, n next task,
// Ctrl+Enter saves the edit. Keys are ignored while typing in a field (except Ctrl+Enter)
// and while the slide viewer has focus: there they are the viewer's (a pans left there).
(function () {
  "use strict";
  function typing(el) {
    return el && (el.tagName === "TEXTAREA" || el.tagName === "INPUT" ||
      el.tagName === "SELECT" || el.isContentEditable);
  }
  function inViewer(el) {
    return !!(el && el.closest && el.closest("#viewer"));
  }
  document.addEventListener("keydown", function (event) {
    var form = document.getElementById("decision-form");
    if (inViewer(event.target)) {
      return;
    }
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && form) {
      event.preventDefault();
      var target = document.activeElement && document.activeElement.id === "id_reason" ? "reject" : "save-edit";
      document.getElementById(target).click();
      return;
    }
    if (typing(event.target) || typing(document.activeElement) || event.ctrlKey || event.metaKey || event.altKey) {
      return;
    }
    if (event.key === "a" && form) {
      event.preventDefault();
      document.getElementById("accept").click();
    } else if (event.key === "e" && form) {
      event.preventDefault();
      document.getElementById("id_text").focus();
    } else if (event.key === "r" && form) {
      event.preventDefault();
      document.getElementById("id_reason").focus();
    } else if (event.key === "n") {
      var next = document.getElementById("next-link");
      if (next) { window.location.assign(next.href); }
    }
  });
  // Back/Forward may restore this page from the browser's memory (bfcache) despite
  // no-store: its decision form would be stale, so load what is saved now.
  window.addEventListener("pageshow", function (event) {
    if (event.persisted && document.getElementById("decision-form")) {
      window.location.reload();
    }
  });
})();
