// The upload page, enhanced: files and folders (dropped or chosen) go up through tus, in
// pieces that survive a dropped connection, each with its own progress bar; when every file
// is in, the batch is finished and its report swapped in. Without JavaScript, or without
// tus support, the plain form below posts as it always did.
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  var configNode = document.getElementById("upload-config");
  if (!form || !configNode || !window.tus || !window.tus.isSupported) { return; }
  var config = JSON.parse(configNode.textContent);
  var csrf = JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRFToken"];
  var picker = form.querySelector("input[type=file][name=files]");
  var folder = document.getElementById("upload-folder");
  var drop = document.getElementById("upload-drop");
  var panel = document.getElementById("upload-progress");
  var list = document.getElementById("upload-files");
  var total = document.getElementById("upload-batch-progress");
  var status = document.getElementById("upload-status");
  var slot = document.getElementById("upload-report");
  // The checksum reads this much of a file at a time (tests set it small).
  var HASH_SLICE_BYTES = config.hashSliceBytes || 8 * 1024 * 1024;
  var PARALLEL = 3;
  var dropped = [];  // {file, path} from drag and drop
  var batch = null;  // reused after a failure, so a retry resumes into the same batch

  drop.hidden = false;
  if (picker) { picker.removeAttribute("required"); }

  function say(text) { status.textContent = text; }

  // --- choosing files -------------------------------------------------------------------

  function chosen() {
    var items = dropped.slice();
    [picker, folder].forEach(function (input) {
      if (!input) { return; }
      Array.prototype.forEach.call(input.files, function (file) {
        items.push({ file: file, path: file.webkitRelativePath || "" });
      });
    });
    return items;
  }

  function readEntry(entry, into) {
    if (entry.isFile) {
      return new Promise(function (resolve) {
        entry.file(function (file) {
          into.push({ file: file, path: entry.fullPath.replace(/^\//, "") });
          resolve();
        }, function () { resolve(); });
      });
    }
    if (!entry.isDirectory) { return Promise.resolve(); }
    var reader = entry.createReader();
    return new Promise(function (resolve) {
      var children = [];
      (function more() {  // readEntries answers in parts of up to 100 entries
        reader.readEntries(function (part) {
          if (!part.length) {
            Promise.all(children.map(function (c) { return readEntry(c, into); })).then(resolve);
            return;
          }
          children = children.concat(Array.prototype.slice.call(part));
          more();
        }, function () { resolve(); });
      })();
    });
  }

  form.addEventListener("dragover", function (event) {
    event.preventDefault();
    drop.classList.add("dragging");
  });
  form.addEventListener("dragleave", function () { drop.classList.remove("dragging"); });
  form.addEventListener("drop", function (event) {
    event.preventDefault();
    drop.classList.remove("dragging");
    var items = event.dataTransfer.items;
    var found = [];
    var reads = [];
    if (items && items.length) {
      Array.prototype.forEach.call(items, function (item) {
        if (item.kind !== "file") { return; }
        // A folder comes as an entry to walk; a file without one (some browsers) as itself.
        var entry = item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
        var file = entry ? null : item.getAsFile();
        if (entry) { reads.push(readEntry(entry, found)); }
        if (file) { found.push({ file: file, path: "" }); }
      });
    } else {
      Array.prototype.forEach.call(event.dataTransfer.files, function (file) {
        found.push({ file: file, path: "" });
      });
    }
    Promise.all(reads).then(function () {
      dropped = dropped.concat(found);
      say(dropped.length + " file" + (dropped.length === 1 ? "" : "s") +
        " dropped. Press Upload to send them.");
    });
  });

  // --- sending --------------------------------------------------------------------------

  // Hashed in slices, so a multi-GB slide is checked in constant memory; "" when the file
  // cannot be read (moved, or the browser refused), and it goes without a checksum.
  function sha256(file, onSlice) {
    if (!window.sha256 || !file.slice || !Blob.prototype.arrayBuffer) { return Promise.resolve(""); }
    var hash = window.sha256.create();
    function from(start) {
      onSlice(file.size ? Math.floor(start * 100 / file.size) : 100);
      if (start >= file.size) { return Promise.resolve(hash.hex()); }
      var end = Math.min(start + HASH_SLICE_BYTES, file.size);
      return file.slice(start, end).arrayBuffer().then(function (data) {
        hash.update(data);
        return from(end);
      });
    }
    return from(0).catch(function () { return ""; });
  }

  function row(item, index) {
    var li = document.createElement("li");
    var label = document.createElement("label");
    var bar = document.createElement("progress");
    var note = document.createElement("span");
    bar.id = "upload-file-" + index;
    bar.max = 100;
    bar.value = 0;
    label.htmlFor = bar.id;
    label.textContent = item.path || item.file.name;  // textContent: a name is never HTML
    note.className = "upload-note";
    note.setAttribute("role", "status");  // "Checking …: 40%" is read out as it changes
    li.appendChild(label);
    li.appendChild(bar);
    li.appendChild(note);
    list.appendChild(li);
    return { bar: bar, note: note };
  }

  function send(item, view, onBytes) {
    var name = item.path || item.file.name;
    var shown = -1;
    function checking(percent) {
      if (percent === shown) { return; }  // one update a percent, not one a slice
      shown = percent;
      view.note.textContent = " Checking " + name + ": " + percent + "%.";
    }
    return sha256(item.file, checking).then(function (checksum) {
      view.note.textContent = checksum
        ? " Checked."
        : " This file could not be read to check it; sent without a checksum.";
      var metadata = {
        filename: item.file.name,
        filetype: item.file.type || "application/octet-stream",
        relativePath: item.path,
        batch: String(batch.batch),
      };
      if (checksum) { metadata.sha256 = checksum; }
      return new Promise(function (resolve) {
        var upload = new window.tus.Upload(item.file, {
          endpoint: config.endpoint,
          chunkSize: config.chunkSize,
          retryDelays: [0, 1000, 3000, 5000, 10000, 20000],
          metadata: metadata,
          headers: { "X-CSRFToken": csrf },
          removeFingerprintOnSuccess: true,
          fingerprint: function (file) {  // resume only into this batch
            return Promise.resolve(["medannot", config.endpoint, batch.batch, item.path,
              file.name, file.size, file.lastModified].join("|"));
          },
          onProgress: function (sent, size) {
            view.bar.value = size ? Math.floor(sent * 100 / size) : 100;
            onBytes(item, sent);
          },
          onSuccess: function () {
            view.bar.value = 100;
            onBytes(item, item.file.size);
            view.note.textContent += " Sent.";
            resolve(true);
          },
          onError: function (error) {
            var answer = error.originalResponse ? error.originalResponse.getBody() : "";
            view.note.textContent = " Not sent: " + (answer || "the connection failed") + ".";
            resolve(false);
          },
        });
        upload.findPreviousUploads().then(function (previous) {
          if (previous.length) { upload.resumeFromPreviousUpload(previous[0]); }
          upload.start();
        });
      });
    });
  }

  function startBatch() {
    if (batch) { return Promise.resolve(batch); }
    return fetch(config.batches, {
      method: "POST",
      headers: { "X-CSRFToken": csrf },
      credentials: "same-origin",
    }).then(function (response) {
      if (!response.ok) { throw new Error("the server answered " + response.status); }
      return response.json();
    }).then(function (answer) { batch = answer; return batch; });
  }

  function finish() {
    say("All files are in. Checking and storing them…");
    return fetch(batch.finish, {
      method: "POST",
      headers: { "X-CSRFToken": csrf, "HX-Request": "true" },
      credentials: "same-origin",
    }).then(function (response) {
      if (!response.ok) { throw new Error("the server answered " + response.status); }
      return response.text();
    }).then(function (html) {
      var old = document.getElementById("upload-results");
      if (old) { old.remove(); }  // the plain form's results, from an earlier post
      slot.innerHTML = html;  // the server's escaped report
      batch = null;
      dropped = [];
      form.reset();
      say("Upload finished: the report is below.");
      var heading = slot.querySelector("h2");
      if (heading) { heading.setAttribute("tabindex", "-1"); heading.focus(); }
    });
  }

  function run(items) {
    var sizes = items.reduce(function (sum, item) { return sum + item.file.size; }, 0);
    var sent = new Map();
    function onBytes(item, bytes) {
      sent.set(item, bytes);
      var done = 0;
      sent.forEach(function (n) { done += n; });
      total.value = sizes ? Math.floor(done * 100 / sizes) : 100;
    }
    list.textContent = "";
    total.value = 0;
    panel.hidden = false;
    var views = items.map(row);
    var next = 0;
    var failed = 0;
    function worker() {
      if (next >= items.length) { return Promise.resolve(); }
      var i = next++;
      return send(items[i], views[i], onBytes).then(function (ok) {
        if (!ok) { failed += 1; }
        return worker();
      });
    }
    say("Sending " + items.length + " file" + (items.length === 1 ? "" : "s") + "…");
    var workers = [];
    for (var w = 0; w < Math.min(PARALLEL, items.length); w++) { workers.push(worker()); }
    return Promise.all(workers).then(function () {
      if (failed) {
        say(failed + " file" + (failed === 1 ? " was" : "s were") +
          " not sent. Press Upload again to resume them; the others are kept.");
        return null;
      }
      total.value = 100;
      return finish();
    });
  }

  form.addEventListener("submit", function (event) {
    var items = chosen();
    if (!items.length) { return; }  // let the form say "choose a file"
    event.preventDefault();
    startBatch()
      .then(function () { return run(items); })
      .catch(function (error) { say("The upload could not start: " + error.message + "."); });
  });
})();
