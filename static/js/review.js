// Keyboard flow on the review page: a accept, e edit, r reject reason, s skip, n next task,
// u undo the last decision, ? the list of shortcuts, Ctrl+Enter saves the edit (or the rejection), Esc leaves a field.
// Keys typed in a field are text, never commands (except Ctrl+Enter and Esc), and keys
// pressed while the slide viewer has focus are the viewer's (a pans left there).
(function () {
  "use strict";
  function typing(el) {
    return el && (el.tagName === "TEXTAREA" || el.tagName === "INPUT" ||
      el.tagName === "SELECT" || el.isContentEditable);
  }
  function inViewer(el) {
    return !!(el && el.closest && el.closest("#viewer"));
  }
  function click(id) {
    var el = document.getElementById(id);
    if (el) { el.click(); }
    return !!el;
  }
  function focus(id) {
    var el = document.getElementById(id);
    if (el) { el.focus(); }
    return !!el;
  }
  document.addEventListener("keydown", function (event) {
    var form = document.getElementById("decision-form");
    if (inViewer(event.target)) {
      return;
    }
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && form) {
      event.preventDefault();
      var target = document.activeElement && document.activeElement.id === "id_reason" ? "reject" : "save-edit";
      click(target);
      return;
    }
    if (event.key === "Escape" && typing(document.activeElement)) {
      // Out of the field: the next key is a command again (the viewer's Esc, drawing, is
      // not concerned: it listens only outside fields).
      document.activeElement.blur();
      event.preventDefault();
      return;
    }
    if (typing(event.target) || typing(document.activeElement) || event.ctrlKey || event.metaKey || event.altKey) {
      return;
    }
    var key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    var done = false;
    if (key === "a" && form) {
      done = click("accept");
    } else if (key === "e" && form) {
      done = focus("id_text");
    } else if (key === "r" && form) {
      done = focus("id_reason");
    } else if (key === "s") {
      done = click("skip");
    } else if (key === "u") {
      done = click("undo");
    } else if (key === "?") {
      var list = document.getElementById("shortcuts");
      if (list) { list.open = !list.open; done = true; }
    } else if (key === "n") {
      var next = document.getElementById("next-link");
      if (next) { window.location.assign(next.href); done = true; }
    }
    if (done) { event.preventDefault(); }
  });
  // After a decision is saved, or the next task is swapped in, htmx gives the focus back to
  // the field of the same id: keys would type into it. Leave the field; a new task's title
  // takes the focus, so that a screen reader says which task this is.
  // A refused decision (409: decided elsewhere meanwhile; 422: the form is incomplete)
  // swaps in a message: it takes the focus, so that a screen reader says it and the keys
  // work at once (the focus would otherwise fall to the page, or stay in a field).
  document.addEventListener("htmx:afterSettle", function (event) {
    var xhr = event.detail.xhr;
    var target = event.detail.target;
    if (!xhr || !target || (target.id !== "decision" && target.id !== "review-area")) {
      return;
    }
    if (xhr.status === 409 || xhr.status === 422) {
      var message = document.getElementById("conflict") || document.getElementById("decision-errors");
      if (message) { message.focus(); }
      return;
    }
    if (xhr.status !== 200) {
      return;
    }
    var title = document.getElementById("review-title");
    if (target.id === "review-area" && title) {
      title.focus();
    } else if (typing(document.activeElement)) {
      document.activeElement.blur();
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
