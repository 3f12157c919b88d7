"use strict";
(function () {
  const POLL_MS = 1500, HISTORY_MS = 2000;
  const HEALTH_LABEL = { healthy: "healthy", erroring: "erroring", stale: "no recent report", unreachable: "unreachable" };
  const state = { admin: null, csrf: null, traceUrl: null, overview: null, history: null, spanMin: 5, filter: "", cards: new Map(), lastOk: 0, failing: false };
  const $ = (id) => document.getElementById(id);

  // ---- formatting -------------------------------------------------------------------------
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const int = (n) => Number(n || 0).toLocaleString("en-US");
  function rate(r) {
    if (r == null) return "–";
    if (r === 0) return "0";
    if (r >= 1e6) return (r / 1e6).toFixed(1) + "M";
    if (r >= 1e4) return (r / 1e3).toFixed(1) + "k";
    if (r >= 100) return Math.round(r).toString();
    if (r >= 10) return r.toFixed(1);
    return r.toFixed(2).replace(/\.?0+$/, "") || "0";
  }
  function pct(x) {
    if (x == null) return "–";
    if (x === 0) return "0%";
    const p = x * 100;
    return (p < 0.1 ? "<0.1" : p < 10 ? p.toFixed(1) : Math.round(p).toString()) + "%";
  }
  function lat(us) {
    if (us == null) return "–";
    if (us < 1000) return us + " µs";
    if (us < 1e6) return (us / 1000).toFixed(us < 1e4 ? 2 : us < 1e5 ? 1 : 0) + " ms";
    return (us / 1e6).toFixed(2) + " s";
  }
  function dur(ms) {
    if (ms == null) return "–";
    const s = Math.floor(ms / 1000);
    if (s < 1) return (ms / 1000).toFixed(1) + " s";
    if (s < 60) return s + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " m " + (s % 60) + " s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + " h " + (m % 60) + " m";
    return Math.floor(h / 24) + " d " + (h % 24) + " h";
  }
  function bytes(b) {
    if (b == null) return "–";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return (b >= 100 || i === 0 ? Math.round(b) : b.toFixed(1)) + " " + u[i];
  }
  const errClass = (x) => (x >= 0.05 ? "bad" : x > 0 ? "warn" : "");

  // ---- header and summary -----------------------------------------------------------------
  function renderHeader(o) {
    const r = o.registry;
    const parts = [
      `<span>listening <b class="mono">${esc(r.listen)}</b>${r.tls ? " · TLS" : ""}</span>`,
      `<span>version <b>${esc(r.version)}</b></span>`,
      ...(r.store && r.store !== "memory"
        ? [`<span title="registrations shared by every registry node on this store; this node is ${esc(r.node)}">store <b class="mono">${esc(r.store)}</b></span>`]
        : []),
      `<span>up <b>${dur(r.uptime_ms)}</b></span>`,
      `<span>sessions <b>${int(r.sessions)}</b></span>`,
      `<span>lease TTL <b>${dur(r.lease_ttl_ms)}</b></span>`,
      `<span title="logins succeeded / failed / throttled">logins <b>${int(r.logins.succeeded)}</b> ok` +
        (r.logins.failed ? ` · <b class="bad">${int(r.logins.failed)}</b> failed` : "") +
        (r.logins.throttled ? ` · <b class="warn">${int(r.logins.throttled)}</b> throttled` : "") + `</span>`,
    ];
    const tr = o.traffic || { revision: 0, faults_active: [], unlisted: [] };
    if (tr.revision) parts.push(`<span title="the traffic rules' revision">rules <b>rev ${int(tr.revision)}</b></span>`);
    if (r.dev) parts.push(`<span class="tag dev" title="Any app can log in: never expose a dev-mode registry">DEV MODE</span>`);
    const html = parts.join("");
    if ($("facts").dataset.html !== html) { $("facts").innerHTML = html; $("facts").dataset.html = html; }

    const svcs = o.services;
    const live = svcs.filter((s) => s.instance_count > 0);
    const healthy = live.filter((s) => s.health === "healthy").length;
    const unhealthy = svcs.length - healthy;
    $("sum-services").innerHTML = `${live.length}<small>${unhealthy ? `<span class="bad">${unhealthy} need attention</span>` : "all healthy"}</small>`;
    $("sum-services").dataset.value = live.length;
    $("sum-instances").textContent = int(r.instances);
    $("sum-instances").dataset.value = r.instances;
    let calls = 0, errs = 0, lastCalls = 0, lastErrs = 0, p99 = null;
    for (const s of svcs) {
      calls += s.calls_per_s; errs += s.errors_per_s;
      for (const i of s.instances) { lastCalls += i.last.calls; lastErrs += i.last.errors; }
      if (s.p99_us != null) p99 = Math.max(p99 || 0, s.p99_us);
    }
    $("sum-rate").textContent = rate(calls);
    const er = lastCalls ? lastErrs / lastCalls : 0;
    $("sum-errors").innerHTML = `<span class="${errClass(er)}">${pct(er)}</span><small>${rate(errs)}/s</small>`;
    $("sum-p99").textContent = lat(p99);
    // Faults on: a marker in the header and a banner naming the services, until they go.
    const fa = tr.faults_active;
    const badge = $("faults-active");
    badge.hidden = !fa.length;
    badge.dataset.services = fa.join(",");
    badge.title = fa.length ? "Calls to " + fa.join(", ") + " are delayed or failed on purpose (traffic rules)" : "";
    $("fault-banner").hidden = !fa.length;
    const bannerText = fa.length ? `Calls to ${fa.join(", ")} are delayed or failed on purpose by the traffic rules (revision ${tr.revision}).` : "";
    if ($("fault-banner-text").textContent !== bannerText) $("fault-banner-text").textContent = bannerText;
    document.title = `Stardust · ${live.length} service${live.length === 1 ? "" : "s"}` + (unhealthy ? ` · ${unhealthy} need attention` : "") + (fa.length ? " · FAULT INJECTION ACTIVE" : "");
  }

  // ---- traffic rules ----------------------------------------------------------------------
  function matchText(m) {
    const parts = [];
    if (m && m.callers && m.callers.length) parts.push("callers " + m.callers.join(", "));
    if (m && m.methods && m.methods.length) parts.push("methods " + m.methods.join(", "));
    if (m && m.metadata) for (const [k, v] of Object.entries(m.metadata)) parts.push(`${k}=${v}`);
    return parts.length ? "when " + parts.join("; ") : "every call";
  }
  const num = (x) => Number(x || 0).toLocaleString("en-US", { maximumFractionDigits: 3 });
  function routeItem(r) {
    const to = r.to.map((d) => `<b>${num(d.percent)}%</b> <span class="mono">${esc(d.subset)}</span>`).join(" · ");
    const fallback = r.fallback === "fail" ? " · fails when its subset has no instance" : "";
    return `<li data-route="${esc(r.name)}"><span class="mono">${esc(r.name)}</span> → ${to}<span class="sub">${esc(matchText(r.match) + fallback)}</span></li>`;
  }
  function faultItem(t, x) {
    const what = x.kind === "delay" ? `delay ${int(x.delay_ms)} ms` : `abort <span class="mono">${esc(x.error)}</span>`;
    const on = x.percent > 0;
    const hit = t.injected.filter((i) => i.fault === x.name).reduce((a, i) => a + i.count, 0);
    return `<li data-fault="${esc(x.name)}" data-injected="${hit}" class="${on ? "on" : "dim"}"><span class="mono">${esc(x.name)}</span>: <b class="${on ? "bad" : ""}">${num(x.percent)}%</b> of calls · ${what} · injected <b>${int(hit)}</b><span class="sub">${esc(matchText(x.match))}</span></li>`;
  }
  function trafficHtml(t) {
    const set = new Set(t.faults.map((x) => x.name));
    const removed = t.injected.filter((i) => !set.has(i.fault))
      .map((i) => `<li class="dim" data-fault-removed="${esc(i.fault)}"><span class="mono">${esc(i.fault)}</span> (removed) · ${esc(i.kind)} · injected <b>${int(i.count)}</b></li>`);
    const routes = t.routes.map(routeItem).join("") || `<li class="dim">none: calls go to any instance</li>`;
    const faults = t.faults.map((x) => faultItem(t, x)).join("") + removed.join("") || `<li class="dim">none</li>`;
    return `<div><h3>Routes</h3><ul>${routes}</ul></div>` +
      `<div><h3>Faults <span class="dim">· <span data-field="injected-total" data-value="${t.injected_total}">${int(t.injected_total)}</span> calls injected</span></h3><ul>${faults}</ul></div>`;
  }
  const hasTraffic = (t) => !!t && (t.routes.length > 0 || t.faults.length > 0 || t.injected.length > 0);
  function renderTraffic(el, t) {
    const active = !!(t && t.faults_active);
    if (el.dataset.faults !== (active ? "active" : "")) el.dataset.faults = active ? "active" : "";
    f(el, "fault-badge").hidden = !active;
    const node = f(el, "traffic");
    node.hidden = !hasTraffic(t);
    if (!node.hidden) setHtml(node, trafficHtml(t));
  }
  function renderUnlisted(o) {
    const u = (o.traffic && o.traffic.unlisted) || [];
    $("unlisted").hidden = !u.length;
    setHtml($("unlisted-list"), u.map((t) =>
      `<article class="svc" data-health="down" data-rules-service="${esc(t.name)}" data-faults="${t.faults_active ? "active" : ""}">` +
      `<div class="unlisted-head"><h2 class="mono">${esc(t.name)}</h2>${t.faults_active ? `<span class="fault-badge">FAULT INJECTION ACTIVE</span>` : ""}<span class="dim">no live instances</span></div>` +
      `<div class="traffic">${trafficHtml(t)}</div></article>`).join(""));
  }

  // ---- service cards ----------------------------------------------------------------------
  function card(name) {
    const el = document.createElement("article");
    el.className = "svc";
    el.dataset.service = name;
    el.innerHTML = `
      <div class="svc-head">
        <div class="svc-title">
          <h2></h2>
          <div class="line"><span class="pill" data-field="health"></span><span class="fault-badge" data-field="fault-badge" title="Some calls to this service are delayed or failed on purpose (its traffic rules)" hidden>FAULT INJECTION ACTIVE</span><span><b data-field="instances">0</b> <span data-field="instances-word">instances</span></span><span class="dim" data-field="versions"></span></div>
        </div>
        <div class="stats">
          <div class="stat"><div class="k">Calls/s</div><div class="v" data-field="rate">–</div></div>
          <div class="stat"><div class="k">Errors</div><div class="v" data-field="error-rate">–</div></div>
          <div class="stat"><div class="k">p50</div><div class="v" data-field="p50">–</div></div>
          <div class="stat"><div class="k">p99</div><div class="v" data-field="p99">–</div></div>
          <div class="stat"><div class="k">In flight</div><div class="v" data-field="in-flight">–</div></div>
          <div class="stat"><div class="k">Total calls</div><div class="v" data-field="calls-total">–</div></div>
        </div>
        <div class="chart" data-field="chart">
          <svg preserveAspectRatio="none" viewBox="0 0 300 64"></svg>
          <span class="ymax"></span><span class="xl"></span><span class="xr">now</span><span class="tip"></span>
        </div>
      </div>
      <div class="traffic" data-field="traffic" hidden></div>
      <div class="inst-wrap">
        <table class="inst">
          <colgroup><col style="width:12%"><col style="width:15%"><col style="width:9%"><col style="width:7%"><col style="width:6%"><col style="width:12%"><col style="width:7%"><col style="width:5%"><col style="width:6%"><col style="width:5%"><col style="width:8%"><col style="width:8%"></colgroup>
          <thead><tr><th>Health</th><th>Instance</th><th>Version</th><th class="r">Calls/s</th><th class="r">Errors</th><th class="r">p50 / p99</th><th class="r">In flight</th><th class="r">CPU</th><th class="r">Memory</th><th class="r">Lease</th><th class="r">Up</th><th class="r" title="Calls since it registered">Total</th></tr></thead>
          <tbody data-field="instance-rows"></tbody>
        </table>
      </div>
      <details class="methods"><summary data-field="methods-summary">Methods</summary>
        <table><thead><tr><th>Method</th><th class="r">Calls/s</th><th class="r">Error rate</th><th class="r">p50</th><th class="r">p90</th><th class="r">p99</th><th class="r">Max</th><th class="r">In flight</th><th class="r">Total calls</th><th class="r">Total errors</th><th>Errors by kind</th><th title="Trace ids of the latest slowest call and the latest failure (calls with a sampled trace)">Traces</th></tr></thead>
        <tbody data-field="method-rows"></tbody></table>
      </details>
      <div class="gone" data-field="gone" hidden></div>`;
    el.querySelector("h2").textContent = name;
    const chart = el.querySelector(".chart");
    chart.addEventListener("mousemove", (ev) => hover(el, chart, ev));
    chart.addEventListener("mouseleave", () => { chart.querySelector(".tip").style.display = "none"; const l = chart.querySelector("line.hover"); if (l) l.remove(); });
    return el;
  }

  const f = (el, field) => el.querySelector(`[data-field="${field}"]`);
  function setText(el, field, text, value) {
    const n = f(el, field);
    if (n.textContent !== text) n.textContent = text;
    if (value !== undefined) n.dataset.value = value;
    return n;
  }
  function setHtml(node, html) { if (node._html !== html) { node.innerHTML = html; node._html = html; } }

  // Exemplars: of several calls, the slowest, and the most recent failure.
  const slower = (a, b) => (!a || (b && b.latency_us > a.latency_us) ? b : a);
  const newer = (a, b) => (!a || (b && b.age_ms < a.age_ms) ? b : a);
  function slowestLine(e) {
    return e ? `<span class="sub one" data-field="slowest-trace">slowest ${traceLink(e.trace_id, true)} ${lat(e.latency_us)}</span>` : "";
  }
  function failureLine(e) {
    return e ? `<span class="sub one" data-field="failed-trace" title="${esc(e.error || "")}, ${dur(e.age_ms)} ago">last ${traceLink(e.trace_id, true)} ${esc(e.error || "")}</span>` : "";
  }

  function instanceRow(i) {
    const h = i.health;
    const why = h === "healthy" ? "" : `<span class="why">${esc(i.health_reasons.join("; "))}</span>`;
    const p = i.process || {};
    const cpu = p.cpu_percent == null ? "–" : p.cpu_percent.toFixed(1) + "%";
    const tags = Object.entries(i.tags || {}).map(([k, v]) => `${esc(k)}=${esc(v)}`).join(" ");
    const errs = i.last.errors ? `<span class="${errClass(i.last.error_rate)}">${pct(i.last.error_rate)}</span>` : `<span class="dim">0</span>`;
    const lease = i.lease_age_ms;
    let slowest = null, failed = null;
    for (const m of i.methods) { slowest = slower(slowest, m.slowest); failed = newer(failed, m.last_failure); }
    return `<tr data-instance="${esc(i.endpoint)}" data-health="${h}">
      <td><span class="pill ${h}" title="${esc(i.health_reasons.join("; "))}">${HEALTH_LABEL[h] || h}</span>${why}</td>
      <td><span class="mono">${esc(i.endpoint)}</span>${i.tls ? `<span class="lock" title="TLS">TLS</span>` : ""}<span class="sub">${esc(i.app)}${i.weight !== 100 ? ` · weight ${i.weight}` : ""}${tags ? ` · ${tags}` : ""}</span></td>
      <td class="mono">${esc(i.version)}${p.software_version ? `<span class="sub one" title="the Stardust version it runs">stardust ${esc(p.software_version)}</span>` : ""}</td>
      <td class="r">${rate(i.last.calls_per_s)}</td>
      <td class="r">${errs}${failureLine(failed)}</td>
      <td class="r">${lat(i.last.p50_us)} <span class="dim">/</span> ${lat(i.last.p99_us)}${slowestLine(slowest)}</td>
      <td class="r">${int(p.in_flight)}</td>
      <td class="r">${cpu}</td>
      <td class="r">${bytes(p.rss_bytes)}</td>
      <td class="r ${lease > (state.overview.registry.lease_ttl_ms * 0.6) ? "warn" : ""}" title="since its lease was last renewed">${dur(lease)}</td>
      <td class="r">${p.uptime_ms ? dur(p.uptime_ms) : "–"}</td>
      <td class="r">${int(i.totals.calls)}</td>
    </tr>`;
  }

  function methodRows(s) {
    const by = new Map();
    const blank = () => ({ calls: 0, errors: 0, rate: 0, lastCalls: 0, lastErrors: 0, inFlight: 0, p50: null, p90: null, p99: null, max: null, kinds: {}, slowest: null, failed: null });
    for (const d of s.methods || []) if (!by.has(d.name)) by.set(d.name, blank());
    for (const i of s.instances) for (const m of i.methods) {
      let a = by.get(m.method);
      if (!a) by.set(m.method, (a = blank()));
      a.calls += m.totals.calls; a.errors += m.totals.errors; a.rate += m.last.calls_per_s;
      a.lastCalls += m.last.calls; a.lastErrors += m.last.errors; a.inFlight += m.last.in_flight;
      for (const k of ["p50", "p90", "p99", "max"]) { const v = m.last[k + "_us"]; if (v != null) a[k] = Math.max(a[k] || 0, v); }
      for (const [k, n] of Object.entries(m.totals.errors_by_kind)) a.kinds[k] = (a.kinds[k] || 0) + n;
      a.slowest = slower(a.slowest, m.slowest); a.failed = newer(a.failed, m.last_failure);
    }
    const described = new Map((s.methods || []).map((d) => [d.name, d]));
    const names = [...by.keys()].sort();
    const rows = names.map((n) => {
      const a = by.get(n);
      const d = described.get(n);
      const er = a.lastCalls ? a.lastErrors / a.lastCalls : 0;
      const kinds = Object.entries(a.kinds).sort((x, y) => y[1] - x[1]).map(([k, c]) => `${esc(k)} ${int(c)}`).join(", ");
      const sig = d ? `<span class="sig" data-field="signature" title="${esc(d.docs || "")}">${esc(d.signature)}</span>` : "";
      const call = state.admin ? `<button type="button" class="callm" data-call-method="${esc(n)}">call</button>` : "";
      return `<tr data-method="${esc(n)}"><td class="mono">${esc(n)}${call}${sig}</td><td class="r">${rate(a.rate)}</td><td class="r ${errClass(er)}">${pct(er)}</td>
        <td class="r">${lat(a.p50)}</td><td class="r">${lat(a.p90)}</td><td class="r">${lat(a.p99)}</td><td class="r">${lat(a.max)}</td>
        <td class="r">${int(a.inFlight)}</td><td class="r">${int(a.calls)}</td><td class="r ${a.errors ? "warn" : ""}">${int(a.errors)}</td><td class="muted">${kinds || "–"}</td>
        <td>${slowestLine(a.slowest)}${failureLine(a.failed)}</td></tr>`;
    });
    return { count: names.length, html: rows.join("") || `<tr><td colspan="12" class="muted">No calls reported yet.</td></tr>` };
  }

  function renderService(el, s) {
    el.dataset.health = s.health;
    const pill = f(el, "health");
    pill.className = "pill " + s.health;
    pill.textContent = s.health;
    setText(el, "instances", String(s.instance_count), s.instance_count);
    setText(el, "instances-word", s.instance_count === 1 ? "instance" : "instances");
    const versions = [...new Set(s.instances.map((i) => i.version))];
    setText(el, "versions", versions.length ? "v" + versions.join(", v") : "");
    setText(el, "rate", rate(s.calls_per_s), s.calls_per_s);
    const er = setText(el, "error-rate", pct(s.error_rate), s.error_rate);
    er.className = "v " + errClass(s.error_rate);
    setText(el, "p50", lat(s.p50_us));
    setText(el, "p99", lat(s.p99_us));
    setText(el, "in-flight", int(s.in_flight), s.in_flight);
    setText(el, "calls-total", int(s.calls_total), s.calls_total);
    setHtml(f(el, "instance-rows"), s.instances.map(instanceRow).join("") ||
      `<tr><td colspan="12" class="muted">No live instances.</td></tr>`);
    const m = methodRows(s);
    setText(el, "methods-summary", `Methods (${m.count})`);
    setHtml(f(el, "method-rows"), m.html);
    const gone = f(el, "gone");
    gone.hidden = s.instance_count > 0;
    if (s.instance_count === 0) gone.textContent = `Its last instance went ${dur(s.gone_ms)} ago; the service stays listed for a few minutes.`;
    renderTraffic(el, s.traffic);
    drawChart(el);
  }

  function matches(s, q) {
    if (!q) return true;
    if (s.name.toLowerCase().includes(q)) return true;
    return s.instances.some((i) => i.endpoint.toLowerCase().includes(q) || i.app.toLowerCase().includes(q));
  }

  function renderServices() {
    const o = state.overview;
    const main = $("services");
    const q = state.filter;
    const seen = new Set();
    let shown = 0;
    for (const s of o.services) {
      seen.add(s.name);
      let el = state.cards.get(s.name);
      if (!el) { el = card(s.name); state.cards.set(s.name, el); }
      el._service = s;
      const show = matches(s, q);
      el.hidden = !show;
      if (show) shown++;
      renderService(el, s);
    }
    for (const [name, el] of state.cards) if (!seen.has(name)) { el.remove(); state.cards.delete(name); }
    // Keep DOM order = name order (the API's order), moving only what is out of place.
    let prev = null;
    for (const s of o.services) {
      const el = state.cards.get(s.name);
      const want = prev ? prev.nextSibling : main.firstChild;
      if (el !== want) main.insertBefore(el, want);
      prev = el;
    }
    let empty = $("empty");
    if (!o.services.length || !shown) {
      if (!empty) { empty = document.createElement("div"); empty.id = "empty"; empty.className = "empty-state"; main.appendChild(empty); }
      empty.innerHTML = o.services.length
        ? `<h3>No service matches “${esc(q)}”</h3>`
        : `<h3>No services registered yet</h3>Providers appear here as soon as they register with this registry at <span class="mono">${esc(o.registry.listen)}</span>.`;
    } else if (empty) empty.remove();
  }

  // ---- charts -----------------------------------------------------------------------------
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }
  function points(name) {
    const h = state.history;
    const series = h && h.services[name];
    if (!series) return [];
    const n = series.calls_per_s.length, out = [];
    for (let k = 0; k < n; k++) {
      const t = series.end_ms - (n - 1 - k) * h.slot_ms + h.slot_ms;
      out.push({ t, c: series.calls_per_s[k], e: series.errors_per_s[k] });
    }
    return out;
  }
  function drawChart(el) {
    const chart = f(el, "chart");
    const svg = chart.querySelector("svg");
    const W = 300, H = 64, span = state.spanMin * 60000;
    const now = state.history ? state.history.now_ms : Date.now();
    const from = now - span;
    const pts = points(el.dataset.service).filter((p) => p.t >= from - (state.history ? state.history.slot_ms : 0));
    let max = 0;
    for (const p of pts) { if (p.c != null) max = Math.max(max, p.c); if (p.e != null) max = Math.max(max, p.e); }
    max = niceMax(max);
    const x = (t) => Math.max(0, Math.min(W, ((t - from) / span) * W));
    const y = (v) => H - 2 - (v / max) * (H - 6);
    const path = (key) => {
      let d = "", on = false;
      for (const p of pts) {
        const v = p[key];
        if (v == null) { on = false; continue; }
        d += (on ? "L" : "M") + x(p.t).toFixed(1) + " " + y(v).toFixed(1);
        on = true;
      }
      return d;
    };
    const calls = path("c");
    let area = "";
    { // area under each contiguous run of calls
      let run = [];
      const flush = () => {
        if (run.length > 1) area += `M${x(run[0].t).toFixed(1)} ${H}` + run.map((p) => `L${x(p.t).toFixed(1)} ${y(p.c).toFixed(1)}`).join("") + `L${x(run[run.length - 1].t).toFixed(1)} ${H}Z`;
        run = [];
      };
      for (const p of pts) { if (p.c == null) flush(); else run.push(p); }
      flush();
    }
    const anyErr = pts.some((p) => p.e);
    const grid = [0.5, 1].map((g) => `<line x1="0" x2="${W}" y1="${y(max * g).toFixed(1)}" y2="${y(max * g).toFixed(1)}" stroke="var(--border)" stroke-dasharray="3 3" vector-effect="non-scaling-stroke"/>`).join("");
    const html = `${grid}<line x1="0" x2="${W}" y1="${H}" y2="${H}" stroke="var(--border-2)" vector-effect="non-scaling-stroke"/>` +
      (area ? `<path d="${area}" fill="var(--chart-fill)"/>` : "") +
      (calls ? `<path d="${calls}" fill="none" stroke="var(--chart)" stroke-width="1.6" stroke-linejoin="round" vector-effect="non-scaling-stroke"/>` : "") +
      (anyErr ? `<path d="${path("e")}" fill="none" stroke="var(--bad)" stroke-width="1.4" vector-effect="non-scaling-stroke"/>` : "");
    setHtml(svg, html);
    chart.querySelector(".ymax").textContent = pts.length ? rate(max) + "/s" : "";
    chart.querySelector(".xl").textContent = "−" + state.spanMin + " min";
    let empty = chart.querySelector(".empty");
    if (!pts.some((p) => p.c != null)) {
      if (!empty) { empty = document.createElement("span"); empty.className = "empty"; empty.textContent = "no figures yet"; chart.appendChild(empty); }
    } else if (empty) empty.remove();
    chart._pts = pts; chart._x = x; chart._from = from; chart._span = span; chart._now = now;
  }
  function hover(el, chart, ev) {
    const pts = chart._pts || [];
    const tip = chart.querySelector(".tip");
    if (!pts.length) return;
    const r = chart.getBoundingClientRect();
    const t = chart._from + ((ev.clientX - r.left) / r.width) * chart._span;
    let best = null;
    for (const p of pts) if (p.c != null && (!best || Math.abs(p.t - t) < Math.abs(best.t - t))) best = p;
    if (!best) return;
    const px = (chart._x(best.t) / 300) * r.width;
    tip.style.display = "block";
    tip.style.left = Math.max(50, Math.min(r.width - 50, px)) + "px";
    const ago = Math.max(0, chart._now - best.t);
    tip.textContent = `${rate(best.c)}/s` + (best.e ? ` · ${rate(best.e)} err/s` : "") + ` · ${ago < 3000 ? "now" : dur(ago) + " ago"}`;
    const svg = chart.querySelector("svg");
    let line = svg.querySelector("line.hover");
    if (!line) { line = document.createElementNS("http://www.w3.org/2000/svg", "line"); line.setAttribute("class", "hover"); line.setAttribute("stroke", "var(--muted)"); line.setAttribute("vector-effect", "non-scaling-stroke"); line.setAttribute("y1", "0"); line.setAttribute("y2", "64"); svg.appendChild(line); svg._html = null; }
    const lx = chart._x(best.t).toFixed(1);
    line.setAttribute("x1", lx); line.setAttribute("x2", lx);
  }

  // ---- polling ----------------------------------------------------------------------------
  function setLive(ok) {
    const live = $("live");
    state.failing = !ok;
    live.className = "live " + (ok ? "ok" : "lost");
    $("banner").classList.toggle("show", !ok && !!state.overview);
    document.body.classList.toggle("stale-data", !ok && !!state.overview);
    updateLiveText();
  }
  function updateLiveText() {
    const ago = state.lastOk ? Date.now() - state.lastOk : null;
    $("live-text").textContent = state.failing ? "registry unreachable" + (ago != null ? ` · last data ${dur(ago)} ago` : "") : state.lastOk ? "live" : "connecting";
  }
  async function getJson(path) {
    const r = await fetch(path, { cache: "no-store", headers: { accept: "application/json" } });
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return r.json();
  }
  async function pollOverview() {
    try {
      state.overview = await getJson("/api/services");
      state.lastOk = Date.now();
      renderHeader(state.overview);
      renderServices();
      renderUnlisted(state.overview);
      setLive(true);
    } catch (e) {
      setLive(false);
    }
    setTimeout(pollOverview, POLL_MS);
  }
  async function pollHistory() {
    try {
      state.history = await getJson("/api/history?minutes=" + state.spanMin);
      for (const el of state.cards.values()) drawChart(el);
    } catch (e) { /* the overview poll reports connectivity */ }
    setTimeout(pollHistory, HISTORY_MS);
  }
  // ---- admin: login and calls (the only requests that change anything) -----------------------
  // A trace id shown anywhere links to the trace UI when the registry was started with
  // STARDUST_TRACE_URL (its "{trace_id}" replaced).
  // `short` shows the first 8 digits (the whole id in the tooltip).
  function traceLink(id, short) {
    if (!id) return "";
    const text = short ? id.slice(0, 8) + "…" : id;
    if (!state.traceUrl) return `<span class="mono trace" title="trace ${esc(id)}">${esc(text)}</span>`;
    const href = state.traceUrl.replace("{trace_id}", encodeURIComponent(id));
    return `<a class="mono trace" data-trace-id="${esc(id)}" title="trace ${esc(id)}" href="${esc(href)}" target="_blank" rel="noopener noreferrer">${esc(text)}</a>`;
  }
  function setAdmin(info) {
    state.admin = info && info.admin ? info.admin : null;
    state.csrf = state.admin ? info.csrf : null;
    if (info && "trace_url" in info) state.traceUrl = info.trace_url;
    $("login-box").hidden = !!state.admin;
    $("call-panel").hidden = !state.admin;
    $("admin-app").textContent = state.admin || "";
    if (state.overview) { for (const el of state.cards.values()) f(el, "method-rows")._html = null; renderServices(); }
  }
  async function post(path, body, type) {
    const headers = { accept: "application/json" };
    if (type) headers["content-type"] = type;
    if (state.csrf) headers["x-csrf-token"] = state.csrf;
    const r = await fetch(path, { method: "POST", cache: "no-store", credentials: "same-origin", headers, body });
    let j = null;
    try { j = await r.json(); } catch (e) { /* no JSON */ }
    return { status: r.status, retry: r.headers.get("retry-after"), json: j || {} };
  }
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const err = $("login-error");
    err.textContent = "";
    const body = new URLSearchParams({ app: $("login-app").value, secret: $("login-secret").value });
    try {
      const r = await post("/console/login", body.toString(), "application/x-www-form-urlencoded");
      $("login-secret").value = "";
      if (r.status === 200) { setAdmin(r.json); return; }
      err.textContent = r.status === 429 ? `Too many attempts: retry in ${r.retry || "a few"} s.` : (r.json.error || "HTTP " + r.status);
      err.dataset.status = String(r.status);
    } catch (x) { err.textContent = "Cannot reach the registry."; }
  });
  $("logout").addEventListener("click", async () => {
    try { await post("/console/logout", null, null); } catch (x) { /* the session ends anyway */ }
    setAdmin(null);
  });
  $("call-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const st = $("call-status"), out = $("call-result"), latency = $("call-latency");
    st.className = ""; st.textContent = "calling…"; out.textContent = ""; latency.textContent = "";
    let args;
    try { args = JSON.parse($("call-args").value || "[]"); } catch (x) { st.className = "err"; st.textContent = "The arguments are not JSON: " + x.message; return; }
    const call = { service: $("call-service").value.trim(), method: $("call-method").value.trim(), args };
    const ep = $("call-endpoint").value.trim();
    if (ep) call.endpoint = ep;
    try {
      const r = await post("/console/call", JSON.stringify(call), "application/json");
      const j = r.json;
      if (r.status === 401 || r.status === 403) { setAdmin(null); st.className = "err"; st.textContent = j.error || "log in again"; return; }
      if (j.latency_ms != null) latency.innerHTML = `${esc(String(j.latency_ms))} ms${j.endpoint ? " · " + esc(j.endpoint) : ""}${j.trace_id ? " · trace " + traceLink(j.trace_id) : ""}`;
      if (j.ok) { st.className = "ok"; st.textContent = "ok"; out.textContent = JSON.stringify(j.result, null, 2); }
      else if (j.error) {
        st.className = "err";
        st.textContent = j.error.kind === "application" ? "the method returned its error" : "failed: " + j.error.kind;
        out.textContent = j.error.kind === "application" ? JSON.stringify(j.error.value, null, 2) : j.error.message;
      } else { st.className = "err"; st.textContent = "HTTP " + r.status; }
      out.dataset.status = st.className;
    } catch (x) { st.className = "err"; st.textContent = "Cannot reach the registry."; }
  });
  $("services").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-call-method]");
    if (!b) return;
    const card = b.closest("[data-service]");
    $("call-service").value = card ? card.dataset.service : "";
    $("call-method").value = b.dataset.callMethod;
    $("call-args").focus();
  });
  getJson("/console/session").then(setAdmin).catch(() => setAdmin(null));

  $("filter").addEventListener("input", (e) => { state.filter = e.target.value.trim().toLowerCase(); if (state.overview) renderServices(); });
  $("span").addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (!b) return;
    state.spanMin = Number(b.dataset.min);
    for (const x of $("span").children) x.classList.toggle("on", x === b);
    for (const el of state.cards.values()) drawChart(el);
    getJson("/api/history?minutes=" + state.spanMin).then((h) => { state.history = h; for (const el of state.cards.values()) drawChart(el); }).catch(() => {});
  });
  setInterval(updateLiveText, 1000);
  pollOverview();
  pollHistory();
})();
