// The console's one script (no inline scripts: the CSP allows only this file).
// Live job progress: one EventSource on /events/progress; each "job" event updates
// (or adds) the job's row of the #jobs table: state, progress bar, bytes, rate, ETA.
(function () {
  "use strict";

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    var units = ["B", "KB", "MB", "GB", "TB"];
    var v = n, i = 0;
    while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return i === 0 ? v.toFixed(0) + " B" : v.toFixed(1) + " " + units[i];
  }

  function duration(s) {
    if (s === null || s === undefined) return "–";
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 60) return s.toFixed(0) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function cell(row, cls, text) {
    var td = row.querySelector("." + cls);
    if (td) td.textContent = text;
  }

  function rowFor(tbody, job) {
    var rows = tbody.querySelectorAll("tr[data-job]");
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].getAttribute("data-job") === job.job_id) return rows[i];
    }
    var tr = document.createElement("tr");
    tr.setAttribute("data-job", job.job_id);
    tr.title = job.job_id;
    var parts = [
      ["mono", job.kind + " …" + job.job_id.slice(-8)], ["nowrap", job.dataset],
      ["nowrap", job.agent],
      ["j-state", ""], ["j-progress", ""], ["j-bytes", ""], ["j-rate", ""], ["j-eta", ""]
    ];
    parts.forEach(function (p) {
      var td = document.createElement("td");
      if (p[0]) td.className = p[0];
      td.textContent = p[1];
      tr.appendChild(td);
    });
    var prog = tr.querySelector(".j-progress");
    var bar = document.createElement("progress");
    bar.max = 100;
    var pct = document.createElement("span");
    pct.className = "j-pct";
    prog.appendChild(bar);
    prog.appendChild(document.createTextNode(" "));
    prog.appendChild(pct);
    tbody.insertBefore(tr, tbody.firstChild);
    return tr;
  }

  function show(job) {
    var table = document.getElementById("jobs");
    if (!table) return;
    var tbody = table.tBodies[0];
    var tr = rowFor(tbody, job);
    tr.setAttribute("data-state", job.state);
    tr.className = job.state === "failed" ? "bad" : job.state === "completed" ? "ok" : "";
    var bar = tr.querySelector("progress");
    if (bar) bar.value = job.percent;
    cell(tr, "j-pct", job.percent.toFixed(1) + " %");
    cell(tr, "j-state", job.state + (job.message ? " — " + job.message : ""));
    cell(tr, "j-bytes", bytes(job.bytes_done) + " / " + bytes(job.bytes_total));
    cell(tr, "j-rate", job.rate === null ? "–" : bytes(job.rate) + "/s");
    cell(tr, "j-eta", job.state === "running" ? duration(job.eta_s) : "–");
    var empty = tbody.querySelector("tr.empty");
    if (empty) empty.hidden = true;
  }

  function follow() {
    if (!document.getElementById("jobs") || !window.EventSource) return;
    var source = new EventSource("/events/progress");
    source.addEventListener("job", function (e) {
      try { show(JSON.parse(e.data)); } catch (err) { /* a malformed event: skip it */ }
    });
    source.addEventListener("open", function () {
      document.documentElement.setAttribute("data-progress", "open");
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", follow);
  } else {
    follow();
  }
})();
