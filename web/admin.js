// The operator dashboard: polls GET /api/v1/admin/stats once a second and
// draws the last few minutes as line charts on <canvas> (no chart library),
// plus sell-through per concert and a form to create a concert.
(function () {
  "use strict";
  var $ = C.$, el = C.el, t = C.t;
  var KEEP = 180; // samples kept (3 minutes at 1/s)
  var POLL_MS = 1000;
  var samples = [];
  var last = null;
  var timer = null;
  var charts = [];

  function key() { return C.get("adminKey"); }

  function notice(text, kind) {
    var n = $("notice");
    n.textContent = text;
    n.className = "notice " + (kind || "error");
    n.hidden = false;
  }
  function clearNotice() { $("notice").hidden = true; }

  function showKeyForm() {
    clearTimeout(timer);
    $("key-view").hidden = false;
    $("dash-view").hidden = true;
    $("admin-signout").hidden = true;
    $("admin-key").focus();
  }

  function showDashboard() {
    $("key-view").hidden = true;
    $("dash-view").hidden = false;
    $("admin-signout").hidden = false;
  }

  // ---- charts -----------------------------------------------------------

  var CHARTS = [
    { id: "queue", title: "admin.chartQueue", series: [{ k: "waiting", c: "#5327c9", l: "admin.series.waiting" }] },
    { id: "admitted", title: "admin.chartAdmitted", series: [{ k: "admittedPerTick", c: "#0f766e", l: "admin.series.admitted" }] },
    { id: "active", title: "admin.chartActive", series: [
      { k: "active", c: "#1d4ed8", l: "admin.series.active" },
      { k: "cap", c: "#b3261e", l: "admin.series.cap", dash: true }
    ] },
    { id: "rates", title: "admin.chartRates", series: [
      { k: "holdsPerSec", c: "#b45309", l: "admin.series.holds" },
      { k: "paymentsPerSec", c: "#0f7a3d", l: "admin.series.payments" }
    ] },
    { id: "journal", title: "admin.chartJournal", band: { k: "dbDown", c: "rgba(179, 38, 30, .18)", l: "admin.series.dbDown" }, series: [
      { k: "backlog", c: "#be185d", l: "admin.series.backlog" },
      { k: "lag", c: "#6b7280", l: "admin.series.lag", dash: true }
    ] }
  ];

  function buildCharts() {
    var box = C.clear($("charts"));
    charts = CHARTS.map(function (def) {
      var canvas = el("canvas", { role: "img", id: "chart-" + def.id });
      var keys = el("div", { class: "keys" });
      def.series.concat(def.band ? [def.band] : []).forEach(function (s) {
        var span = el("span", { text: t(s.l) });
        span.style.setProperty("--c", s.c);
        keys.appendChild(span);
      });
      box.appendChild(el("div", { class: "chart" }, [el("h2", { text: t(def.title) }), canvas, keys]));
      return { def: def, canvas: canvas };
    });
  }

  function fmt(v) {
    if (v === null || v === undefined || isNaN(v)) return "–";
    if (Math.abs(v) >= 100 || Math.round(v) === v) return Math.round(v).toLocaleString(C.lang === "ko" ? "ko-KR" : "en-US");
    return String(Math.round(v * 100) / 100);
  }

  function draw(chart) {
    var canvas = chart.canvas, def = chart.def;
    var ratio = window.devicePixelRatio || 1;
    var w = canvas.clientWidth || 300, h = canvas.clientHeight || 150;
    if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
      canvas.width = Math.round(w * ratio);
      canvas.height = Math.round(h * ratio);
    }
    var ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    var max = 1;
    samples.forEach(function (s) {
      def.series.forEach(function (se) { if (s[se.k] > max) max = s[se.k]; });
    });
    max = niceMax(max);
    var left = 44, right = 8, top = 8, bottom = 18;
    // The x axis spans the samples we have: at least 30 s, at most KEEP.
    var span = Math.max(30, Math.min(KEEP, samples.length));
    var pw = w - left - right, ph = h - top - bottom;
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#5d5a6d";
    ctx.strokeStyle = "#e6e3ef";
    ctx.lineWidth = 1;
    for (var g = 0; g <= 4; g++) {
      var y = top + ph - (ph * g) / 4;
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + pw, y); ctx.stroke();
      ctx.textAlign = "right";
      ctx.fillText(fmt((max * g) / 4), left - 6, y + 4);
    }
    ctx.textAlign = "left";
    ctx.fillText("-" + span + "s", left, h - 4);
    ctx.textAlign = "right";
    ctx.fillText("0s", left + pw, h - 4);
    var n = samples.length;
    // A band behind the lines where the database was failing.
    if (def.band) {
      ctx.fillStyle = def.band.c;
      samples.forEach(function (s, i) {
        if (!s[def.band.k]) return;
        var x = left + pw - ((n - 1 - i) * pw) / (span - 1);
        ctx.fillRect(x - pw / (span - 1) / 2, top, pw / (span - 1), ph);
      });
    }
    def.series.forEach(function (se) {
      ctx.strokeStyle = se.c;
      ctx.lineWidth = 2;
      ctx.setLineDash(se.dash ? [5, 4] : []);
      ctx.beginPath();
      var started = false;
      samples.forEach(function (s, i) {
        var v = s[se.k];
        if (v === null || v === undefined || isNaN(v)) return;
        var x = left + pw - ((n - 1 - i) * pw) / (span - 1);
        var yy = top + ph - (Math.min(v, max) / max) * ph;
        if (!started) { ctx.moveTo(x, yy); started = true; } else ctx.lineTo(x, yy);
      });
      ctx.stroke();
      ctx.setLineDash([]);
    });
    var now = samples[n - 1] || {};
    var spoken = def.series.map(function (se) {
      return t("admin.chartNow", { label: t(se.l), value: fmt(now[se.k]) });
    });
    if (def.band && now[def.band.k]) spoken.push(t(def.band.l));
    canvas.setAttribute("aria-label", t(def.title) + ". " + spoken.join("; "));
  }

  function niceMax(v) {
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var m = v / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }

  // ---- data ------------------------------------------------------------

  function sample(stats) {
    var s = {
      at: stats.atMs,
      waiting: stats.queue.waiting,
      active: stats.queue.active,
      cap: stats.queue.maxActive,
      backlog: stats.database.journalBacklog,
      lag: stats.database.projectionLag,
      dbDown: !stats.database.healthy,
      admittedPerTick: null,
      holdsPerSec: null,
      paymentsPerSec: null
    };
    if (last) {
      var dt = (stats.atMs - last.atMs) / 1000;
      if (dt > 0) {
        var ticks = (dt * 1000) / Math.max(1, stats.queue.tickMs);
        s.admittedPerTick = Math.max(0, stats.queue.admittedTotal - last.queue.admittedTotal) / Math.max(1, ticks);
        s.holdsPerSec = Math.max(0, stats.holds.createdTotal - last.holds.createdTotal) / dt;
        s.paymentsPerSec = Math.max(0, stats.payments.completedTotal - last.payments.completedTotal) / dt;
      }
    }
    last = stats;
    samples.push(s);
    if (samples.length > KEEP) samples.shift();
    return s;
  }

  function render(stats, s) {
    $("tile-waiting").textContent = fmt(s.waiting);
    $("tile-active-label").textContent = t("admin.active", { cap: fmt(stats.queue.maxActive) });
    $("tile-active").textContent = fmt(s.active);
    $("tile-admitted").textContent = fmt(s.admittedPerTick);
    $("tile-holds").textContent = fmt(s.holdsPerSec);
    $("tile-payments").textContent = fmt(s.paymentsPerSec);
    var healthy = stats.database.healthy;
    $("tile-db").textContent = healthy ? t("admin.dbOk") : t("admin.dbBad");
    $("tile-db-box").className = "tile " + (healthy ? "good" : "bad");
    $("tile-backlog").textContent = fmt(s.backlog);
    charts.forEach(draw);
    renderSell(stats.concerts);
    $("dash-status").textContent = t("admin.live") + " · " + C.clock(new Date(stats.atMs));
  }

  function renderSell(concerts) {
    var list = C.clear($("sell"));
    concerts.forEach(function (c) {
      var total = c.seatCount || 1;
      var pct = Math.round((c.soldSeats / total) * 1000) / 10;
      var sold = el("div", { class: "s" }), held = el("div", { class: "h" });
      sold.style.width = (c.soldSeats / total) * 100 + "%";
      held.style.width = (c.heldSeats / total) * 100 + "%";
      list.appendChild(el("li", { "data-concert": c.id }, [
        el("div", { class: "name" }, [
          el("strong", { text: "#" + c.id + " " + c.title }),
          el("span", { class: "muted", text: C.dateTime(c.startsAt) })
        ]),
        el("div", { class: "bar3", role: "img", "aria-label": c.title + ": " + t("admin.soldOf", { sold: c.soldSeats, held: c.heldSeats, total: c.seatCount, pct: pct }) }, [sold, held]),
        el("div", { class: "small muted sold-text", text: t("admin.soldOf", { sold: c.soldSeats, held: c.heldSeats, total: c.seatCount, pct: pct }) })
      ]));
    });
  }

  function poll() {
    clearTimeout(timer);
    C.api("GET", "/admin/stats", { admin: key() }).then(function (stats) {
      clearNotice();
      showDashboard();
      render(stats, sample(stats));
      timer = setTimeout(poll, POLL_MS);
    }, function (err) {
      if (err.code === "FORBIDDEN") {
        C.set("adminKey", null);
        showKeyForm();
        notice(t("admin.badKey"));
        return;
      }
      $("dash-status").textContent = t("admin.stale", { error: C.errorText(err) });
      timer = setTimeout(poll, 3000);
    });
  }

  // ---- create a concert --------------------------------------------------

  function addTier() {
    var row = el("div", { class: "tier-row" });
    row.appendChild(el("label", null, [t("admin.f.from"), el("input", { type: "number", min: "1", name: "from", required: "required" })]));
    row.appendChild(el("label", null, [t("admin.f.to"), el("input", { type: "number", min: "1", name: "to", required: "required" })]));
    row.appendChild(el("label", null, [t("admin.f.price"), el("input", { type: "number", min: "0", name: "tierPrice", required: "required" })]));
    row.appendChild(el("button", { type: "button", class: "link", text: t("admin.f.removeTier"), onclick: function () { row.remove(); } }));
    $("tiers").appendChild(row);
  }

  // datetime-local (the operator's local time) -> RFC 3339 with their offset.
  function withOffset(local) {
    var d = new Date(local);
    var off = -d.getTimezoneOffset();
    var sign = off >= 0 ? "+" : "-";
    var abs = Math.abs(off);
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    return local + (local.length === 16 ? ":00" : "") + sign + pad(Math.floor(abs / 60)) + ":" + pad(abs % 60);
  }

  function createConcert(e) {
    e.preventDefault();
    var f = $("create-form").elements;
    var body = {
      title: f.title.value.trim(),
      category: f.category.value.trim(),
      venue: f.venue.value.trim(),
      startsAt: withOffset(f.startsAt.value),
      seatCount: Number(f.seatCount.value),
      price: Number(f.price.value),
      priceTiers: []
    };
    if (!$("spr-field").hidden && f.seatsPerRow.value) body.seatsPerRow = Number(f.seatsPerRow.value);
    var rows = $("tiers").querySelectorAll(".tier-row");
    for (var i = 0; i < rows.length; i++) {
      body.priceTiers.push({
        fromSeat: Number(rows[i].querySelector("[name=from]").value),
        toSeat: Number(rows[i].querySelector("[name=to]").value),
        price: Number(rows[i].querySelector("[name=tierPrice]").value)
      });
    }
    C.api("POST", "/admin/concerts", { admin: key(), body: body }).then(function (c) {
      notice(t("admin.created", { id: c.id, title: c.title }), "info");
      f.title.value = "";
      C.clear($("tiers"));
    }, function (err) {
      // Operators get the server's detail too: it names the field.
      notice(C.errorText(err) + (err.detail ? " (" + err.detail + ")" : ""));
    });
  }

  function defaultStart() {
    var d = new Date(Date.now() + 7 * 24 * 3600 * 1000);
    d.setHours(19, 0, 0, 0);
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + "T19:00";
  }

  // ---- start -------------------------------------------------------------

  C.initLang();
  buildCharts();
  C.onLang(function () {
    buildCharts();
    if (last) render(last, samples[samples.length - 1]);
  });
  $("create-form").elements.startsAt.value = defaultStart();
  $("create-form").addEventListener("submit", createConcert);
  $("add-tier").addEventListener("click", addTier);
  C.schemaHas("NewConcertRequest", "seatsPerRow").then(function (yes) { $("spr-field").hidden = !yes; });
  $("key-form").addEventListener("submit", function (e) {
    e.preventDefault();
    C.set("adminKey", $("admin-key").value.trim());
    $("admin-key").value = "";
    poll();
  });
  $("admin-signout").addEventListener("click", function () {
    C.set("adminKey", null);
    samples = [];
    last = null;
    showKeyForm();
  });
  window.addEventListener("resize", function () { charts.forEach(draw); });
  if (key()) poll(); else showKeyForm();
})();
