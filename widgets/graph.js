// nbflow task graph — the browser side of nbflow.ui.TaskGraph (an anywidget ES module, no build step).
// Python computes the layout and sends it in the `graph` trait, with state changes in `patch`; this
// module only draws, pans/zooms, and sends commands back: {type: "select" | "retry" | "retry_flow"}.

const SVG_NS = "http://www.w3.org/2000/svg";
const NODE_W = 150;
const NODE_H = 36;
const MAX_HEIGHT = 480;
const MIN_SCALE = 0.05;
const MIN_FIT_SCALE = 0.5; // a big graph opens legible at its start; pan and zoom show the rest
const MAX_SCALE = 3;

function svg(tag, attrs = {}, parent = null) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (parent) parent.appendChild(el);
  return el;
}

function html(tag, attrs = {}, parent = null, text = null) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== null) el.textContent = text;
  if (parent) parent.appendChild(el);
  return el;
}

function short(text, n = 20) {
  return text.length <= n ? text : text.slice(0, n - 1) + "…";
}

const UNSUCCESSFUL = ["failed", "timedout", "cancelled", "crashed"];

// The same text as nbflow/ui/svg.py status_text (the static picture); a notebook cell brings its own.
function statusText(node) {
  if (node.status !== undefined) return node.status;
  let text = node.state;
  if (node.total !== undefined) {
    text += ` ${node.count ?? 0}/${node.total}`;
    const counts = node.counts || {};
    const failed = UNSUCCESSFUL.reduce((sum, state) => sum + (counts[state] || 0), 0);
    if (failed) text += ` · ${failed} failed`;
  }
  if (node.attempts > 1) text += ` · ${node.attempts} attempts`;
  return text;
}

// A stale notebook cell's badge, out of the top right corner (as nbflow/ui/svg.py STALE_BADGE draws it).
function staleBadge(g, node) {
  const badge = g.querySelector("g.stale-badge");
  if (node.state !== "stale") {
    if (badge) badge.remove();
    return;
  }
  if (badge) return;
  const b = svg("g", { class: "stale-badge", transform: `translate(${NODE_W - 44},-7)` }, g);
  svg("rect", { width: 38, height: 13, rx: 6 }, b);
  svg("text", { x: 19, y: 10, "text-anchor": "middle" }, b).textContent = "STALE";
}

function progressWidth(node) {
  if (!node.total) return 0;
  return (NODE_W * Math.min(1, (node.count || 0) / node.total)).toFixed(1);
}

function fmtTime(seconds) {
  if (seconds === null || seconds === undefined) return "";
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  return seconds < 1 ? `${(seconds * 1000).toFixed(1)} ms` : `${seconds.toFixed(2)} s`;
}

