// clearml-hooks web UI: draws the figures embedded as JSON, and the table's column chooser,
// row selection and compare button. No inline scripts: the CSP allows only this file and plotly.
"use strict";

function drawFigures() {
  if (typeof Plotly === "undefined") return;
  document.querySelectorAll("script.figure").forEach(function (node) {
    var target = document.getElementById(node.dataset.target);
    if (!target || target.dataset.drawn) return;
    var fig = JSON.parse(node.textContent);
    Plotly.newPlot(target, fig.data || [], fig.layout || {},
                   {displaylogo: false, responsive: true}).then(function () {
      target.dataset.drawn = "1";
    });
  });
}

function loadPlotly() {
  if (!document.querySelector("script.figure")) return;
  var s = document.createElement("script");
  s.src = "/static/plotly.min.js";
  s.onload = drawFigures;
  document.head.appendChild(s);
}

function columnChooser() {
  var form = document.getElementById("columns-form");
  if (!form) return;
  form.addEventListener("submit", function () {
    var keys = [];
    form.querySelectorAll("input.col:checked").forEach(function (c) { keys.push(c.value); });
    var extra = document.getElementById("column-add").value.trim();
    if (extra && keys.indexOf(extra) < 0) keys.push(extra);
    document.getElementById("columns-value").value = keys.join(",");
  });
}

function selection() {
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input.select").forEach(function (c) { c.checked = all.checked; });
    });
  }
  var compare = document.getElementById("compare-selected");
  if (compare) {
    compare.addEventListener("click", function () {
      var ids = [];
      document.querySelectorAll("input.select:checked").forEach(function (c) { ids.push(c.value); });
      if (ids.length) window.location.href = "/compare?ids=" + encodeURIComponent(ids.join(","));
    });
  }
}

document.addEventListener("DOMContentLoaded", function () {
  loadPlotly();
  columnChooser();
  selection();
});
