"use strict";
// The mlmaster task report: draws the data block (#report-data) as a tree and charts.
// Every text from the data is set with textContent, never parsed as markup.
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const task = data.task;
  const nodes = data.nodes;
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const bestId = task.best ? task.best.node_id : null;
  const STATUS_COLOURS = {
    done: "#2e9d5b", buggy: "#d9453b", failed: "#7a2a2a", running: "#2f7ed8",
    evaluating: "#6aa5e8", ready: "#c9b458", generating: "#b8b8b8", pending: "#e2e2e2",
  };

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function svg(tag, attrs, children) {
    const node = document.createElementNS(SVG, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
  }

  function append(node, children) {
    for (const child of children || []) {
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
  }

  function fmtMetric(value) {
    return value === null || value === undefined ? "-" : String(Number(value.toPrecision(6)));
  }

  // A node's validation metric less its holdout metric, signed; "-" without both.
  function fmtGap(n) {
    if (typeof n.metric !== "number" || typeof n.holdout_metric !== "number") return "-";
    const gap = n.metric - n.holdout_metric;
    return (gap >= 0 ? "+" : "") + fmtMetric(gap);
  }

  function holdoutText(h) {
    if (!h || typeof h !== "object") return null;
    if (h.state !== "on") return `holdout: off (${h.reason || "no reason given"})`;
    const share = typeof h.fraction === "number" ? ` (${Number((h.fraction * 100).toPrecision(3))}%)` : "";
    return `holdout: ${h.rows} rows${share}, never seen by the search` +
      (h.warning ? `; warning: ${h.warning}` : "");
  }

  function selectionText(s) {
    if (!s || typeof s !== "object" || s.node_id === null || s.node_id === undefined) return null;
    let text = `final selection: node ${s.node_id} by the ${s.rule} rule` + (s.reason ? `: ${s.reason}` : "");
    const e = s.ensemble;
    if (e && typeof e === "object") {
      text += e.kept ? `; ensemble kept (the ${e.method} of nodes ${(e.members || []).join(", ")}, ` +
        `holdout ${fmtMetric(e.holdout_metric)})` : "; no ensemble";
      if (e.reason) text += `: ${e.reason}`;
    }
    return text;
  }

  function fmtSeconds(s) {
    if (s < 120) return s.toFixed(s < 10 ? 1 : 0) + " s";
    if (s < 7200) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function fmtDate(epoch) {
    return epoch ? new Date(epoch * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC"
      : "-";
  }

  // ---- header
  function header() {
    const usage = task.usage || {};
    const best = task.best ? `${fmtMetric(task.best.metric)} (node ${task.best.node_id})` : "-";
    const facts = [
      `state: ${task.state}`, `metric: ${task.metric} (${task.lower_is_better ? "lower" : "higher"} is better)`,
      `best: ${best}`, `nodes done: ${task.nodes_done} / ${task.steps} steps`,
      `policy: ${task.policy}`,
      `tokens: ${usage.total_tokens || 0} in ${usage.calls || 0} calls, $${(usage.cost || 0).toFixed(4)}`,
      `elapsed: ${fmtSeconds(data.series.now)} of ${fmtSeconds(task.time_limit_s)}`,
      `generated: ${fmtDate(data.generated_at)}`,
    ];
    const parts = [el("h1", { text: `${task.name} (${task.id})` }),
      el("div", { class: "facts" }, facts.map((f) => el("span", { text: f })))];
    for (const [cls, text] of [["holdout", holdoutText(task.holdout)],
      ["selection", selectionText(task.selection)]]) {
      if (text) parts.push(el("div", { class: cls, text }));
    }
    if (task.error) parts.push(el("div", { class: "note", text: `error: ${task.error}` }));
    if (nodes.some((n) => Object.keys(n.cut).length)) {
      const c = data.caps;
      parts.push(el("div", { class: "note", text: "Some node texts are cut to keep this file " +
        `small (code to ${c.code} characters, output to ${c.output}, memory to ${c.memory}, ` +
        `other texts to ${c.text}); each cut text says so where it is shown.` }));
    }
    return el("header", {}, parts);
  }

  // ---- tree
  function layout() {
    const kids = new Map([[0, []]]);
    for (const n of nodes) {
      const parent = n.parent_id !== null && byId.has(n.parent_id) ? n.parent_id : 0;
      if (!kids.has(parent)) kids.set(parent, []);
      kids.get(parent).push(n.id);
    }
    const pos = new Map();
    let nextX = 0;
    // Iterative post-order walk: a long chain of improvements must not overflow the stack.
    const stack = [[0, 0, false]];
    while (stack.length) {
      const [id, depth, seen] = stack.pop();
      const children = (kids.get(id) || []).filter((c) => !pos.has(c));
      if (!seen && children.length) {
        stack.push([id, depth, true]);
        for (let i = children.length - 1; i >= 0; i--) stack.push([children[i], depth + 1, false]);
        continue;
      }
      const xs = (kids.get(id) || []).map((c) => pos.get(c)).filter(Boolean).map((p) => p.x);
      pos.set(id, { x: xs.length ? (Math.min(...xs) + Math.max(...xs)) / 2 : nextX++, y: depth });
    }
    return pos;
  }

  function metricColour(node, range) {
    if (node.metric === null || node.status !== "done") return "#d0d3d9";
    let t = range.hi > range.lo ? (node.metric - range.lo) / (range.hi - range.lo) : 1;
    if (task.lower_is_better) t = 1 - t;
    // A short viridis: yellow (worst) to teal to purple (best).
    const stops = [[253, 231, 37], [33, 145, 140], [68, 1, 84]];
    const [a, b, u] = t < 0.5 ? [stops[0], stops[1], t * 2] : [stops[1], stops[2], t * 2 - 1];
    return `rgb(${a.map((v, i) => Math.round(v + (b[i] - v) * u)).join(",")})`;
  }

  function treeCard(select) {
    const DX = 34, DY = 64, R = 11;
    const pos = layout();
    const place = (id) => ({ x: pos.get(id).x * DX, y: pos.get(id).y * DY });
    const viewport = svg("g", {});
    const canvas = svg("svg", { id: "tree", role: "img", "aria-label": "search tree" }, [viewport]);
    for (const n of nodes) {
      n.parent_ids.forEach((p, i) => {
        const from = place(byId.has(p) ? p : 0), to = place(n.id);
        const bend = (from.y + to.y) / 2;
        viewport.append(svg("path", { class: i ? "edge second" : "edge",
          d: `M${from.x},${from.y} C${from.x},${bend} ${to.x},${bend} ${to.x},${to.y}` }));
      });
      if (!n.parent_ids.length) {
        const from = place(0), to = place(n.id);
        viewport.append(svg("path", { class: "edge", d: `M${from.x},${from.y} L${to.x},${to.y}` }));
      }
    }
    const origin = place(0);
    viewport.append(svg("g", { class: "root", transform: `translate(${origin.x},${origin.y})` },
      [svg("circle", { r: R }), svg("text", { text: "root" })]));
    const metrics = nodes.filter((n) => n.status === "done" && n.metric !== null).map((n) => n.metric);
    const range = { lo: Math.min(...metrics), hi: Math.max(...metrics) };
    const circles = new Map();
    for (const n of nodes) {
      const p = place(n.id);
      const circle = svg("circle", { r: R });
      const g = svg("g", { class: "node" + (n.id === bestId ? " best" : ""), "data-id": n.id,
        transform: `translate(${p.x},${p.y})`, tabindex: 0 }, [
        circle, svg("text", { text: String(n.id) }),
        svg("title", { text: `node ${n.id}: ${n.operator}, ${n.status}, metric ${fmtMetric(n.metric)}` +
          (typeof n.holdout_metric === "number" ? `, holdout ${fmtMetric(n.holdout_metric)}` : "") }),
      ]);
      circles.set(n.id, circle);
      g.addEventListener("click", () => { if (!view.dragged) select(n.id); });
      g.addEventListener("keydown", (e) => { if (e.key === "Enter") select(n.id); });
      viewport.append(g);
    }
    const colourSelect = el("select", { id: "colour-by", "aria-label": "colour nodes by" }, [
      el("option", { value: "status", text: "colour by status" }),
      el("option", { value: "metric", text: "colour by metric" })]);
    const legend = el("div", { class: "legend" });
    function recolour() {
      const byMetric = colourSelect.value === "metric";
      for (const n of nodes) {
        circles.get(n.id).setAttribute("fill", byMetric ? metricColour(n, range)
          : STATUS_COLOURS[n.status] || "#ccc");
      }
      legend.replaceChildren(...(byMetric
        ? [el("span", {}, [el("i", { style: "background:rgb(253,231,37)" }), "worst"]),
          el("span", {}, [el("i", { style: "background:rgb(68,1,84)" }), "best"]),
          el("span", {}, [el("i", { style: "background:#d0d3d9" }), "no metric"])]
        : Object.entries(STATUS_COLOURS).filter(([s]) => nodes.some((n) => n.status === s))
          .map(([s, c]) => el("span", {}, [el("i", { style: `background:${c}` }), s]))),
      el("span", { text: "gold ring: best node; dashed edge: second parent (crossover)" }));
    }
    colourSelect.addEventListener("change", recolour);

    // Zoom and pan: the viewport's transform is (x, y, k); the wheel zooms about the pointer.
    const view = { x: 0, y: 0, k: 1, dragged: false, start: null };
    const apply = () => viewport.setAttribute("transform",
      `translate(${view.x},${view.y}) scale(${view.k})`);
    function zoomAt(factor, px, py) {
      const k = Math.min(8, Math.max(0.05, view.k * factor));
      view.x = px - (px - view.x) * (k / view.k);
      view.y = py - (py - view.y) * (k / view.k);
      view.k = k;
      apply();
    }
    function fit() {
      const xs = [...pos.values()].map((p) => p.x * DX), ys = [...pos.values()].map((p) => p.y * DY);
      const box = canvas.getBoundingClientRect();
      const w = Math.max(...xs) - Math.min(...xs) + 4 * R, h = Math.max(...ys) - Math.min(...ys) + 4 * R;
      view.k = Math.min(1.5, (box.width || 600) / w, (box.height || 500) / h);
      view.x = (box.width || 600) / 2 - ((Math.min(...xs) + Math.max(...xs)) / 2) * view.k;
      view.y = 2 * R * view.k - Math.min(...ys) * view.k;
      apply();
    }
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      const box = canvas.getBoundingClientRect();
      zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - box.left, e.clientY - box.top);
    }, { passive: false });
    canvas.addEventListener("pointerdown", (e) => {
      view.start = { px: e.clientX, py: e.clientY, x: view.x, y: view.y };
      view.dragged = false;
    });
    canvas.addEventListener("pointermove", (e) => {
      if (!view.start) return;
      const dx = e.clientX - view.start.px, dy = e.clientY - view.start.py;
      if (!view.dragged && Math.hypot(dx, dy) < 4) return;
      view.dragged = true;
      canvas.classList.add("panning");
      view.x = view.start.x + dx;
      view.y = view.start.y + dy;
      apply();
    });
    const endPan = () => { view.start = null; canvas.classList.remove("panning"); };
    canvas.addEventListener("pointerup", endPan);
    canvas.addEventListener("pointerleave", endPan);
    const button = (label, title, fn) => {
      const b = el("button", { type: "button", title, text: label });
      b.addEventListener("click", fn);
      return b;
    };
    const centre = () => {
      const box = canvas.getBoundingClientRect();
      return [box.width / 2, box.height / 2];
    };
    const toolbar = el("div", { class: "toolbar" }, [colourSelect,
      button("+", "zoom in", () => zoomAt(1.25, ...centre())),
      button("\u2212", "zoom out", () => zoomAt(0.8, ...centre())),
      button("fit", "show the whole tree", fit),
      el("span", { text: `${nodes.length} nodes; drag to pan, wheel to zoom, click a node` })]);
    recolour();
    return { card: el("section", { class: "card" }, [el("h2", { text: "Search tree" }), toolbar,
      canvas, legend]), fit, circles };
  }

  // ---- node details
  function details(panel, n, select) {
    const parents = n.parent_ids.length ? n.parent_ids.flatMap((p, i) => {
      const b = el("button", { type: "button", class: "link", text: `node ${p}` });
      b.addEventListener("click", () => select(p));
      return i ? [", ", b] : [b];
    }) : ["root (a draft)"];
    const ran = n.started_at && n.finished_at ? fmtSeconds(n.finished_at - n.started_at) : "-";
    const facts = [
      ["operator", n.operator], ["status", n.status], ["metric", fmtMetric(n.metric)],
      ["holdout metric", fmtMetric(n.holdout_metric)], ["gap (metric \u2212 holdout)", fmtGap(n)],
      ["parent", parents], ["visits", String(n.visits)], ["value", fmtMetric(n.value)],
      ["UCT", fmtMetric(n.uct)], ["picked by", n.picked_by || "-"], ["slot", n.slot || "-"],
      ["exit code", n.exit_code === null ? "-" : String(n.exit_code)], ["ran for", ran],
      ["created", fmtDate(n.created_at)],
      ["tokens", `${n.tokens} in ${n.calls} calls, $${n.cost.toFixed(4)}`],
    ];
    if (n.cause) facts.push(["failure", n.cause]);
    const dl = el("dl", {}, facts.flatMap(([k, v]) =>
      [el("dt", { text: k }), el("dd", {}, Array.isArray(v) ? v : [v])]));
    const sections = [["error", "error"], ["summary", "summary"], ["plan", "plan"],
      ["code", "code"], ["output", "output (tail of stdout and stderr)"],
      ["memory", "memory (the memory section the coder saw)"], ["analysis", "analysis"]];
    const body = [el("h2", { text: `Node ${n.id}` }), dl];
    for (const [key, title] of sections) {
      if (!n[key] && key !== "code" && key !== "output") continue;
      body.push(el("h3", { text: title }));
      if (n.cut[key]) {
        body.push(el("div", { class: "cut", text: `cut: ${n.cut[key]} characters in all, ` +
          "this report keeps the head and the tail" }));
      }
      body.push(el("pre", { class: key, text: n[key] || `(no ${key})` }));
    }
    panel.replaceChildren(...body);
    panel.scrollTop = 0;
  }

  // ---- charts
  const W = 440, H = 210, M = { l: 58, r: 12, t: 10, b: 30 };

  function ticks(lo, hi, count) {
    if (!(hi > lo)) return [lo];
    const step = Math.pow(10, Math.floor(Math.log10((hi - lo) / count)));
    const nice = [1, 2, 5, 10].map((m) => m * step).find((s) => (hi - lo) / s <= count);
    const out = [];
    for (let v = Math.ceil(lo / nice) * nice; v <= hi + nice * 1e-9; v += nice) out.push(v);
    return out;
  }

  function frame(xMax, yLo, yHi, xLabel, yFmt) {
    const x = (t) => M.l + (xMax > 0 ? t / xMax : 0) * (W - M.l - M.r);
    const y = (v) => H - M.b - (yHi > yLo ? (v - yLo) / (yHi - yLo) : 0.5) * (H - M.t - M.b);
    const parts = [];
    for (const v of ticks(yLo, yHi, 4)) {
      parts.push(svg("line", { class: "grid", x1: M.l, x2: W - M.r, y1: y(v), y2: y(v) }));
      parts.push(svg("text", { x: M.l - 4, y: y(v) + 3, "text-anchor": "end", text: yFmt(v) }));
    }
    for (const t of ticks(0, xMax, 5)) {
      parts.push(svg("text", { x: x(t), y: H - M.b + 14, "text-anchor": "middle", text: fmtSeconds(t) }));
    }
    parts.push(svg("line", { class: "axis", x1: M.l, x2: M.l, y1: M.t, y2: H - M.b }));
    parts.push(svg("line", { class: "axis", x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b }));
    parts.push(svg("text", { x: W - M.r, y: H - 2, "text-anchor": "end", text: xLabel }));
    return { x, y, parts };
  }

  function chartCard(title, id, content) {
    return el("section", { class: "card chart", id }, [el("h2", { text: title }),
      svg("svg", { viewBox: `0 0 ${W} ${H}` }, content)]);
  }

  function empty(text) {
    return [svg("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle", text })];
  }

  // A step line through points [{t, v, label}], held flat until `until`; a running total
  // (`fromZero`) starts at 0 when the task starts.
  function stepChart(title, id, points, until, yFmt, fromZero) {
    if (!points.length) return chartCard(title, id, empty("nothing yet"));
    if (fromZero) points = [{ t: 0, v: 0, label: "start" }, ...points];
    const vs = points.map((p) => p.v);
    let lo = Math.min(...vs), hi = Math.max(...vs);
    if (lo === hi) { lo -= Math.abs(lo) * 0.05 || 1; hi += Math.abs(hi) * 0.05 || 1; }
    const xMax = Math.max(until, ...points.map((p) => p.t)) || 1;
    const f = frame(xMax, lo, hi, "time since start", yFmt);
    let d = `M${f.x(points[0].t)},${f.y(points[0].v)}`;
    for (const p of points.slice(1)) d += ` H${f.x(p.t)} V${f.y(p.v)}`;
    d += ` H${f.x(xMax)}`;
    const dots = points.slice(fromZero ? 1 : 0).map((p) => svg("circle", { class: "dot", r: 3, cx: f.x(p.t), cy: f.y(p.v) },
      [svg("title", { text: p.label })]));
    return chartCard(title, id, [...f.parts, svg("path", { class: "line", d }), ...dots]);
  }

  function slotChart() {
    const runs = data.series.runs;
    const title = "Slot occupancy over time";
    if (!runs.length) return chartCard(title, "chart-slots", empty("no node has run yet"));
    const slots = [...new Set(runs.map((r) => r.slot))].sort();
    const xMax = Math.max(data.series.now, ...runs.map((r) => r.end)) || 1;
    const x = (t) => M.l + (t / xMax) * (W - M.l - M.r);
    const lane = (H - M.t - M.b) / slots.length;
    const parts = slots.map((s, i) => svg("text", { x: M.l - 4, y: M.t + lane * (i + 0.5) + 3,
      "text-anchor": "end", text: s }));
    for (const r of runs) {
      const i = slots.indexOf(r.slot);
      parts.push(svg("rect", { x: x(r.start), y: M.t + lane * i + 2,
        width: Math.max(1, x(r.end) - x(r.start)), height: Math.max(2, lane - 4),
        fill: STATUS_COLOURS[r.status] || "#ccc" },
      [svg("title", { text: `node ${r.node} on ${r.slot}: ${fmtSeconds(r.end - r.start)}, ${r.status}` })]));
    }
    for (const t of ticks(0, xMax, 5)) {
      parts.push(svg("text", { x: x(t), y: H - M.b + 14, "text-anchor": "middle", text: fmtSeconds(t) }));
    }
    parts.push(svg("line", { class: "axis", x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b }));
    return chartCard(title, "chart-slots", parts);
  }

  function barChart(title, id, counts) {
    const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]);
    if (!entries.length) return chartCard(title, id, empty("none"));
    const max = Math.max(...entries.map((e) => e[1]));
    const row = Math.min(28, (H - M.t - 4) / entries.length);
    const left = 130, span = W - left - 40;
    return chartCard(title, id, entries.flatMap(([label, n], i) => [
      svg("text", { x: left - 6, y: M.t + row * i + row / 2 + 3, "text-anchor": "end", text: label }),
      svg("rect", { class: "bar", x: left, y: M.t + row * i + 2, height: row - 4,
        width: Math.max(1, (n / max) * span) }),
      svg("text", { x: left + (n / max) * span + 4, y: M.t + row * i + row / 2 + 3, text: String(n) }),
    ]));
  }

  function charts() {
    const s = data.series;
    const best = s.best.map((p) => ({ t: p.t, v: p.metric, label: `node ${p.node}: ${fmtMetric(p.metric)}` }));
    const after = (p) => (p.node === null ? "with calls tied to no node" : `after node ${p.node}`);
    const tokens = s.tokens.map((p) => ({ t: p.t, v: p.tokens, label: `${after(p)}: ${p.tokens} tokens` }));
    const cost = s.tokens.map((p) => ({ t: p.t, v: p.cost, label: `${after(p)}: $${p.cost.toFixed(4)}` }));
    return el("div", { class: "charts" }, [
      stepChart(`Best validation ${task.metric} over time`, "chart-best", best, s.now, fmtMetric),
      stepChart("Tokens over time (cumulative)", "chart-tokens", tokens, s.now,
        (v) => String(Math.round(v)), true),
      stepChart("Cost over time (cumulative, $)", "chart-cost", cost, s.now, (v) => v.toFixed(4), true),
      slotChart(),
      barChart("Nodes by operator", "chart-operators", s.operators),
      barChart("Failure causes", "chart-causes", s.causes),
    ]);
  }

  // ---- page
  const panel = el("aside", { class: "card", id: "details" }, [
    el("h2", { text: "Node" }),
    el("p", { text: "Click a node in the tree to see its plan, code, output and memory." })]);
  let selected = null;
  function select(id) {
    const n = byId.get(id);
    if (!n) return;
    if (selected !== null) tree.circles.get(selected).parentNode.classList.remove("selected");
    selected = id;
    tree.circles.get(id).parentNode.classList.add("selected");
    details(panel, n, select);
  }
  const tree = treeCard(select);
  document.body.append(header(), el("main", {}, [tree.card, panel, charts()]));
  tree.fit();
  document.body.dataset.ready = "true";
})();