function render({ model, el }) {
  const root = html("div", { class: "nbflow-root" }, el);
  const header = html("div", { class: "nbflow-header" }, root);
  const runsBox = html("div", { class: "nbflow-runs" }, header);
  const notice = html("span", { class: "nbflow-notice" }, header);
  const body = html("div", { class: "nbflow-body" }, root);
  const canvas = html("div", { class: "nbflow-canvas" }, body);
  const details = html("div", { class: "nbflow-details", hidden: "" }, body);
  const graphSvg = svg("svg", { class: "nbflow-graph" }, canvas);
  const defs = svg("defs", {}, graphSvg);
  const marker = svg("marker", { id: "nbflow-arrow-" + Math.random().toString(36).slice(2), viewBox: "0 0 10 10",
    refX: 10, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto-start-reverse" }, defs);
  svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#6b7280" }, marker);
  const viewport = svg("g", { class: "viewport" }, graphSvg);

  let nodeEls = new Map(); // node id -> <g>
  let nodes = new Map(); // node id -> node data (patched in place)
  let runs = new Map();
  let view = { x: 0, y: 0, k: 1 };
  let fitted = false;
  let rev = -1;

  // The graph arrives as a JSON string (cheaper for the kernel to send than a deep dict).
  const currentGraph = () => JSON.parse(model.get("graph_json") || "{}");

  const applyView = () => viewport.setAttribute("transform", `translate(${view.x},${view.y}) scale(${view.k})`);

  function fit(graph) {
    const width = canvas.clientWidth || 800;
    const k = Math.max(MIN_FIT_SCALE, Math.min(1, width / Math.max(1, graph.width),
      MAX_HEIGHT / Math.max(1, graph.height)));
    graphSvg.setAttribute("height", String(Math.min(MAX_HEIGHT, Math.max(80, graph.height * k))));
    view = { x: 0, y: 0, k };
    applyView();
  }

  function drawNode(node) {
    const g = svg("g", { class: "node", "data-id": node.id, "data-state": node.state,
      "data-retryable": node.retryable ? "true" : "false", transform: `translate(${node.x},${node.y})` });
    svg("title", {}, g).textContent = node.label;
    if (node.group) {
      // A group (the calls of one Task.map, or of a task called very often): a stack of boxes and a bar
      // for the share of its calls done.
      g.setAttribute("data-group", node.group);
      svg("rect", { class: "stack", x: 4, y: -4, width: NODE_W, height: NODE_H, rx: 6 }, g);
    }
    svg("rect", { class: "box", width: NODE_W, height: NODE_H, rx: 6 }, g);
    if (node.group) svg("rect", { class: "progress", x: 0, y: NODE_H - 4, height: 4, rx: 2, width: progressWidth(node) }, g);
    const label = svg("text", { class: "label", x: 8, y: 15 }, g);
    label.textContent = short(node.label, node.retryable ? 14 : 20);
    const status = svg("text", { class: "status", x: 8, y: 29 }, g);
    status.textContent = statusText(node);
    const retry = svg("g", { class: "retry", transform: `translate(${NODE_W - 44},6)` }, g);
    svg("rect", { width: 38, height: 16, rx: 3 }, retry);
    svg("text", { x: 6, y: 12 }, retry).textContent = "Retry";
    retry.addEventListener("click", (event) => {
      event.stopPropagation();
      send({ type: "retry", id: node.id });
    });
    staleBadge(g, node);
    g.addEventListener("click", (event) => {
      event.stopPropagation();
      select(node.id);
    });
    if (model.get("selected") === node.id) g.classList.add("selected");
    return g;
  }

  function updateNode(id) {
    const node = nodes.get(id);
    const g = nodeEls.get(id);
    if (!node || !g) return;
    g.setAttribute("data-state", node.state);
    g.setAttribute("data-retryable", node.retryable ? "true" : "false");
    g.querySelector("text.status").textContent = statusText(node);
    g.querySelector("text.label").textContent = short(node.label, node.retryable ? 14 : 20);
    const bar = g.querySelector("rect.progress");
    if (bar) bar.setAttribute("width", progressWidth(node));
    staleBadge(g, node);
  }

  function drawGraph() {
    const graph = currentGraph();
    if (!graph.nodes) return;
    rev = graph.rev;
    nodes = new Map(graph.nodes.map((n) => [n.id, { ...n }]));
    runs = new Map((graph.runs || []).map((r) => [r.id, { ...r }]));
    const fragment = document.createDocumentFragment();
    const markerUrl = `url(#${marker.id})`;
    for (const edge of graph.edges) {
      if (edge.points.length < 2) continue;
      const d = "M " + edge.points.map(([x, y]) => `${x} ${y}`).join(" L ");
      fragment.appendChild(svg("path", { class: "edge", d, "marker-end": markerUrl,
        "data-source": edge.source, "data-target": edge.target }));
    }
    nodeEls = new Map();
    for (const node of nodes.values()) {
      const g = drawNode(node);
      nodeEls.set(node.id, g);
      fragment.appendChild(g);
    }
    viewport.replaceChildren(fragment);
    graphSvg.setAttribute("data-rev", String(rev));
    graphSvg.setAttribute("data-nodes", String(nodes.size));
    if (!fitted || graph.nodes.length === 0) {
      requestAnimationFrame(() => fit(graph));
      fitted = graph.nodes.length > 0;
    } else {
      graphSvg.setAttribute("height", String(Math.min(MAX_HEIGHT, Math.max(80, graph.height * view.k))));
    }
    applyPatch();
    drawRuns();
  }

  function applyPatch() {
    const patch = model.get("patch") || {};
    if (patch.rev !== rev) return; // a patch for another revision: the next graph carries it
    for (const [id, change] of Object.entries(patch.nodes || {})) {
      const node = nodes.get(id);
      if (!node) continue;
      Object.assign(node, change);
      updateNode(id);
    }
    for (const [id, run] of Object.entries(patch.runs || {})) runs.set(id, run);
    drawRuns();
  }

  function drawRuns() {
    runsBox.replaceChildren();
    for (const run of runs.values()) {
      if (run.kind === "session" && runs.size > 1 && !run.retryable) continue;
      const box = html("span", { class: "nbflow-run", "data-run": run.id, "data-state": run.state }, runsBox);
      html("span", { class: "nbflow-run-name" }, box, run.kind === "session" ? "session" : run.name);
      html("span", { class: "nbflow-badge", "data-state": run.state }, box, run.state);
      if (run.retryable) {
        const button = html("button", { class: "nbflow-retry-flow", title: "Run the flow again in the same run; completed tasks are reused" }, box, "Retry failed");
        button.disabled = !!model.get("busy");
        button.addEventListener("click", () => send({ type: "retry_flow", run: run.id }));
      }
    }
  }

  function send(command) {
    model.send(command);
  }

  function select(id) {
    for (const g of viewport.querySelectorAll("g.node.selected")) g.classList.remove("selected");
    const g = nodeEls.get(id);
    if (g) g.classList.add("selected");
    model.set("selected", id);
    model.save_changes();
    send({ type: "select", id });
  }

  function row(dl, name, value) {
    if (value === null || value === undefined || value === "") return;
    html("dt", {}, dl, name);
    html("dd", {}, dl, String(value));
  }

  function drawDetails() {
    const d = model.get("details") || {};
    const selected = model.get("selected");
    if (!selected || !d.id || d.id !== selected) {
      details.hidden = true;
      return;
    }
    details.hidden = false;
    details.replaceChildren();
    const h = html("h4", {}, details);
    html("span", {}, h, d.label);
    html("span", { class: "nbflow-badge", "data-state": d.state_name }, h, d.state_name);
    if (d.retryable) {
      const failedCalls = (d.failed_members || []).filter((m) => m.retryable).length;
      const label = d.group ? `Retry ${failedCalls || ""} failed`.replace("  ", " ") : "Retry";
      const retry = html("button", { class: "nbflow-retry", title: d.group ? "Rerun the failed calls with their inputs" : "Rerun with the same inputs" }, h, label);
      retry.disabled = !!model.get("busy");
      retry.addEventListener("click", () => send({ type: "retry", id: d.id }));
    }
    const close = html("button", { class: "nbflow-close", title: "Close" }, h, "×");
    close.addEventListener("click", () => {
      model.set("selected", "");
      model.save_changes();
      for (const g of viewport.querySelectorAll("g.node.selected")) g.classList.remove("selected");
      details.hidden = true;
    });
    if (d.stale && d.stale.length) {
      html("div", { class: "nbflow-section" }, details, "stale because");
      const reasons = html("ul", { class: "nbflow-stale-reasons" }, details);
      for (const reason of d.stale) html("li", {}, reasons, reason);
    }
    const dl = html("dl", {}, details);
    if (d.group) {
      row(dl, d.group === "map" ? "mapped" : "calls", `${d.calls} of ${d.total}`);
      for (const [state, count] of Object.entries(d.counts || {})) row(dl, state, count);
    }
    row(dl, "attempts", d.attempts + (!d.group && d.calls > 1 ? ` (${d.calls} runs)` : ""));
    row(dl, "duration", fmtDuration(d.duration));
    row(dl, "cache", d.cache);
    row(dl, "cache key", d.cache_key);
    row(dl, "result", d.result);
    row(dl, "error", d.error);
    const inputs = Object.entries(d.inputs || {});
    if (inputs.length) {
      html("div", { class: "nbflow-section" }, details, "inputs");
      const idl = html("dl", {}, details);
      for (const [k, v] of inputs) row(idl, k, v);
    }
    const failedMembers = d.failed_members || [];
    if (failedMembers.length) {
      html("div", { class: "nbflow-section" }, details, "failed calls");
      const fdl = html("dl", { class: "nbflow-failed-calls" }, details);
      for (const m of failedMembers) {
        const args = Object.entries(m.inputs || {}).map(([k, v]) => `${k}=${v}`).join(", ");
        row(fdl, `#${m.index}`, `${m.error || m.state}${args ? ` (${args})` : ""}`);
      }
    }
    if (!d.group) {
      html("div", { class: "nbflow-section" }, details, "history");
      const hdl = html("dl", { class: "nbflow-history" }, details);
      for (const e of d.history || []) row(hdl, fmtTime(e.time), e.state + (e.message ? ` — ${e.message}` : ""));
    }
    if (d.logs && d.logs.length) {
      html("div", { class: "nbflow-section" }, details, "logs");
      html("pre", { class: "nbflow-logs" }, details, d.logs.join("\n"));
    }
    if (d.traceback) {
      html("div", { class: "nbflow-section" }, details, "traceback");
      html("pre", { class: "nbflow-traceback" }, details, d.traceback);
    }
  }

  // Pan with a drag on the background, zoom with the wheel around the pointer.
  let drag = null;
  canvas.addEventListener("pointerdown", (event) => {
    if (event.target.closest && event.target.closest("g.node")) return;
    drag = { x: event.clientX - view.x, y: event.clientY - view.y };
    canvas.classList.add("nbflow-dragging");
  });
  const stopDrag = () => {
    drag = null;
    canvas.classList.remove("nbflow-dragging");
  };
  canvas.addEventListener("pointermove", (event) => {
    if (!drag) return;
    view.x = event.clientX - drag.x;
    view.y = event.clientY - drag.y;
    applyView();
  });
  canvas.addEventListener("pointerup", stopDrag);
  canvas.addEventListener("pointerleave", stopDrag);
  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    const box = graphSvg.getBoundingClientRect();
    const px = event.clientX - box.left;
    const py = event.clientY - box.top;
    const k = Math.min(MAX_SCALE, Math.max(MIN_SCALE, view.k * Math.exp(-event.deltaY * 0.0015)));
    view.x = px - ((px - view.x) * k) / view.k;
    view.y = py - ((py - view.y) * k) / view.k;
    view.k = k;
    applyView();
  }, { passive: false });
  canvas.addEventListener("dblclick", () => fit(currentGraph()));

  const onGraph = () => drawGraph();
  const onPatch = () => applyPatch();
  const onDetails = () => drawDetails();
  const onNotice = () => {
    notice.textContent = model.get("notice") || "";
  };
  const onBusy = () => {
    for (const b of root.querySelectorAll("button.nbflow-retry, button.nbflow-retry-flow")) b.disabled = !!model.get("busy");
    root.setAttribute("data-busy", model.get("busy") ? "true" : "false");
  };
  model.on("change:graph_json", onGraph);
  model.on("change:patch", onPatch);
  model.on("change:details", onDetails);
  model.on("change:selected", onDetails);
  model.on("change:notice", onNotice);
  model.on("change:busy", onBusy);
  drawGraph();
  drawDetails();
  onNotice();
  onBusy();
  return () => {
    model.off("change:graph_json", onGraph);
    model.off("change:patch", onPatch);
    model.off("change:details", onDetails);
    model.off("change:selected", onDetails);
    model.off("change:notice", onNotice);
    model.off("change:busy", onBusy);
  };
}

export default { render };
