// The slide viewer of the review page: OpenSeadragon with a navigator and a scale bar, the
// patches the model was given (m shows or hides them; a click flies to one) and the
// reviewer's region pointers (b rectangle, p polygon), sent with the decision as GeoJSON
// Features in level-0 pixels. Written for the strict CSP: no inline scripts, no style
// attributes in markup (element.style from script is allowed), no eval.
(function () {
  "use strict";
  var OSD = window.OpenSeadragon;
  if (!OSD) { return; }
  var live = null; // the viewer on the page: {box, stop}

  // htmx swaps the review area whole for the next task of the queue: the old viewer goes,
  // with its listeners, and one starts on the new #viewer. Calling it again changes nothing.
  function start() {
    var box = document.getElementById("viewer");
    if (live && live.box === box) { return; }
    if (live) { live.stop(); live = null; }
    if (box) { live = setup(box); }
  }

  // Registered before any viewer's own listeners, so that an old viewer is stopped before
  // its handlers could touch the new task's form.
  document.addEventListener("htmx:afterSwap", start);
  start();
  window.medannotViewerStart = start;

  function setup(box) {
    var listening = new AbortController();
    var on = { signal: listening.signal };

    var SVG_NS = "http://www.w3.org/2000/svg";
    var MAX_POINTS = 999; // the server takes rings of up to 1000 points, the closing one included
    var width = Number(box.dataset.width) || 1;
    var height = Number(box.dataset.height) || 1;
    var mpp = Number(box.dataset.mpp) || 0;
    var list = document.getElementById("pointer-list");
    var editable = !!(list && list.dataset.editable);
    var status = document.getElementById("viewer-status");
    var modelRegions = readJson("model-regions");
    var pointers = readJson("saved-regions").map(fromFeature).filter(Boolean);
    var modelOverlays = [];
    var mode = null; // null, "rectangle" or "polygon"
    var sketch = null; // the shape being drawn: {points, overlay, start, down}

    // OpenSeadragon adds an inline <style> for touch screens unless it finds one; the CSP
    // refuses inline styles (even an empty one), so app.css carries its rule and a marker of
    // the same name stands in: an element outside the HTML namespace, never a style sheet.
    if (!document.querySelector("style[data-openseadragon-mobile-css]")) {
      var marker = document.createElementNS("urn:x-medannot:marker", "style");
      marker.setAttribute("data-openseadragon-mobile-css", "true");
      document.head.appendChild(marker);
    }

    box.hidden = false;
    var viewer = OSD({
      element: box,
      prefixUrl: box.dataset.prefix,
      tileSources: box.dataset.dzi || imageSource(),
      showNavigator: true,
      navigatorPosition: "TOP_RIGHT",
      showRotationControl: false,
      gestureSettingsMouse: { clickToZoom: false },
      visibilityRatio: 0.5,
      maxZoomPixelRatio: 4,
    });
    var openedFallback = !box.dataset.dzi;
    // No tiles for this image (not built yet, or unreadable): the preview still serves.
    viewer.addHandler("open-failed", function () {
      if (!openedFallback) {
        openedFallback = true;
        viewer.open(imageSource());
      }
    });
    viewer.addHandler("open", function () {
      drawModelRegions();
      drawPointers();
      updateScaleBar();
    });
    viewer.canvas.setAttribute("role", "application");
    viewer.canvas.setAttribute("aria-label", "Slide viewer, " + (box.dataset.label || "") +
      ": + and - zoom, arrow keys pan, 0 shows the whole image");
    viewer.canvas.id = "viewer-canvas";

    function imageSource() {
      return { type: "image", url: box.dataset.preview, buildPyramid: false };
    }

    function readJson(id) {
      var el = document.getElementById(id);
      if (!el) { return []; }
      try {
        var value = JSON.parse(el.textContent);
        return Array.isArray(value) ? value : [];
      } catch (e) {
        return [];
      }
    }

    function say(text) {
      if (status) { status.textContent = text; }
    }

    // ------------------------------------------------------------------ coordinates

    function item() { return viewer.world.getItemAt(0); }

    // Tile-source pixels per level-0 pixel: 1 for the DZI, less for the scaled preview.
    function scale() {
      var it = item();
      return it ? it.getContentSize().x / width : 1;
    }

    function viewportRect(x, y, w, h) {
      var s = scale();
      return item().imageToViewportRectangle(x * s, y * s, Math.max(w, 1) * s, Math.max(h, 1) * s);
    }

    function bbox(points) {
      var xs = points.map(function (p) { return p[0]; });
      var ys = points.map(function (p) { return p[1]; });
      var x = Math.min.apply(null, xs), y = Math.min.apply(null, ys);
      return { x: x, y: y, w: Math.max.apply(null, xs) - x, h: Math.max.apply(null, ys) - y };
    }

    function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }

    // The level-0 pixel under a pointer event, kept inside the image.
    function levelZeroPoint(event) {
      var r = viewer.container.getBoundingClientRect();
      var vp = viewer.viewport.pointFromPixel(new OSD.Point(event.clientX - r.left, event.clientY - r.top), true);
      var p = item().viewportToImageCoordinates(vp);
      var s = scale();
      return [clamp(p.x / s, 0, width), clamp(p.y / s, 0, height)];
    }

    function screenDistance(a, b) {
      var s = scale(), it = item();
      var pa = viewer.viewport.pixelFromPoint(it.imageToViewportCoordinates(a[0] * s, a[1] * s), true);
      var pb = viewer.viewport.pixelFromPoint(it.imageToViewportCoordinates(b[0] * s, b[1] * s), true);
      return pa.distanceTo(pb);
    }

    function flyTo(x, y, w, h) {
      var pad = Math.max(w, h) * 0.15;
      viewer.viewport.fitBoundsWithConstraints(viewportRect(x - pad, y - pad, w + 2 * pad, h + 2 * pad));
    }

    // ------------------------------------------------------------------ the model's patches

    function drawModelRegions() {
      modelOverlays = modelRegions.map(function (r, i) {
        var el = document.createElement("div");
        el.className = "model-region";
        el.title = "Patch " + (i + 1) + " the model was given: click to fly to it";
        viewer.addOverlay({ element: el, location: viewportRect(r.x, r.y, r.width, r.height) });
        // OpenSeadragon's own tracker: a click on an overlay, not a drag of the slide.
        new OSD.MouseTracker({
          element: el,
          clickHandler: function (e) {
            if (!mode && e.quick) { flyTo(r.x, r.y, r.width, r.height); }
          },
        });
        return el;
      });
    }

    function toggleModelRegions() {
      if (!modelRegions.length) { say("The model was given no patches of this image."); return; }
      var hidden = box.classList.toggle("hide-model-regions");
      say(hidden ? "The model's patches are hidden." : "The model's patches are shown.");
    }

    function flyToModelRegion(index) {
      var r = modelRegions[index];
      if (!r || !item()) { return; }
      box.classList.remove("hide-model-regions");
      flyTo(r.x, r.y, r.width, r.height);
    }

    // ------------------------------------------------------------------ region pointers

    function fromFeature(f) {
      try {
        var ring = f.geometry.coordinates[0];
        var props = f.properties || {};
        return { kind: props.kind === "rectangle" ? "rectangle" : "polygon",
                 points: ring.slice(0, -1), note: String(props.note || "") };
      } catch (e) {
        return null;
      }
    }

    function toFeature(p) {
      var ring = p.points.map(function (q) { return [round(q[0]), round(q[1])]; });
      ring.push(ring[0]);
      return { type: "Feature", geometry: { type: "Polygon", coordinates: [ring] },
               properties: { note: p.note.trim(), kind: p.kind } };
    }

    function round(v) { return Math.round(v * 100) / 100; }

    function shapeOverlay(points, className, number) {
      var el = document.createElement("div");
      el.className = className;
      var svg = document.createElementNS(SVG_NS, "svg");
      svg.setAttribute("preserveAspectRatio", "none");
      svg.setAttribute("aria-hidden", "true");
      svg.appendChild(document.createElementNS(SVG_NS, "polygon"));
      el.appendChild(svg);
      if (number) {
        var tag = document.createElement("span");
        tag.className = "pointer-number";
        tag.textContent = number;
        el.appendChild(tag);
      }
      var b = bbox(points);
      viewer.addOverlay({ element: el, location: viewportRect(b.x, b.y, b.w, b.h) });
      reshape(el, points);
      return el;
    }

    function reshape(el, points) {
      var b = bbox(points);
      var svg = el.firstChild;
      svg.setAttribute("viewBox", [b.x, b.y, Math.max(b.w, 1), Math.max(b.h, 1)].join(" "));
      svg.firstChild.setAttribute("points", points.map(function (p) { return p.join(","); }).join(" "));
      viewer.updateOverlay(el, viewportRect(b.x, b.y, b.w, b.h));
    }

    function drawPointers() {
      pointers.forEach(function (p, i) {
        if (p.overlay) { viewer.removeOverlay(p.overlay); }
        p.overlay = shapeOverlay(p.points, "pointer", String(i + 1));
      });
    }

    function renderList() {
      if (!list) { return; }
      list.textContent = "";
      pointers.forEach(function (p, i) {
        var li = document.createElement("li");
        var name = "Region " + (i + 1) + " (" + p.kind + ")";
        if (editable) {
          var label = document.createElement("label");
          label.htmlFor = "pointer-note-" + (i + 1);
          label.textContent = name + ", note";
          var input = document.createElement("input");
          input.type = "text";
          input.id = "pointer-note-" + (i + 1);
          input.className = "pointer-note";
          input.maxLength = 500;
          input.placeholder = "e.g. missed finding here";
          input.value = p.note;
          input.addEventListener("input", function () { p.note = input.value; sync(); });
          li.appendChild(label);
          li.appendChild(input);
        } else {
          li.appendChild(document.createTextNode(name + ": " + (p.note || "no note")));
        }
        li.appendChild(button("Show", "Show region " + (i + 1) + " on the slide", function () {
          var b = bbox(p.points);
          flyTo(b.x, b.y, b.w, b.h);
        }));
        if (editable) {
          li.appendChild(button("Remove", "Remove region " + (i + 1), function () {
            if (p.overlay) { viewer.removeOverlay(p.overlay); }
            pointers.splice(pointers.indexOf(p), 1);
            drawPointers();
            renderList();
            sync();
            say("Region " + (i + 1) + " removed.");
          }));
        }
        list.appendChild(li);
      });
      var empty = document.getElementById("pointer-empty");
      if (empty) { empty.hidden = pointers.length > 0; }
    }

    function button(text, label, onclick) {
      var b = document.createElement("button");
      b.type = "button";
      b.className = "link";
      b.textContent = text;
      b.setAttribute("aria-label", label);
      b.addEventListener("click", onclick);
      return b;
    }

    // The decision form's hidden field carries the pointers; htmx swaps the form, so write
    // it again whenever it may be sent.
    function sync() {
      if (!box.isConnected) { return; } // swapped out: the form on the page is another task's
      var input = document.getElementById("id_regions");
      if (input) { input.value = pointers.length ? JSON.stringify(pointers.map(toFeature)) : ""; }
    }

    function addPointer(kind, points) {
      var p = { kind: kind, points: points, note: "" };
      pointers.push(p);
      p.overlay = shapeOverlay(points, "pointer", String(pointers.length));
      renderList();
      sync();
      say("Region " + pointers.length + " added: type a note for it.");
      var input = document.getElementById("pointer-note-" + pointers.length);
      if (input) { input.focus(); }
    }

    // ------------------------------------------------------------------ drawing

    function startDrawing(kind) {
      if (!editable || !item()) { return; }
      stopDrawing();
      mode = kind;
      viewer.setMouseNavEnabled(false); // the mouse draws now; it pans again afterwards
      box.classList.add("drawing");
      pressed(kind);
      hint(kind === "rectangle"
        ? "Drag on the slide to draw a rectangle; Esc cancels."
        : "Click each corner on the slide; Enter or a click on the first corner closes it; Esc cancels.");
    }

    function stopDrawing() {
      if (sketch && sketch.overlay) { viewer.removeOverlay(sketch.overlay); }
      sketch = null;
      if (mode) {
        mode = null;
        viewer.setMouseNavEnabled(true);
      }
      box.classList.remove("drawing");
      pressed(null);
      hint("");
    }

    function pressed(kind) {
      ["rectangle", "polygon"].forEach(function (k) {
        var b = document.getElementById("draw-" + k);
        if (b) { b.setAttribute("aria-pressed", String(k === kind)); }
      });
    }

    function hint(text) {
      var el = document.getElementById("draw-hint");
      if (el) { el.textContent = text; }
    }

    function rectangle(a, b) {
      var x0 = Math.min(a[0], b[0]), x1 = Math.max(a[0], b[0]);
      var y0 = Math.min(a[1], b[1]), y1 = Math.max(a[1], b[1]);
      return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]];
    }

    function finishPolygon() {
      if (!sketch || sketch.points.length < 3) { return; }
      var points = sketch.points.slice();
      stopDrawing();
      addPointer("polygon", points);
    }

    viewer.canvas.addEventListener("pointerdown", function (event) {
      if (!mode || event.button !== 0) { return; }
      event.preventDefault();
      event.stopPropagation();
      var p = levelZeroPoint(event);
      if (mode === "rectangle") {
        viewer.canvas.setPointerCapture(event.pointerId);
        sketch = { start: p, points: rectangle(p, p) };
        sketch.overlay = shapeOverlay(sketch.points, "pointer sketch");
      } else {
        sketch = sketch || { points: [] };
        sketch.down = p;
      }
    });

    viewer.canvas.addEventListener("pointermove", function (event) {
      if (!mode || !sketch) { return; }
      var p = levelZeroPoint(event);
      if (mode === "rectangle" && sketch.start) {
        sketch.points = rectangle(sketch.start, p);
        reshape(sketch.overlay, sketch.points);
      } else if (mode === "polygon" && sketch.overlay && sketch.points.length) {
        reshape(sketch.overlay, sketch.points.concat([p]));
      }
    });

    viewer.canvas.addEventListener("pointerup", function (event) {
      if (!mode || !sketch) { return; }
      event.preventDefault();
      var p = levelZeroPoint(event);
      if (mode === "rectangle") {
        var points = rectangle(sketch.start, p);
        var tooSmall = screenDistance(points[0], points[2]) < 6;
        stopDrawing();
        if (!tooSmall) { addPointer("rectangle", points); }
        return;
      }
      if (!sketch.down || screenDistance(sketch.down, p) > 6) { return; } // a drag, not a click
      var pts = sketch.points;
      if (pts.length >= 3 && screenDistance(pts[0], p) < 10) { finishPolygon(); return; }
      if (pts.length && screenDistance(pts[pts.length - 1], p) < 4) { return; } // a double click
      pts.push(p);
      if (!sketch.overlay) {
        sketch.overlay = shapeOverlay(pts, "pointer sketch");
      } else {
        reshape(sketch.overlay, pts);
      }
      if (pts.length >= MAX_POINTS) { finishPolygon(); }
    });

    // ------------------------------------------------------------------ scale bar

    var scaleBar = document.createElement("div");
    scaleBar.className = "scalebar";
    var scaleInner = document.createElement("div");
    scaleInner.className = "scalebar-inner";
    scaleInner.hidden = true;
    var scaleLine = document.createElement("div");
    scaleLine.className = "scalebar-line";
    var scaleText = document.createElement("span");
    scaleText.className = "scalebar-text";
    scaleInner.appendChild(scaleLine);
    scaleInner.appendChild(scaleText);
    scaleBar.appendChild(scaleInner);
    viewer.addControl(scaleBar, { anchor: OSD.ControlAnchor.BOTTOM_LEFT, autoFade: false });

    // A bar of a round length (1, 2 or 5 × 10^k µm) about 120 screen pixels long.
    function updateScaleBar() {
      var it = item();
      if (!it || !mpp) { scaleInner.hidden = true; return; }
      var screenPerLevelZero = it.viewportToImageZoom(viewer.viewport.getZoom(true)) * scale();
      var micronsPerScreenPixel = mpp / screenPerLevelZero;
      var target = 120 * micronsPerScreenPixel;
      var unit = Math.pow(10, Math.floor(Math.log10(target)));
      var length = [5, 2, 1].map(function (m) { return m * unit; })
        .filter(function (v) { return v <= target; })[0] || unit;
      scaleLine.style.width = Math.round(length / micronsPerScreenPixel) + "px";
      var value = Number(length.toPrecision(1));
      scaleText.textContent = value >= 1000 ? value / 1000 + " mm" : value + " µm";
      scaleInner.hidden = false;
    }
    viewer.addHandler("animation", updateScaleBar);
    viewer.addHandler("resize", updateScaleBar);

    // ------------------------------------------------------------------ keys and buttons

    function typing(el) {
      return el && (el.tagName === "TEXTAREA" || el.tagName === "INPUT" ||
        el.tagName === "SELECT" || el.isContentEditable);
    }

    // Capture phase: OpenSeadragon's own keys (+ - 0 arrows w a s d) stay on its canvas.
    document.addEventListener("keydown", function (event) {
      if (typing(event.target) || event.ctrlKey || event.metaKey || event.altKey) { return; }
      var handled = true;
      if (event.key === "Escape" && mode) {
        stopDrawing();
        say("Drawing cancelled.");
      } else if (event.key === "Enter" && mode === "polygon") {
        finishPolygon();
      } else if (event.key === "m") {
        toggleModelRegions();
      } else if (event.key === "b" && editable) {
        startDrawing("rectangle");
      } else if (event.key === "p" && editable) {
        startDrawing("polygon");
      } else if (event.key === "v") {
        viewer.canvas.focus();
      } else {
        handled = false;
      }
      if (handled) { event.preventDefault(); }
    }, { capture: true, signal: listening.signal });

    document.addEventListener("click", function (event) {
      var fly = event.target.closest(".fly-to");
      if (fly) { flyToModelRegion(Number(fly.dataset.region)); }
      if (event.target.closest("#draw-rectangle")) { startDrawing("rectangle"); }
      if (event.target.closest("#draw-polygon")) { startDrawing("polygon"); }
    }, on);

    function revealControls() {
      document.querySelectorAll(".fly-to").forEach(function (b) { b.hidden = false; });
      sync();
    }

    document.addEventListener("submit", sync, { capture: true, signal: listening.signal });
    document.addEventListener("htmx:afterSwap", revealControls, on);
    var tools = document.getElementById("pointer-tools");
    if (tools) { tools.hidden = false; }
    renderList();
    revealControls();
    window.medannotViewer = viewer; // for the browser tests and the console
    return {
      box: box,
      stop: function () {
        listening.abort();
        viewer.destroy();
      },
    };
  }
})();
