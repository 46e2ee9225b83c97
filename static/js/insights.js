// The insights page's plots, drawn by Chart.js from the data the page carries in
// #insights-data (json_script: no inline script, strict CSP). The htmx poll swaps the
// figures part whole; its new canvases are drawn again from its new data.
(function () {
  "use strict";
  // Dark enough on white for WCAG's 3:1 for graphics; each series is also named in the
  // legend and the data table, so colour is never the only cue.
  var COLOURS = ["#1f5fa8", "#b35900", "#a3123a", "#2e7d32", "#5b3f99", "#00646e"];

  function datasets(plot) {
    return plot.series.map(function (s, i) {
      var colour = COLOURS[i % COLOURS.length];
      return {
        label: s.name,
        data: s.values,
        backgroundColor: colour,
        borderColor: colour,
        borderWidth: plot.kind === "line" ? 2 : 0,
        pointStyle: ["circle", "rect", "triangle", "rectRot"][i % 4],
        fill: false
      };
    });
  }

  function draw(plot, canvas) {
    var stacked = plot.kind === "stacked";
    var existing = window.Chart.getChart(canvas);
    if (existing) { existing.destroy(); }
    return new window.Chart(canvas, {
      type: plot.kind === "line" ? "line" : "bar",
      data: { labels: plot.labels, datasets: datasets(plot) },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        plugins: { legend: { display: plot.series.length > 1, labels: { usePointStyle: true } } },
        scales: {
          x: { stacked: stacked, ticks: { color: "#333" } },
          y: {
            stacked: stacked,
            beginAtZero: true,
            ticks: { color: "#333", precision: 0 },
            title: { display: !!plot.y_title, text: plot.y_title, color: "#333" }
          }
        }
      }
    });
  }

  function drawAll(root) {
    var source = root.getElementById("insights-data");
    if (!source || !window.Chart) { return; }
    var plots = JSON.parse(source.textContent);
    plots.forEach(function (plot) {
      var canvas = document.querySelector('canvas[data-plot="' + plot.key + '"]');
      if (canvas) { draw(plot, canvas); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () { drawAll(document); });
  document.addEventListener("htmx:afterSwap", function () {
    if (document.getElementById("insights-data")) { drawAll(document); }
  });
})();
