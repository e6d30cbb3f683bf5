// The fan's pages: catalog -> waiting room -> seat map -> checkout -> receipt,
// and My account. One page, views switched in place; everything a reload
// needs (member key, queue token, chosen concert, pending hold) is kept in
// localStorage, so a reload or a second tab never loses the place.
(function () {
  "use strict";
  var $ = C.$, el = C.el, t = C.t;
  var cfg = C.cfg;
  var MAX_PICK = cfg.maxSeatsPerReservation || 4;
  var SECTION_SEATS = 1200; // seats drawn at once; bigger halls get section buttons
  var VIEWS = ["catalog", "join", "queue", "seats", "checkout", "receipt", "account"];

  var S = {
    view: null,
    concerts: [],
    catalogCursor: null,
    concert: null,
    queue: null,
    queueStart: null,
    pollTimer: null,
    seatTimer: null,
    tickTimer: null,
    seats: [],
    seatByNo: {},
    seatEls: {},
    rows: [],
    grid: false,
    tierOf: {},
    section: 0,
    sections: [],
    selected: [],
    focusNo: null,
    reservation: null,
    balance: null,
    historyCursor: null,
    reservationsCursor: null,
    busy: false
  };

  // ---------------------------------------------------------------- basics

  function show(view, keepNotice) {
    S.view = view;
    for (var i = 0; i < VIEWS.length; i++) $("view-" + VIEWS[i]).hidden = VIEWS[i] !== view;
    if (!keepNotice) clearNotice();
    if (view !== "seats") stopSeatPolling();
    $("nav-account").setAttribute("aria-current", view === "account" ? "page" : "false");
    $("nav-tickets").setAttribute("aria-current", view !== "account" ? "page" : "false");
    if (view !== "account" && location.hash === "#account") history.replaceState(null, "", "/");
  }

  function focusHeading(view) {
    var h = document.querySelector("#view-" + view + " h1");
    if (h) {
      h.setAttribute("tabindex", "-1");
      h.focus({ preventScroll: false });
    }
  }

  function notice(text, kind) {
    var n = $("notice");
    n.textContent = text;
    n.className = "notice " + (kind || "error");
    n.hidden = false;
    if (n.scrollIntoView) n.scrollIntoView({ block: "nearest" });
  }
  function clearNotice() {
    $("notice").hidden = true;
    $("notice").textContent = "";
  }
  function announce(text) {
    var live = $("live");
    live.textContent = "";
    setTimeout(function () { live.textContent = text; }, 30);
  }
  function showError(err) {
    notice(C.errorText(err), "error");
  }

  function member() { return C.get("memberKey"); }

  // ---------------------------------------------------------------- catalog

  function openCatalog() {
    show("catalog", true);
    if (!S.concerts.length) loadCatalog(false);
    else renderCatalog();
  }

  function loadCatalog(more) {
    var q = "/concerts?limit=12" + (more && S.catalogCursor ? "&cursor=" + encodeURIComponent(S.catalogCursor) : "");
    $("catalog-status").hidden = false;
    $("catalog-status").textContent = t("loading");
    C.api("GET", q).then(function (page) {
      S.concerts = more ? S.concerts.concat(page.items) : page.items;
      S.catalogCursor = page.nextCursor;
      renderCatalog();
    }, function (err) {
      $("catalog-status").textContent = C.errorText(err);
    });
  }

  function renderCatalog() {
    var list = C.clear($("concerts"));
    $("catalog-status").hidden = S.concerts.length > 0;
    if (!S.concerts.length) $("catalog-status").textContent = t("catalog.empty");
    S.concerts.forEach(function (c) {
      var soldOut = c.availableSeats === 0;
      var pct = c.seatCount ? Math.round((c.availableSeats / c.seatCount) * 100) : 0;
      var meterFill = el("div");
      meterFill.style.width = pct + "%";
      var btn = el("button", {
        type: "button",
        class: soldOut ? "secondary" : "primary",
        "data-concert": c.id,
        "aria-label": (soldOut ? t("catalog.soldOut") : t("catalog.join")) + ": " + c.title + ", " + C.dateTime(c.startsAt),
        text: soldOut ? t("catalog.soldOut") : t("catalog.join")
      });
      if (soldOut) btn.disabled = true;
      btn.addEventListener("click", function () { chooseConcert(c); });
      list.appendChild(el("li", { class: "concert" }, [
        el("span", { class: "cat", text: c.category }),
        el("h2", { text: c.title }),
        el("span", { class: "when", text: C.dateTime(c.startsAt) }),
        el("span", { class: "venue", text: c.venue }),
        el("div", { class: "meter", "aria-hidden": "true" }, [meterFill]),
        el("span", { class: "avail", text: t("catalog.seatsLeft", { n: c.availableSeats, total: c.seatCount }) }),
        btn
      ]));
    });
    $("more-concerts").hidden = !S.catalogCursor;
  }

  function chooseConcert(c) {
    S.concert = c;
    C.set("concertId", c.id);
    C.setJSON("concert", c);
    if (!member()) {
      show("join");
      $("join-concert").textContent = c.title + " · " + C.dateTime(c.startsAt);
      $("join-name").value = C.get("memberName") || "";
      $("join-name").focus();
      return;
    }
    enterQueue();
  }

  function createMember(name) {
    return C.api("POST", "/members", { body: { name: name } }).then(function (m) {
      C.set("memberKey", m.memberKey);
      C.set("memberName", m.name);
      C.set("memberId", m.id);
      return m;
    });
  }

  // ---------------------------------------------------------------- queue

  function enterQueue() {
    clearTimeout(S.pollTimer);
    C.api("POST", "/queue/tokens", { member: true }).then(function (q) {
      if (C.get("token") !== q.token) {
        C.set("token", q.token);
        C.set("queueStart", Math.max(q.position, 1));
      }
      handleQueue(q, true);
    }, function (err) {
      if (err.code === "UNAUTHENTICATED") {
        // The server does not know this key (a new database): start over.
        C.set("memberKey", null);
        show("join");
        notice(C.errorText(err));
        return;
      }
      showError(err);
    });
  }

  function pollQueue(navigate) {
    clearTimeout(S.pollTimer);
    if (!C.get("token")) return;
    C.api("GET", "/queue/status", { token: true }).then(function (q) {
      handleQueue(q, navigate);
    }, function (err) {
      if (err.code === "TOKEN_INVALID") {
        queueExpired();
        return;
      }
      $("queue-checked").textContent = t("queue.reconnecting");
      S.pollTimer = setTimeout(function () { pollQueue(navigate); }, Math.max(2, err.retryAfter || 3) * 1000);
    });
  }

  // Poll interval when the server does not suggest one: a quarter of the wait, 1..15 s.
  function fallbackPoll(wait) {
    return Math.min(15, Math.max(1, Math.ceil(wait / 4)));
  }

  function handleQueue(q, navigate) {
    S.queue = q;
    if (q.status === "EXPIRED") { queueExpired(); return; }
    if (q.status === "ACTIVE") {
      if (q.activeUntil) C.set("activeUntil", q.activeUntil);
      // Keep checking the token now and then while on other views.
      S.pollTimer = setTimeout(function () { pollQueue(false); }, 30000);
      if (navigate || S.view === "queue") {
        if (C.get("concertId")) openSeats();
        else { openCatalog(); notice(t("queue.active"), "info"); }
      }
      return;
    }
    // WAITING
    if (navigate && S.view !== "queue") {
      show("queue");
      focusHeading("queue");
    }
    renderQueue();
    var after = q.pollAfterSeconds || fallbackPoll(q.estimatedWaitSeconds);
    S.pollTimer = setTimeout(function () { pollQueue(false); }, after * 1000);
  }

  function renderQueue() {
    var q = S.queue;
    var c = C.getJSON("concert");
    $("queue-concert").textContent = c ? t("queue.for", { title: c.title }) : "";
    setQueueHeading("queue.title");
    $("queue-expired").hidden = true;
    $("queue-waiting").hidden = false;
    if (!q) return;
    var pos = q.position;
    var start = Math.max(Number(C.get("queueStart")) || pos, pos, 1);
    var pct = pos <= 0 ? 100 : Math.round(((start - pos + 1) / start) * 100);
    $("queue-position").textContent = pos === 1 ? "1" : String(pos);
    $("queue-position-label").textContent = pos === 1 ? t("queue.next") : t("queue.position");
    $("queue-progress-fill").style.width = pct + "%";
    $("queue-progress").setAttribute("aria-valuenow", String(pct));
    $("queue-wait").textContent = q.estimatedWaitSeconds < 60 ? t("queue.waitSoon") : t("queue.wait", { time: C.duration(q.estimatedWaitSeconds) });
    $("queue-checked").textContent = t("queue.checked", { time: C.clock() });
  }

  function setQueueHeading(key) {
    $("queue-h").setAttribute("data-i18n", key);
    $("queue-h").textContent = t(key);
  }

  function queueExpired(message) {
    clearTimeout(S.pollTimer);
    C.set("token", null);
    C.set("activeUntil", null);
    show("queue", true);
    $("queue-concert").textContent = "";
    setQueueHeading("queue.expiredTitle");
    $("queue-waiting").hidden = true;
    $("queue-expired").hidden = false;
    if (message) notice(message);
    focusHeading("queue");
  }

  // ---------------------------------------------------------------- seat map

  function openSeats() {
    var id = C.get("concertId");
    if (!id) { openCatalog(); return; }
    var wasSeats = S.view === "seats";
    show("seats", true);
    if (!wasSeats) {
      S.seats = [];
      S.selected = [];
      S.section = 0;
      C.clear($("seatmap"));
      updatePickBar();
    }
    var cached = C.getJSON("concert");
    S.concert = cached && String(cached.id) === String(id) ? cached : null;
    renderSeatsHead();
    C.api("GET", "/concerts/" + id).then(function (c) {
      S.concert = c;
      C.setJSON("concert", c);
      renderSeatsHead();
    }, function () {});
    loadSeats();
    startTicking();
    C.schemaHas("HoldRequest", "quantity").then(function (yes) {
      $("best-n").hidden = !yes;
      if (yes) {
        var sel = C.clear($("best-qty"));
        for (var i = 1; i <= MAX_PICK; i++) sel.appendChild(el("option", { value: i, text: String(i) }));
        sel.value = "2";
      }
    });
    if (!wasSeats) focusHeading("seats");
  }

  function renderSeatsHead() {
    var c = S.concert;
    $("seats-h").textContent = c ? c.title : "";
    $("seats-meta").textContent = c ? C.dateTime(c.startsAt) + " · " + c.venue : "";
  }

  function stopSeatPolling() {
    clearTimeout(S.seatTimer);
    S.seatTimer = null;
  }

  // `quiet`: seats that turn out taken are unselected without a notice of
  // their own (after a failed hold, whose message already says so).
  function loadSeats(quiet) {
    stopSeatPolling();
    var id = C.get("concertId");
    C.api("GET", "/concerts/" + id + "/seats", { token: true }).then(function (r) {
      if (S.view !== "seats") return;
      if (!S.seats.length || S.seats.length !== r.seats.length) buildMap(r.seats);
      else updateMap(r.seats, quiet === true);
      $("seats-updated").textContent = t("seats.updated", { time: C.clock() });
      S.seatTimer = setTimeout(loadSeats, r.seats.length > 5000 ? 5000 : 2000);
    }, function (err) {
      if (S.view !== "seats") return;
      if (gatedError(err)) return;
      showError(err);
      S.seatTimer = setTimeout(loadSeats, 4000);
    });
  }

  // Handles the errors of a token-gated call that move the fan elsewhere.
  function gatedError(err) {
    if (err.code === "TOKEN_INVALID") {
      queueExpired(C.errorText(err));
      return true;
    }
    if (err.code === "TOKEN_NOT_ACTIVE") {
      show("queue");
      pollQueue(true);
      return true;
    }
    return false;
  }

  function statusWord(seat) {
    if (S.selected.indexOf(seat.number) >= 0) return t("seats.selected");
    return t(seat.status === "AVAILABLE" ? "seats.available" : seat.status === "HELD" ? "seats.held" : "seats.sold");
  }

  function seatLabel(seat) {
    var params = { n: seat.number, price: C.money(seat.price), status: statusWord(seat), row: seat._row, place: seat._place };
    return S.grid ? t("seats.labelGrid", params) : t("seats.labelRow", params);
  }

  function gridColumns() {
    var width = $("seatmap").parentNode.clientWidth || 600;
    return Math.max(8, Math.min(25, Math.floor((width - 70) / 34)));
  }

  // Rows from the server's `row`/`place` (layout), else from the concert's
  // `seatsPerRow`, else a plain grid sized to the screen.
  function layout(seats) {
    var c = S.concert || {};
    var hasRows = seats.length && seats[0].row !== undefined && seats[0].place !== undefined;
    var perRow = c.seatsPerRow;
    S.grid = !hasRows && !perRow;
    var cols = S.grid ? gridColumns() : perRow;
    var rows = [];
    var byRow = {};
    seats.forEach(function (s) {
      var row = hasRows ? s.row : Math.ceil(s.number / cols);
      var place = hasRows ? s.place : ((s.number - 1) % cols) + 1;
      s._row = row;
      s._place = place;
      if (!byRow[row]) { byRow[row] = []; rows.push(row); }
      byRow[row].push(s);
    });
    rows.sort(function (a, b) { return a - b; });
    return rows.map(function (r) {
      return byRow[r].sort(function (a, b) { return a._place - b._place; });
    });
  }

  function buildMap(seats) {
    S.seats = seats;
    S.seatByNo = {};
    seats.forEach(function (s) { S.seatByNo[s.number] = s; });
    S.selected = S.selected.filter(function (n) { return S.seatByNo[n] && S.seatByNo[n].status === "AVAILABLE"; });
    var prices = [];
    seats.forEach(function (s) { if (prices.indexOf(s.price) < 0) prices.push(s.price); });
    prices.sort(function (a, b) { return b - a; });
    S.tierOf = {};
    prices.forEach(function (p, i) { S.tierOf[p] = Math.min(i, 5); });
    S.rows = layout(seats);
    // Sections of whole rows, at most SECTION_SEATS seats each.
    S.sections = [];
    var current = [], count = 0;
    S.rows.forEach(function (row) {
      if (count + row.length > SECTION_SEATS && current.length) {
        S.sections.push(current);
        current = [];
        count = 0;
      }
      current.push(row);
      count += row.length;
    });
    if (current.length) S.sections.push(current);
    if (S.section >= S.sections.length) S.section = 0;
    renderLegend(prices);
    renderSections();
    drawSection();
    updatePickBar();
  }

  function renderLegend(prices) {
    var legend = C.clear($("legend"));
    prices.slice(0, 6).forEach(function (p, i) {
      legend.appendChild(el("li", null, [el("span", { class: "swatch seat t" + i, "aria-hidden": "true" }), C.money(p)]));
    });
    [["held", "seats.legendHeld"], ["sold", "seats.legendSold"], ["selected", "seats.legendSelected"]].forEach(function (x) {
      legend.appendChild(el("li", null, [el("span", { class: "swatch " + x[0], "aria-hidden": "true" }), t(x[1])]));
    });
  }

  function renderSections() {
    var box = C.clear($("sections"));
    box.hidden = S.sections.length < 2;
    if (S.sections.length < 2) return;
    box.appendChild(el("span", { class: "muted", text: t("seats.section") }));
    S.sections.forEach(function (rows, i) {
      var first = rows[0][0].number, lastRow = rows[rows.length - 1], last = lastRow[lastRow.length - 1].number;
      box.appendChild(el("button", {
        type: "button",
        class: i === S.section ? "primary" : "secondary",
        "aria-pressed": i === S.section ? "true" : "false",
        text: first + "–" + last,
        onclick: function () { S.section = i; renderSections(); drawSection(); }
      }));
    });
  }

  function seatClass(seat) {
    var cls = "seat t" + (S.tierOf[seat.price] || 0);
    if (S.selected.indexOf(seat.number) >= 0) cls += " selected";
    else if (seat.status === "HELD") cls += " held";
    else if (seat.status === "SOLD") cls += " sold";
    return cls;
  }

  function paintSeat(seat) {
    var b = S.seatEls[seat.number];
    if (!b) return;
    b.className = seatClass(seat);
    b.setAttribute("aria-label", seatLabel(seat));
    b.setAttribute("aria-pressed", S.selected.indexOf(seat.number) >= 0 ? "true" : "false");
    b.setAttribute("aria-disabled", seat.status === "AVAILABLE" ? "false" : "true");
  }

  function drawSection() {
    var map = C.clear($("seatmap"));
    map.className = S.grid ? "seatmap grid" : "seatmap";
    S.seatEls = {};
    var rows = S.sections[S.section] || [];
    var focusNo = null;
    rows.forEach(function (row) {
      var first = row[0], last = row[row.length - 1];
      var label = S.grid ? t("seats.rowRange", { from: first.number, to: last.number }) : t("seats.row", { row: first._row });
      var line = el("div", { class: "seat-row", role: "group", "aria-label": label }, [
        el("span", { class: "row-label", "aria-hidden": "true", text: S.grid ? String(first.number) : String(first._row) })
      ]);
      row.forEach(function (seat) {
        var b = el("button", { type: "button", "data-n": seat.number, tabindex: "-1", text: String(S.grid ? seat.number : seat._place) });
        S.seatEls[seat.number] = b;
        paintSeat(seat);
        line.appendChild(b);
        if (focusNo === null && seat.status === "AVAILABLE") focusNo = seat.number;
      });
      map.appendChild(line);
    });
    if (S.focusNo !== null && S.seatEls[S.focusNo]) focusNo = S.focusNo;
    if (focusNo === null && rows.length) focusNo = rows[0][0].number;
    if (focusNo !== null) setFocusSeat(focusNo, false);
  }

  function updateMap(seats, quiet) {
    seats.forEach(function (s) {
      var old = S.seatByNo[s.number];
      if (!old) return;
      if (old.status !== s.status || old.price !== s.price) {
        old.status = s.status;
        old.price = s.price;
        var i = S.selected.indexOf(s.number);
        if (i >= 0 && s.status !== "AVAILABLE") {
          S.selected.splice(i, 1);
          if (!quiet) {
            notice(t("seats.taken", { n: s.number }));
            announce(t("seats.taken", { n: s.number }));
          }
          updatePickBar();
        }
        paintSeat(old);
      }
    });
  }

  function setFocusSeat(n, focus) {
    if (S.focusNo !== null && S.seatEls[S.focusNo]) S.seatEls[S.focusNo].setAttribute("tabindex", "-1");
    S.focusNo = n;
    var b = S.seatEls[n];
    if (!b) return;
    b.setAttribute("tabindex", "0");
    if (focus) b.focus();
  }

  function toggleSeat(n) {
    var seat = S.seatByNo[n];
    if (!seat) return;
    var i = S.selected.indexOf(n);
    if (i >= 0) {
      S.selected.splice(i, 1);
    } else {
      if (seat.status !== "AVAILABLE") {
        announce(seatLabel(seat));
        return;
      }
      if (S.selected.length >= MAX_PICK) {
        notice(t("seats.limit", { max: MAX_PICK }));
        announce(t("seats.limit", { max: MAX_PICK }));
        return;
      }
      S.selected.push(n);
    }
    clearNotice();
    paintSeat(seat);
    updatePickBar();
  }

  function updatePickBar() {
    var sel = S.selected.slice().sort(function (a, b) { return a - b; });
    var total = 0;
    sel.forEach(function (n) { total += S.seatByNo[n] ? S.seatByNo[n].price : 0; });
    $("pick-summary").textContent = sel.length
      ? t("seats.picked", { count: sel.length, seats: sel.join(", "), total: C.money(total) })
      : t("seats.none", { max: MAX_PICK });
    $("hold-btn").disabled = sel.length === 0 || S.busy;
  }

  // Position of seat n in the drawn rows: [rowIndex, placeIndex].
  function locate(n) {
    var rows = S.sections[S.section] || [];
    for (var r = 0; r < rows.length; r++) {
      for (var p = 0; p < rows[r].length; p++) if (rows[r][p].number === n) return [r, p];
    }
    return null;
  }

  function onMapKey(e) {
    var target = e.target.closest ? e.target.closest("button[data-n]") : null;
    if (!target) return;
    var at = locate(Number(target.getAttribute("data-n")));
    if (!at) return;
    var rows = S.sections[S.section];
    var r = at[0], p = at[1];
    switch (e.key) {
      case "ArrowLeft":
        if (p > 0) p--; else if (r > 0) { r--; p = rows[r].length - 1; }
        break;
      case "ArrowRight":
        if (p < rows[r].length - 1) p++; else if (r < rows.length - 1) { r++; p = 0; }
        break;
      case "ArrowUp":
        if (r > 0) { r--; p = Math.min(p, rows[r].length - 1); }
        break;
      case "ArrowDown":
        if (r < rows.length - 1) { r++; p = Math.min(p, rows[r].length - 1); }
        break;
      case "Home": p = 0; break;
      case "End": p = rows[r].length - 1; break;
      case "PageUp": r = Math.max(0, r - 5); p = Math.min(p, rows[r].length - 1); break;
      case "PageDown": r = Math.min(rows.length - 1, r + 5); p = Math.min(p, rows[r].length - 1); break;
      default: return;
    }
    e.preventDefault();
    setFocusSeat(rows[r][p].number, true);
  }

  function hold(body) {
    if (S.busy) return;
    S.busy = true;
    $("hold-btn").disabled = true;
    $("hold-btn").textContent = t("seats.holding");
    body.concertId = Number(C.get("concertId"));
    C.api("POST", "/reservations", { token: true, body: body }).then(function (r) {
      S.busy = false;
      $("hold-btn").textContent = t("seats.hold");
      S.selected = [];
      C.setJSON("reservation", r);
      openCheckout(r);
    }, function (err) {
      S.busy = false;
      $("hold-btn").textContent = t("seats.hold");
      updatePickBar();
      if (gatedError(err)) return;
      showError(err);
      announce(C.errorText(err));
      if (err.code === "SEAT_UNAVAILABLE") loadSeats(true);
    });
  }

  // ---------------------------------------------------------------- timers

  function startTicking() {
    clearInterval(S.tickTimer);
    tick();
    S.tickTimer = setInterval(tick, 1000);
  }

  function secondsUntil(iso) {
    var at = Date.parse(iso);
    return isNaN(at) ? null : (at - Date.now()) / 1000;
  }

  function tick() {
    if (S.view === "seats") {
      var left = secondsUntil(C.get("activeUntil"));
      $("turn-timer").textContent = left === null ? "" : left > 0 ? t("seats.turnEnds", { time: C.countdown(left) }) : t("seats.turnOver");
    } else if (S.view === "checkout" && S.reservation) {
      var holdLeft = secondsUntil(S.reservation.expiresAt);
      if (holdLeft !== null && holdLeft <= 0 && S.reservation.status === "PENDING_PAYMENT") {
        S.reservation.status = "EXPIRED";
        C.setJSON("reservation", null);
        $("hold-timer").textContent = t("checkout.holdOver");
        $("pay-btn").disabled = true;
        $("cancel-btn").hidden = true;
        $("checkout-after").hidden = false;
        notice(C.t("err.HOLD_EXPIRED"));
      } else if (holdLeft !== null && holdLeft > 0) {
        $("hold-timer").textContent = t("checkout.holdEnds", { time: C.countdown(holdLeft) });
        var whole = Math.floor(holdLeft);
        if (whole === 60 || whole === 10) announce($("hold-timer").textContent);
      }
    }
  }

  // ---------------------------------------------------------------- checkout

  function concertOf(id) {
    var c = C.getJSON("concert");
    if (c && c.id === id) return Promise.resolve(c);
    return C.api("GET", "/concerts/" + id).catch(function () { return null; });
  }

  function openCheckout(r) {
    S.reservation = r;
    show("checkout", false);
    $("pay-btn").disabled = false;
    $("cancel-btn").hidden = false;
    $("checkout-after").hidden = true;
    $("topup-inline").hidden = true;
    renderCheckout();
    startTicking();
    focusHeading("checkout");
    concertOf(r.concertId).then(function (c) {
      S.checkoutConcert = c;
      renderCheckout();
    });
    refreshBalance();
  }

  function detailList(node, pairs) {
    C.clear(node);
    pairs.forEach(function (p) {
      if (p[1] === null || p[1] === undefined || p[1] === "") return;
      node.appendChild(el("dt", { text: t(p[0]) }));
      node.appendChild(el("dd", { text: String(p[1]) }));
    });
  }

  function renderCheckout() {
    var r = S.reservation;
    if (!r) return;
    var c = S.checkoutConcert && S.checkoutConcert.id === r.concertId ? S.checkoutConcert : null;
    detailList($("checkout-details"), [
      ["checkout.concert", r.concertTitle],
      ["checkout.when", c ? C.dateTime(c.startsAt) : ""],
      ["checkout.where", c ? c.venue : ""],
      ["checkout.seats", r.seatNumbers.join(", ")],
      ["checkout.amount", C.money(r.amount)]
    ]);
    $("pay-btn").textContent = t("checkout.pay", { amount: C.money(r.amount) });
    renderBalance();
    tick();
  }

  function refreshBalance() {
    return C.api("GET", "/members/me/balance", { member: true }).then(function (b) {
      S.balance = b.balance;
      renderBalance();
    }, function (err) { showError(err); });
  }

  function renderBalance() {
    var r = S.reservation;
    if (S.balance === null || !r) { $("balance-line").textContent = ""; return; }
    $("balance-line").textContent = t("checkout.balance", { balance: C.money(S.balance) });
    var short = r.amount - S.balance;
    var pending = r.status === "PENDING_PAYMENT";
    var form = $("topup-inline");
    if (short > 0 && pending) {
      var wasHidden = form.hidden;
      form.hidden = false;
      $("short-line").textContent = t("checkout.short", { short: C.money(short) });
      if (wasHidden || !$("topup-inline-amount").value) {
        $("topup-inline-amount").value = String(Math.min(Math.ceil(short / 1000) * 1000, cfg.maxCharge || 1e7));
      }
      if (!form.dataset.key) form.dataset.key = C.uuid();
    } else {
      form.hidden = true;
    }
    $("pay-btn").disabled = !pending || short > 0 || S.busy;
  }

  function topUp(amount, key) {
    return C.api("POST", "/members/me/balance/charges", { member: true, body: { amount: amount }, idem: key });
  }

  function pay() {
    var r = S.reservation;
    if (!r || S.busy) return;
    var keyName = "payKey." + r.id;
    var key = C.get(keyName) || C.uuid();
    C.set(keyName, key);
    S.busy = true;
    $("pay-btn").disabled = true;
    $("pay-btn").textContent = t("checkout.paying");
    C.api("POST", "/payments", { token: true, idem: key, body: { reservationId: r.id } }).then(function (p) {
      S.busy = false;
      C.set(keyName, null);
      var c = S.checkoutConcert;
      var receipt = {
        paymentId: p.paymentId,
        reservationId: p.reservationId,
        amount: p.amount,
        balance: p.balance,
        concertTitle: r.concertTitle,
        seatNumbers: r.seatNumbers,
        startsAt: c ? c.startsAt : null,
        venue: c ? c.venue : null
      };
      C.setJSON("receipt", receipt);
      C.setJSON("reservation", null);
      // Paying expires the queue token: the next purchase queues again.
      C.set("token", null);
      C.set("activeUntil", null);
      clearTimeout(S.pollTimer);
      history.replaceState(null, "", "/#receipt");
      openReceipt(receipt);
    }, function (err) {
      S.busy = false;
      renderCheckout();
      if (err.code === "INSUFFICIENT_BALANCE") {
        showError(err);
        refreshBalance();
      } else if (err.code === "HOLD_EXPIRED" || err.code === "RESERVATION_NOT_PENDING") {
        r.status = "EXPIRED";
        C.setJSON("reservation", null);
        C.set(keyName, null);
        showError(err);
        $("pay-btn").disabled = true;
        $("cancel-btn").hidden = true;
        $("checkout-after").hidden = false;
      } else if (err.code === "TOKEN_INVALID") {
        // The hold may still be alive: queue again and come back here.
        queueExpired(C.errorText(err));
      } else {
        showError(err);
      }
    });
  }

  function cancelHold() {
    var r = S.reservation;
    if (!r) return;
    C.api("DELETE", "/reservations/" + r.id, { member: true }).then(function () {
      C.setJSON("reservation", null);
      S.reservation = null;
      if (C.get("token")) { openSeats(); } else { openCatalog(); }
      notice(t("checkout.cancelled"), "info");
    }, function (err) { showError(err); });
  }

  // ---------------------------------------------------------------- receipt

  function openReceipt(rc) {
    show("receipt");
    detailList($("receipt"), [
      ["checkout.concert", rc.concertTitle],
      ["checkout.when", rc.startsAt ? C.dateTime(rc.startsAt) : ""],
      ["checkout.where", rc.venue],
      ["checkout.seats", rc.seatNumbers.join(", ")],
      ["receipt.reservation", rc.reservationId],
      ["receipt.payment", rc.paymentId],
      ["receipt.paid", C.money(rc.amount)],
      ["receipt.balance", C.money(rc.balance)]
    ]);
    focusHeading("receipt");
  }

  // ---------------------------------------------------------------- account

  function openAccount() {
    show("account", true);
    var key = member();
    $("account-none").hidden = !!key;
    $("account-main").hidden = !key;
    if (!key) return;
    $("account-key-show").textContent = key;
    var presets = C.clear($("topup-presets"));
    [50000, 100000, 300000, 1000000].forEach(function (v) {
      presets.appendChild(el("button", {
        type: "button", "data-amount": v, text: "+" + C.money(v),
        onclick: function () { $("account-topup-amount").value = String(v); }
      }));
    });
    C.api("GET", "/members/me", { member: true }).then(function (me) {
      S.balance = me.balance;
      detailList($("account-profile"), [
        ["account.name", me.name],
        ["account.id", me.id],
        ["account.balance", C.money(me.balance)]
      ]);
    }, function (err) {
      if (err.code === "UNAUTHENTICATED") {
        C.set("memberKey", null);
        openAccount();
      }
      showError(err);
    });
    S.historyCursor = null;
    S.reservationsCursor = null;
    C.clear($("account-history"));
    C.clear($("account-reservations"));
    loadHistory();
    loadReservations();
  }

  function loadHistory() {
    var q = "/members/me/balance/history?limit=10" + (S.historyCursor ? "&cursor=" + encodeURIComponent(S.historyCursor) : "");
    C.api("GET", q, { member: true }).then(function (page) {
      var body = $("account-history");
      if (!page.items.length && !body.children.length) {
        body.appendChild(el("tr", null, [el("td", { colspan: "4", class: "muted", text: t("account.historyEmpty") })]));
      }
      page.items.forEach(function (h) {
        body.appendChild(el("tr", null, [
          el("td", { text: C.dateTime(h.at) }),
          el("td", { text: t("kind." + h.kind) }),
          el("td", { class: "num" + (h.amount > 0 ? " plus" : ""), text: (h.amount > 0 ? "+" : "") + C.money(h.amount) }),
          el("td", { class: "num", text: C.money(h.balanceAfter) })
        ]));
      });
      S.historyCursor = page.nextCursor;
      $("account-history-more").hidden = !page.nextCursor;
    }, showError);
  }

  // Paginated when the server answers with `nextCursor` (v1.1); otherwise
  // the whole list comes at once.
  function loadReservations() {
    var q = "/members/me/reservations?limit=10" + (S.reservationsCursor ? "&cursor=" + encodeURIComponent(S.reservationsCursor) : "");
    C.api("GET", q, { member: true }).then(function (page) {
      var list = $("account-reservations");
      if (!page.items.length && !list.children.length) list.appendChild(el("li", { class: "muted", text: t("account.reservationsEmpty") }));
      page.items.forEach(function (r) { list.appendChild(reservationItem(r)); });
      S.reservationsCursor = page.nextCursor || null;
      $("account-reservations-more").hidden = !page.nextCursor;
    }, showError);
  }

  function reservationItem(r) {
    var li = el("li", null, [
      el("div", { class: "title", text: r.concertTitle }),
      el("div", null, [
        el("span", { class: "badge " + r.status, text: t("status." + r.status) }),
        " " + t("account.seatsOf", { seats: r.seatNumbers.join(", ") }) + " · " + C.money(r.amount)
      ]),
      el("div", { class: "muted small", text: C.dateTime(r.createdAt) })
    ]);
    if (r.status === "PENDING_PAYMENT" && secondsUntil(r.expiresAt) > 0) {
      var actions = el("div", { class: "actions" });
      actions.appendChild(el("button", {
        type: "button", class: "primary", text: t("account.pay"),
        onclick: function () { C.setJSON("reservation", r); C.set("concertId", r.concertId); history.replaceState(null, "", "/"); openCheckout(r); }
      }));
      actions.appendChild(el("button", {
        type: "button", class: "secondary", text: t("account.cancel"),
        onclick: function () {
          C.api("DELETE", "/reservations/" + r.id, { member: true }).then(function () {
            notice(t("checkout.cancelled"), "info");
            openAccount();
          }, showError);
        }
      }));
      li.appendChild(actions);
    }
    return li;
  }

  // ---------------------------------------------------------------- routing

  function route() {
    clearNotice();
    if (location.hash === "#account") { openAccount(); return; }
    if (location.hash === "#receipt") {
      var rc = C.getJSON("receipt");
      if (rc) { openReceipt(rc); return; }
    }
    resume();
  }

  // Where a reload lands: a pending hold, else the queue, else the catalog.
  function resume() {
    var r = C.getJSON("reservation");
    if (r && member() && r.status === "PENDING_PAYMENT" && secondsUntil(r.expiresAt) > 0) {
      C.api("GET", "/reservations/" + r.id, { member: true }).then(function (fresh) {
        if (fresh.status === "PENDING_PAYMENT") openCheckout(fresh);
        else { C.setJSON("reservation", null); resume(); }
      }, function () { C.setJSON("reservation", null); resume(); });
      return;
    }
    if (C.get("token") && member()) {
      show("queue", true);
      renderQueue();
      pollQueue(true);
      return;
    }
    openCatalog();
  }

  function rerender() {
    switch (S.view) {
      case "catalog": renderCatalog(); break;
      case "queue": if (!$("queue-waiting").hidden) renderQueue(); break;
      case "seats":
        renderSeatsHead();
        if (S.seats.length) {
          var prices = Object.keys(S.tierOf).map(Number).sort(function (a, b) { return b - a; });
          renderLegend(prices);
          renderSections();
          S.seats.forEach(paintSeat);
          drawSection();
        }
        updatePickBar();
        tick();
        break;
      case "checkout": renderCheckout(); break;
      case "receipt": var rc = C.getJSON("receipt"); if (rc) openReceipt(rc); break;
      case "account": openAccount(); break;
    }
  }

  function wire() {
    $("more-concerts").addEventListener("click", function () { loadCatalog(true); });
    $("join-form").addEventListener("submit", function (e) {
      e.preventDefault();
      var name = $("join-name").value.trim();
      if (!name) { $("join-name").focus(); return; }
      createMember(name).then(enterQueue, showError);
    });
    $("queue-again").addEventListener("click", function () { enterQueue(); });
    $("queue-other").addEventListener("click", openCatalog);
    $("seats-other").addEventListener("click", openCatalog);
    $("seatmap").addEventListener("click", function (e) {
      var b = e.target.closest ? e.target.closest("button[data-n]") : null;
      if (!b) return;
      var n = Number(b.getAttribute("data-n"));
      setFocusSeat(n, false);
      toggleSeat(n);
    });
    $("seatmap").addEventListener("keydown", onMapKey);
    $("hold-btn").addEventListener("click", function () {
      if (!S.selected.length) return;
      hold({ seatNumbers: S.selected.slice().sort(function (a, b) { return a - b; }) });
    });
    $("best-n").addEventListener("submit", function (e) {
      e.preventDefault();
      hold({ quantity: Number($("best-qty").value) });
    });
    $("topup-inline").addEventListener("submit", function (e) {
      e.preventDefault();
      var form = $("topup-inline");
      var amount = Math.floor(Number($("topup-inline-amount").value));
      if (!(amount > 0)) return;
      $("topup-inline-btn").disabled = true;
      topUp(amount, form.dataset.key || C.uuid()).then(function (b) {
        $("topup-inline-btn").disabled = false;
        form.dataset.key = "";
        S.balance = b.balance;
        notice(t("checkout.toppedUp", { balance: C.money(b.balance) }), "info");
        renderBalance();
        $("pay-btn").focus();
      }, function (err) {
        $("topup-inline-btn").disabled = false;
        showError(err);
      });
    });
    $("pay-btn").addEventListener("click", pay);
    $("cancel-btn").addEventListener("click", cancelHold);
    $("pick-again").addEventListener("click", function () {
      S.reservation = null;
      if (C.get("token")) openSeats(); else openCatalog();
    });
    $("account-create").addEventListener("submit", function (e) {
      e.preventDefault();
      var name = $("account-name").value.trim();
      if (!name) return;
      createMember(name).then(openAccount, showError);
    });
    $("account-key-form").addEventListener("submit", function (e) {
      e.preventDefault();
      var key = $("account-key").value.trim();
      C.api("GET", "/members/me", { member: key }).then(function (me) {
        C.set("memberKey", key);
        C.set("memberName", me.name);
        C.set("memberId", me.id);
        C.set("token", null);
        openAccount();
      }, function (err) {
        notice(err.code === "UNAUTHENTICATED" ? t("account.badKey") : C.errorText(err));
      });
    });
    $("account-topup").addEventListener("submit", function (e) {
      e.preventDefault();
      var amount = Math.floor(Number($("account-topup-amount").value));
      if (!(amount > 0)) return;
      topUp(amount, C.uuid()).then(function (b) {
        openAccount();
        notice(t("account.toppedUp", { balance: C.money(b.balance) }), "info");
      }, showError);
    });
    $("account-history-more").addEventListener("click", loadHistory);
    $("account-reservations-more").addEventListener("click", loadReservations);
    $("account-forget").addEventListener("click", function () {
      if (!confirm(t("account.forgetConfirm"))) return;
      ["memberKey", "memberName", "memberId", "token", "activeUntil", "reservation", "receipt", "queueStart"].forEach(function (k) { C.set(k, null); });
      clearTimeout(S.pollTimer);
      openAccount();
    });
    window.addEventListener("hashchange", route);
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden && S.view === "checkout") refreshBalance();
    });
    // Another tab changed the place in line or paid: follow it.
    window.addEventListener("storage", function (e) {
      if (e.key === "concert.token" && S.view === "queue") pollQueue(true);
    });
    C.onLang(rerender);
  }

  C.initLang();
  wire();
  route();
})();
