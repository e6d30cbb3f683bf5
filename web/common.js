// Shared by the fan pages and the operator dashboard: settings the server
// put in the page, translations, money/time formatting, the API client and
// the sentences for the API's error codes. No framework, no build step.
(function () {
  "use strict";
  var C = {};
  var PREFIX = "concert.";

  // Settings the server wrote into the page (limits, zone) — see src/routes/pages.rs.
  try {
    C.cfg = JSON.parse(document.getElementById("config").textContent);
  } catch (e) {
    C.cfg = {};
  }

  // ---- storage (localStorage; a page works without it, it just forgets) ----
  C.get = function (name) {
    try { return localStorage.getItem(PREFIX + name); } catch (e) { return null; }
  };
  C.set = function (name, value) {
    try {
      if (value === null || value === undefined) localStorage.removeItem(PREFIX + name);
      else localStorage.setItem(PREFIX + name, String(value));
    } catch (e) { /* private mode: keep going without memory */ }
  };
  C.getJSON = function (name) {
    var raw = C.get(name);
    if (!raw) return null;
    try { return JSON.parse(raw); } catch (e) { return null; }
  };
  C.setJSON = function (name, value) { C.set(name, value === null ? null : JSON.stringify(value)); };

  // ---- language: the browser's choice, unless the switch was used ----
  function browserLang() {
    var langs = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"];
    for (var i = 0; i < langs.length; i++) {
      var l = String(langs[i]).toLowerCase();
      if (l.indexOf("ko") === 0) return "ko";
      if (l.indexOf("en") === 0) return "en";
    }
    return "en";
  }
  C.lang = C.get("lang") === "ko" || C.get("lang") === "en" ? C.get("lang") : browserLang();

  C.t = function (key, params) {
    var dict = window.I18N[C.lang] || window.I18N.en;
    var text = dict[key];
    if (text === undefined) text = window.I18N.en[key];
    if (text === undefined) text = key;
    if (params) {
      text = text.replace(/\{(\w+)\}/g, function (m, name) {
        return params[name] === undefined ? m : String(params[name]);
      });
    }
    return text;
  };

  C.applyI18n = function (root) {
    root = root || document;
    document.documentElement.lang = C.lang;
    var nodes = root.querySelectorAll("[data-i18n]");
    for (var i = 0; i < nodes.length; i++) nodes[i].textContent = C.t(nodes[i].getAttribute("data-i18n"));
    nodes = root.querySelectorAll("[data-i18n-label]");
    for (i = 0; i < nodes.length; i++) nodes[i].setAttribute("aria-label", C.t(nodes[i].getAttribute("data-i18n-label")));
    nodes = root.querySelectorAll("[data-i18n-placeholder]");
    for (i = 0; i < nodes.length; i++) nodes[i].setAttribute("placeholder", C.t(nodes[i].getAttribute("data-i18n-placeholder")));
    var sw = document.getElementById("lang-switch");
    if (sw) {
      sw.textContent = C.t("lang.switch");
      sw.setAttribute("aria-label", C.t("lang.switchLabel"));
      sw.setAttribute("lang", C.lang === "ko" ? "en" : "ko");
    }
  };

  var langListeners = [];
  C.onLang = function (fn) { langListeners.push(fn); };
  C.setLang = function (lang) {
    C.lang = lang;
    C.set("lang", lang);
    C.applyI18n(document);
    for (var i = 0; i < langListeners.length; i++) langListeners[i]();
  };
  C.initLang = function () {
    C.applyI18n(document);
    var sw = document.getElementById("lang-switch");
    if (sw) sw.addEventListener("click", function () { C.setLang(C.lang === "ko" ? "en" : "ko"); });
  };

  // ---- formatting ----
  C.money = function (n) {
    n = Number(n) || 0;
    if (C.lang === "ko") return n.toLocaleString("ko-KR") + "원";
    return (n < 0 ? "-₩" : "₩") + Math.abs(n).toLocaleString("en-US");
  };
  C.dateTime = function (iso) {
    var d = new Date(iso);
    if (isNaN(d.getTime())) return iso || "";
    var opts = { year: "numeric", month: "short", day: "numeric", weekday: "short", hour: "2-digit", minute: "2-digit" };
    if (C.cfg.timezone) opts.timeZone = C.cfg.timezone;
    try {
      return new Intl.DateTimeFormat(C.lang === "ko" ? "ko-KR" : "en-GB", opts).format(d);
    } catch (e) {
      delete opts.timeZone;
      return new Intl.DateTimeFormat(C.lang === "ko" ? "ko-KR" : "en-GB", opts).format(d);
    }
  };
  C.clock = function (date) {
    return (date || new Date()).toLocaleTimeString(C.lang === "ko" ? "ko-KR" : "en-GB");
  };
  // A duration for people: "3 min 20 s", "45 s", "1 h 5 min".
  C.duration = function (seconds) {
    seconds = Math.max(0, Math.round(seconds));
    if (seconds >= 3600) return C.t("time.hourMin", { h: Math.floor(seconds / 3600), m: Math.floor((seconds % 3600) / 60) });
    if (seconds >= 60) return C.t("time.minSec", { m: Math.floor(seconds / 60), s: seconds % 60 });
    return C.t("time.sec", { s: seconds });
  };
  // A countdown: "4:59".
  C.countdown = function (seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    var m = Math.floor(seconds / 60), s = seconds % 60;
    return m + ":" + (s < 10 ? "0" : "") + s;
  };

  C.uuid = function () {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join("");
  };

  // ---- DOM helpers ----
  C.$ = function (id) { return document.getElementById(id); };
  // el("p", {class: "x", text: "..."}, [children])
  C.el = function (tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      for (var k in attrs) {
        if (!Object.prototype.hasOwnProperty.call(attrs, k) || attrs[k] === undefined || attrs[k] === null) continue;
        if (k === "text") node.textContent = attrs[k];
        else if (k === "class") node.className = attrs[k];
        else if (k.indexOf("on") === 0) node.addEventListener(k.slice(2), attrs[k]);
        else node.setAttribute(k, attrs[k]);
      }
    }
    if (children) {
      for (var i = 0; i < children.length; i++) {
        if (children[i] === null || children[i] === undefined) continue;
        node.appendChild(typeof children[i] === "string" ? document.createTextNode(children[i]) : children[i]);
      }
    }
    return node;
  };
  C.clear = function (node) { while (node.firstChild) node.removeChild(node.firstChild); return node; };

  // ---- the API ----
  // C.api("POST", "/reservations", {body, member: true, token: true, admin: key, idem: key})
  // resolves with the parsed JSON (or null), rejects with an ApiError:
  // {code, status, detail, body, retryAfter}.
  function ApiError(code, status, detail, body, retryAfter) {
    this.code = code;
    this.status = status;
    this.detail = detail;
    this.body = body;
    this.retryAfter = retryAfter;
  }
  C.ApiError = ApiError;

  C.api = function (method, path, opts) {
    opts = opts || {};
    var headers = { Accept: "application/json" };
    if (opts.body !== undefined) headers["Content-Type"] = "application/json";
    if (opts.member) headers.Authorization = "Bearer " + (typeof opts.member === "string" ? opts.member : C.get("memberKey"));
    if (opts.token) headers["X-Queue-Token"] = typeof opts.token === "string" ? opts.token : C.get("token");
    if (opts.admin) headers["X-Admin-Key"] = opts.admin;
    if (opts.idem) headers["Idempotency-Key"] = opts.idem;
    var init = { method: method, headers: headers, cache: "no-store" };
    if (opts.body !== undefined) init.body = JSON.stringify(opts.body);
    var url = (path.indexOf("/") === 0 && path.indexOf("/api/") !== 0 ? "/api/v1" : "") + path;
    return fetch(url, init).then(
      function (res) {
        return res.text().then(function (text) {
          var body = null;
          if (text) { try { body = JSON.parse(text); } catch (e) { body = null; } }
          if (res.ok) return body;
          var code = body && body.code ? body.code : res.status >= 500 ? "UNAVAILABLE" : "UNKNOWN";
          throw new ApiError(code, res.status, body && body.detail, body, Number(res.headers.get("Retry-After")) || 0);
        });
      },
      function () {
        throw new ApiError("NETWORK", 0, null, null, 0);
      }
    );
  };

  // The sentence a fan reads for an error (never the JSON).
  C.errorText = function (err) {
    if (!(err instanceof ApiError)) return C.t("err.UNKNOWN", { status: "?" });
    var key = "err." + err.code;
    var text = C.t(key, { max: C.cfg.maxSeatsPerMember || 4, status: err.status });
    if (text === key) text = C.t("err.UNKNOWN", { status: err.status });
    return text;
  };

  // Whether the server's OpenAPI document declares `prop` on schema `name`
  // (feature detection for additions such as best-available holds).
  var specPromise = null;
  C.schemaHas = function (name, prop) {
    if (!specPromise) {
      specPromise = fetch("/api-docs/openapi.json", { cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .catch(function () { return null; });
    }
    return specPromise.then(function (spec) {
      var schema = spec && spec.components && spec.components.schemas && spec.components.schemas[name];
      return !!(schema && schema.properties && schema.properties[prop]);
    });
  };

  window.C = C;
})();
