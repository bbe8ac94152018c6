// nbflow task graph — the browser side of nbflow.ui.TaskGraph (an anywidget ES module, no build step).
// Python computes the layout and sends it in the `graph_json` trait, with state changes in `patch`; this
// module only draws (a graph, or a timeline of the same calls), pans/zooms, and sends commands back:
// {type: "select" | "retry" | "retry_flow"}.
//
// Big graphs stay responsive by doing little per interaction: nodes are cloned from a template and share
// one set of listeners on the canvas; pan and zoom move the whole <svg> with a CSS transform (the browser
// then repaints what is on screen, not every node's text), coalesced to one change per frame; node text is
// hidden when zoomed out too far to read; the timeline draws only the rows on screen.

const SVG_NS = "http://www.w3.org/2000/svg";
const NODE_W = 150;
const NODE_H = 36;
const MAX_HEIGHT = 480;
const MIN_HEIGHT = 80;
const MIN_SCALE = 0.02; // small enough that "fit" fits a graph of a few thousand nodes
const MIN_FIT_SCALE = 0.65; // below this a graph opens readable on its first nodes, not fitted (Fit shows all)
const READABLE_SCALE = 0.8; // the scale it then opens at (12 px names read as 10 px)
const FAR_SCALE = 0.35; // below this node text is unreadable: hidden, which also keeps zooming cheap
const MAX_SCALE = 3;
const BATCH = 150; // new nodes drawn per frame
const LARGE = 300; // nodes above which running nodes do not pulse (one animation per node repaints them all)
const ROW_H = 18; // timeline
const LABEL_W = 170;

// Every state: its glyph (so no state rests on colour alone — failed and completed look alike to many
// colour-blind users) and the words used in the legend.
const STATES = {
  pending: { glyph: "◌", words: "pending" },
  running: { glyph: "▶", words: "running" },
  retrying: { glyph: "⟳", words: "retrying" },
  completed: { glyph: "✓", words: "completed" },
  cached: { glyph: "◆", words: "cached" },
  failed: { glyph: "✗", words: "failed" },
  timedout: { glyph: "◷", words: "timed out" },
  cancelled: { glyph: "■", words: "cancelled" },
  crashed: { glyph: "⚠\uFE0E", words: "crashed" },
  upstream: { glyph: "⊘", words: "upstream failed" },
  stale: { glyph: "△", words: "stale" },
  uncached: { glyph: "○", words: "not cached" },
};
const UNSUCCESSFUL = ["failed", "timedout", "cancelled", "crashed"];
const FINAL = ["completed", ...UNSUCCESSFUL]; // states whose duration is a run's (a running call's grows)
const SPAN_STATES = ["running", "completed", "failed", "timedout", "crashed", "cancelled", "cached", "waiting", "upstream"];

function svg(tag, attrs = {}, parent = null) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (parent) parent.appendChild(el);
  return el;
}

// Attributes are set only when they change: the same value written again still invalidates the SVG.
function attr(el, name, value) {
  const text = String(value);
  if (el.getAttribute(name) !== text) el.setAttribute(name, text);
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

const glyphOf = (state) => (STATES[state] || STATES.pending).glyph;
const known = (value) => value !== null && value !== undefined;

// As nbflow.runs.format_duration writes it: "<1 ms", "503 ms", "1.25 s".
function fmtDuration(seconds) {
  if (!known(seconds)) return "—";
  if (seconds < 0.001) return "<1 ms";
  if (seconds < 0.9995) return `${(seconds * 1000).toFixed(0)} ms`;
  return `${seconds.toFixed(2)} s`;
}

function fmtTime(seconds) {
  if (!known(seconds)) return "";
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

// The same text as nbflow/ui/svg.py status_text (the static picture); a notebook cell brings its own.
function statusText(node) {
  if (node.status !== undefined) return node.status;
  let text = node.state === "upstream" ? "upstream failed" : node.state;
  if (node.total !== undefined) {
    text += ` ${node.count ?? 0}/${node.total}`;
    const counts = node.counts || {};
    const failed = UNSUCCESSFUL.reduce((sum, state) => sum + (counts[state] || 0), 0);
    if (failed) text += ` · ${failed} failed`;
  }
  if (node.attempts > 1) text += ` · ${node.attempts} attempts`;
  if (node.state === "cached" && known(node.saved)) text += ` · saved ${fmtDuration(node.saved)}`;
  else if (FINAL.includes(node.state) && known(node.duration)) text += ` · ${fmtDuration(node.duration)}`;
  return text;
}

const retryShown = (node) => !!node.retryable && node.state !== "upstream";

function progressWidth(node) {
  if (!node.total) return 0;
  return (NODE_W * Math.min(1, (node.count || 0) / node.total)).toFixed(1);
}

// One node, cloned for every node drawn: cloning a ready subtree is several times cheaper than building it
// element by element, and listeners live on the canvas, not on each node.
const NODE_TEMPLATE = (() => {
  const g = svg("g", { class: "node", tabindex: "-1", role: "button" });
  svg("title", {}, g);
  svg("rect", { class: "box", width: NODE_W, height: NODE_H, rx: 6 }, g);
  svg("text", { class: "label", x: 8, y: 15 }, g);
  svg("text", { class: "glyph", x: 7, y: 29.5 }, g);
  svg("text", { class: "status", x: 19, y: 29 }, g);
  return g;
})();

function retryButton() {
  const retry = svg("g", { class: "retry", transform: `translate(${NODE_W - 44},6)` });
  svg("rect", { width: 38, height: 16, rx: 3 }, retry);
  svg("text", { x: 6, y: 12 }, retry).textContent = "Retry";
  return retry;
}

function staleBadge() {
  const b = svg("g", { class: "stale-badge", transform: `translate(${NODE_W - 44},-7)` });
  svg("rect", { width: 38, height: 13, rx: 6 }, b);
  svg("text", { x: 19, y: 10, "text-anchor": "middle" }, b).textContent = "STALE";
  return b;
}

// Ticks for a time axis of `span` seconds: 1, 2 or 5 times a power of ten, about `count` of them.
function tickStep(span, count) {
  const raw = Math.max(span, 1e-3) / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
}

function fmtTick(t, step) {
  const decimals = Math.max(0, -Math.floor(Math.log10(step)));
  return `${t.toFixed(decimals)} s`;
}

function luminance(color) {
  const m = color.match(/rgba?\(([\d.]+),\s*([\d.]+),\s*([\d.]+)(?:,\s*([\d.]+))?/);
  if (!m || m[4] === "0") return null;
  const [r, g, b] = [m[1], m[2], m[3]].map((c) => {
    const s = Number(c) / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}

// What a user chose, per graph: the kernel re-displays a graph when its flow ends (a new view of the same
// widget), and the new view opens as the old one was left — same view, same pan and zoom, legend shown or
// not. anywidget gives each view its own model object, so graphs are told apart by their first run.
const remembered = new Map();
const REMEMBERED = 200;

function memoryOf(model) {
  let key = null;
  try {
    key = (JSON.parse(model.get("graph_json") || "{}").runs || [])[0]?.id ?? null;
  } catch {
    key = null;
  }
  if (key === null) return null;
  if (!remembered.has(key)) {
    if (remembered.size >= REMEMBERED) remembered.delete(remembered.keys().next().value);
    remembered.set(key, { mode: "graph", legend: true, autoFit: true, view: null });
  }
  return remembered.get(key);
}

function render({ model, el }) {
  let memory = memoryOf(model) || { mode: "graph", legend: true, autoFit: true, view: null };
  const root = html("div", { class: "nbflow-root", "data-view": "graph" }, el);
  const header = html("div", { class: "nbflow-header" }, root);
  const views = html("div", { class: "nbflow-views", role: "group", "aria-label": "View" }, header);
  const graphButton = html("button", { class: "nbflow-view", "data-view": "graph", "aria-pressed": "true" }, views, "Graph");
  const timelineButton = html("button", { class: "nbflow-view", "data-view": "timeline", "aria-pressed": "false" }, views, "Timeline");
  const runsBox = html("div", { class: "nbflow-runs" }, header);
  const notice = html("span", { class: "nbflow-notice" }, header);
  const fitButton = html("button", { class: "nbflow-fit", title: "Show the whole graph (or double-click the canvas)" }, header, "Fit");
  const legendButton = html("button", { class: "nbflow-legend-toggle", "aria-expanded": "true", title: "Show or hide the legend" }, header, "Legend");
  const legend = html("div", { class: "nbflow-legend", role: "list", "aria-label": "Legend" }, root);
  const body = html("div", { class: "nbflow-body" }, root);
  const canvas = html("div", { class: "nbflow-canvas" }, body);
  // The timeline lies over the graph's canvas: switching views shows or hides it, and the graph beneath
  // keeps its layout, style and paint (display:none would cost a thousand nodes' layout coming back).
  const timeline = html("div", { class: "nbflow-timeline-pane", hidden: "" }, canvas);
  const details = html("div", { class: "nbflow-details", hidden: "" }, body);
  const graphSvg = svg("svg", { class: "nbflow-graph", role: "group", "aria-label": "Task graph" });
  canvas.insertBefore(graphSvg, timeline);
  const defs = svg("defs", {}, graphSvg);
  const uid = Math.random().toString(36).slice(2);
  const marker = svg("marker", { id: "nbflow-arrow-" + uid, viewBox: "0 0 10 10",
    refX: 10, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto-start-reverse" }, defs);
  svg("path", { class: "arrowhead", d: "M 0 0 L 10 5 L 0 10 z" }, marker);
  const viewport = svg("g", { class: "viewport" }, graphSvg);
  const edgesLayer = svg("g", { class: "edges" }, viewport);
  const nodesLayer = svg("g", { class: "nodes" }, viewport);

  let graph = { nodes: [], edges: [], runs: [], width: 0, height: 0 };
  let nodeEls = new Map(); // node id -> its <g> and the parts a patch changes
  let nodes = new Map(); // node id -> node data (patched in place)
  let order = []; // node ids as sent (call order)
  let runs = new Map();
  let view = memory.view ? { ...memory.view } : { x: 0, y: 0, k: 1 };
  let autoFit = memory.autoFit; // until the user pans or zooms, the view follows size changes and new graphs
  let rev = -1;
  let current = null; // the node that takes the keyboard focus (roving tabindex: one tab stop, not 1,000)
  let mode = "graph";
  let drawing = 0; // the generation of the graph being drawn (batches of an older one stop)
  // The canvas size as the ResizeObserver last reported it: reading clientWidth after drawing would make the
  // browser lay out a thousand nodes then and there, and again in the next frame.
  let canvasW = 0;
  let canvasH = 0;

  // -- the graph: view ---------------------------------------------------------------------------------
  let viewQueued = false;
  const applyView = () => {
    memory.view = { ...view };
    memory.autoFit = autoFit;
    const transform = `translate(${view.x}px, ${view.y}px) scale(${view.k})`; // (as the browser writes it back)
    if (graphSvg.style.transform !== transform) graphSvg.style.transform = transform;
    graphSvg.classList.toggle("nbflow-far", view.k < FAR_SCALE);
  };
  const queueView = () => {
    if (viewQueued) return;
    viewQueued = true;
    requestAnimationFrame(() => {
      viewQueued = false;
      applyView();
    });
  };

  function setHeight(h) {
    const height = Math.round(Math.min(MAX_HEIGHT, Math.max(MIN_HEIGHT, h)));
    if (height === canvasH) return;
    canvasH = height;
    if (mode === "graph") canvas.style.height = `${canvasH}px`;
  }

  // Fit the whole graph in the canvas; on opening (`all` false) a graph that would be unreadably small
  // opens at a readable scale on its first nodes instead — the first call and what runs after it.
  function fit(all) {
    const width = canvasW;
    if (!width) return false; // not laid out yet (or hidden): the ResizeObserver calls again
    const gw = Math.max(1, graph.width);
    const gh = Math.max(1, graph.height);
    const whole = Math.min(1, width / gw, MAX_HEIGHT / gh);
    if (all || whole >= MIN_FIT_SCALE || !graph.nodes.length) {
      const k = Math.max(MIN_SCALE, whole);
      setHeight(gh * k);
      view = { x: 0, y: 0, k };
    } else {
      const k = READABLE_SCALE;
      setHeight(MAX_HEIGHT);
      const first = graph.nodes[0];
      // The first node at the left, halfway down (or the graph's top edge at the top if that is nearer).
      const y = Math.min(0, MAX_HEIGHT / 2 - (first.y + NODE_H / 2) * k);
      view = { x: Math.min(0, 12 - first.x * k), y: Math.max(y, MAX_HEIGHT - gh * k), k };
    }
    applyView();
    return true;
  }

  function refit() {
    autoFit = true;
    fit(true);
    if (selectedId()) keepInView(selectedId());
  }

  // Pan the least that brings a node into view (with a margin), e.g. when the details panel narrows the
  // canvas, or the keyboard moves to a node off screen.
  function keepInView(id) {
    const node = nodes.get(id);
    const width = canvasW;
    const height = canvasH;
    if (!node || !width || !height) return;
    const m = 16;
    const left = node.x * view.k + view.x;
    const top = node.y * view.k + view.y;
    const w = NODE_W * view.k;
    const h = NODE_H * view.k;
    let dx = 0;
    let dy = 0;
    if (w + 2 * m > width) dx = (width - w) / 2 - left;
    else if (left < m) dx = m - left;
    else if (left + w > width - m) dx = width - m - (left + w);
    if (h + 2 * m > height) dy = (height - h) / 2 - top;
    else if (top < m) dy = m - top;
    else if (top + h > height - m) dy = height - m - (top + h);
    if (dx || dy) {
      view.x += dx;
      view.y += dy;
      applyView();
    }
  }

  // -- the graph: nodes --------------------------------------------------------------------------------
  function drawNode(node) {
    const g = NODE_TEMPLATE.cloneNode(true);
    g.setAttribute("data-id", node.id);
    g.setAttribute("transform", `translate(${node.x},${node.y})`);
    const [title, , label, glyph, status] = g.childNodes;
    const parts = { g, title, label, glyph, status, bar: null, retry: null, badge: null, x: node.x, y: node.y };
    if (node.group) {
      // A group (the calls of one Task.map, or of a task called very often): a stack of boxes and a bar
      // for the share of its calls done.
      g.setAttribute("data-group", node.group);
      g.insertBefore(svg("rect", { class: "stack", x: 4, y: -4, width: NODE_W, height: NODE_H, rx: 6 }), title.nextSibling);
      parts.bar = svg("rect", { class: "progress", x: 0, y: NODE_H - 4, height: 4, rx: 2 });
      g.insertBefore(parts.bar, label);
    }
    if (node.id === current) g.setAttribute("tabindex", "0");
    if (node.id === selectedId()) g.classList.add("selected");
    nodeEls.set(node.id, parts);
    updateNode(node);
    return g;
  }

  // Only what changed is written: rewriting a text node makes the browser lay its text out again, and a
  // new revision of a thousand-node graph would pay that for every node.
  function put(parts, key, value, write) {
    if (parts[key] === value) return;
    parts[key] = value;
    write(value);
  }

  function updateNode(node) {
    const parts = nodeEls.get(node.id);
    if (!parts) return;
    const { g } = parts;
    const status = statusText(node);
    const retry = retryShown(node);
    put(parts, "_state", node.state, (v) => g.setAttribute("data-state", v));
    put(parts, "_retry", retry, (v) => g.setAttribute("data-retryable", v ? "true" : "false"));
    put(parts, "_tip", `${node.label}: ${status}`, (v) => {
      parts.title.textContent = v;
      g.setAttribute("aria-label", v);
    });
    put(parts, "_label", short(node.label, retry ? 14 : 20), (v) => { parts.label.textContent = v; });
    put(parts, "_glyph", glyphOf(node.state), (v) => { parts.glyph.textContent = v; });
    put(parts, "_status", short(status, 24), (v) => { parts.status.textContent = v; });
    if (parts.bar) put(parts, "_bar", progressWidth(node), (v) => parts.bar.setAttribute("width", v));
    if (retry && !parts.retry) parts.retry = g.appendChild(retryButton());
    else if (!retry && parts.retry) {
      parts.retry.remove();
      parts.retry = null;
    }
    const stale = node.state === "stale";
    if (stale && !parts.badge) parts.badge = g.appendChild(staleBadge());
    else if (!stale && parts.badge) {
      parts.badge.remove();
      parts.badge = null;
    }
  }

  function drawGraph() {
    const parsed = JSON.parse(model.get("graph_json") || "{}");
    if (!parsed.nodes) return;
    graph = parsed;
    rev = graph.rev;
    const slot = memoryOf(model); // (a graph's first revision may come before its run: remember from now on)
    if (slot && slot !== memory) {
      Object.assign(slot, { mode, autoFit, legend: !legend.hidden, view: { ...view } });
      memory = slot;
    }
    nodes = new Map(graph.nodes.map((n) => [n.id, { ...n }]));
    order = graph.nodes.map((n) => n.id);
    runs = new Map((graph.runs || []).map((r) => [r.id, { ...r }]));
    if (!nodes.has(current)) current = selectedId() && nodes.has(selectedId()) ? selectedId() : order[0] || null;
    // Nodes already drawn stay in the page (moved if the layout moved them), so a live graph's new revision
    // costs only its new nodes; nodes no longer in the graph go.
    const before = nodeEls;
    const fresh = [];
    nodeEls = new Map();
    for (const node of nodes.values()) {
      const parts = before.get(node.id);
      if (parts && !parts.bar === !node.group) {
        before.delete(node.id);
        nodeEls.set(node.id, parts);
        if (parts.x !== node.x || parts.y !== node.y) {
          parts.g.setAttribute("transform", `translate(${node.x},${node.y})`);
          parts.x = node.x;
          parts.y = node.y;
        }
        updateNode(node);
      } else fresh.push(node);
    }
    for (const parts of before.values()) parts.g.remove();
    // New nodes in call order, a few hundred per frame, then the edges: the browser lays out each batch in
    // its own frame instead of all of a thousand-node graph in one long task (the first nodes, on screen,
    // come first). A small graph is drawn at once.
    const generation = ++drawing;
    const addBatch = () => {
      if (generation !== drawing) return;
      const fragment = document.createDocumentFragment();
      for (const node of fresh.splice(0, BATCH)) fragment.appendChild(drawNode(nodes.get(node.id)));
      nodesLayer.appendChild(fragment);
      if (fresh.length) requestAnimationFrame(addBatch);
      else if (graph.edges.length > BATCH && !edgesDrawn()) requestAnimationFrame(finish);
      else finish();
    };
    const finish = () => {
      if (generation !== drawing) return;
      drawEdges();
      graphSvg.setAttribute("data-drawn", String(rev));
    };
    graphSvg.removeAttribute("data-drawn");
    addBatch();
    const selected = selectedId();
    for (const [id, parts] of nodeEls) parts.g.classList.toggle("selected", id === selected);
    attr(graphSvg, "width", Math.max(1, graph.width));
    attr(graphSvg, "height", Math.max(1, graph.height));
    attr(graphSvg, "data-rev", rev);
    attr(graphSvg, "data-nodes", nodes.size);
    root.classList.toggle("nbflow-large", nodes.size > LARGE);
    if (autoFit) fit(false);
    else setHeight(Math.max(canvasH, Math.min(MAX_HEIGHT, graph.height * view.k)));
    if (selected && !details.hidden) keepInView(selected); // a live graph grows: its selected node stays
    applyPatch();
  }

  // Edges are redrawn only when they changed (a live graph's patches never change them).
  let edgesKey = "";
  const edgeKey = () => graph.edges.map((e) => `${e.source}>${e.target}:${e.points.join(" ")}`).join("|");
  const edgesDrawn = () => edgeKey() === edgesKey;
  function drawEdges() {
    const key = edgeKey();
    if (key === edgesKey) return;
    edgesKey = key;
    const fragment = document.createDocumentFragment();
    const markerUrl = `url(#${marker.id})`;
    for (const edge of graph.edges) {
      if (edge.points.length < 2) continue;
      const d = "M " + edge.points.map(([x, y]) => `${x} ${y}`).join(" L ");
      fragment.appendChild(svg("path", { class: "edge", d, "marker-end": markerUrl,
        "data-source": edge.source, "data-target": edge.target }));
    }
    edgesLayer.replaceChildren(fragment);
  }

  function applyPatch() {
    const patch = model.get("patch") || {};
    if (patch.rev === rev) {
      // (a patch for another revision: the next graph carries it)
      for (const [id, change] of Object.entries(patch.nodes || {})) {
        const node = nodes.get(id);
        if (!node) continue;
        Object.assign(node, change);
        updateNode(node);
      }
      for (const [id, run] of Object.entries(patch.runs || {})) runs.set(id, run);
    }
    drawRuns();
    drawLegend();
    if (mode === "timeline") queueTimeline(true);
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

  // The states on screen, each with its colour, pattern and glyph.
  let legendKey = "";
  function drawLegend() {
    const present = new Set();
    for (const node of nodes.values()) present.add(node.state);
    const shown = Object.keys(STATES).filter((state) => present.has(state));
    if (mode === "timeline" && [...nodes.values()].some((n) => (n.spans || []).some((span) => span[2] === "waiting"))) {
      shown.push("waiting");
    }
    const key = shown.join(",");
    if (key === legendKey) return;
    legendKey = key;
    legend.replaceChildren();
    for (const state of shown) {
      const item = html("span", { class: "nbflow-legend-item", role: "listitem", "data-state": state }, legend);
      const swatch = svg("svg", { class: "nbflow-swatch", width: 26, height: 14, "aria-hidden": "true" }, item);
      const g = svg("g", { "data-state": state }, swatch);
      if (state === "waiting") svg("rect", { class: "span wait", x: 1, y: 3, width: 24, height: 8 }, g).style.fill = `url(#${hatch.id})`;
      else {
        svg("rect", { class: "box", x: 1, y: 1, width: 24, height: 12, rx: 3 }, g);
        svg("text", { class: "glyph", x: 13, y: 10.5, "text-anchor": "middle" }, g).textContent = glyphOf(state);
      }
      html("span", {}, item, state === "waiting" ? "waiting to retry" : STATES[state].words);
    }
  }

  function send(command) {
    model.send(command);
  }

  const selectedId = () => model.get("selected") || "";

  function select(id) {
    for (const g of root.querySelectorAll(".selected[data-id]")) g.classList.remove("selected");
    const parts = nodeEls.get(id);
    if (parts) parts.g.classList.add("selected");
    setCurrent(id);
    model.set("selected", id);
    model.save_changes();
    send({ type: "select", id });
    if (mode === "timeline") queueTimeline(false);
    // The details panel narrows the canvas: the ResizeObserver keeps the node in view once it has.
    requestAnimationFrame(() => keepInView(id));
  }

  function closeDetails() {
    model.set("selected", "");
    model.save_changes();
    for (const g of root.querySelectorAll(".selected[data-id]")) g.classList.remove("selected");
    details.hidden = true;
  }

  function setCurrent(id) {
    if (current === id) return;
    const before = nodeEls.get(current);
    if (before) before.g.setAttribute("tabindex", "-1");
    current = id;
    const now = nodeEls.get(id);
    if (now) now.g.setAttribute("tabindex", "0");
  }

  // The nearest node in the direction of an arrow key (left/right: neighbouring layers, up/down: the
  // same layer first).
  function neighbour(id, key) {
    const from = nodes.get(id);
    if (!from) return null;
    const [dx, dy] = { ArrowRight: [1, 0], ArrowLeft: [-1, 0], ArrowDown: [0, 1], ArrowUp: [0, -1] }[key];
    let best = null;
    let bestScore = Infinity;
    for (const node of nodes.values()) {
      const ox = node.x - from.x;
      const oy = node.y - from.y;
      const along = ox * dx + oy * dy;
      if (along <= 0) continue;
      const across = Math.abs(ox * dy) + Math.abs(oy * dx);
      const score = along + 3 * across;
      if (score < bestScore) {
        bestScore = score;
        best = node.id;
      }
    }
    return best;
  }

  // -- details -----------------------------------------------------------------------------------------
  function row(dl, name, value) {
    if (value === null || value === undefined || value === "") return;
    html("dt", {}, dl, name);
    html("dd", {}, dl, String(value));
  }

  function drawDetails() {
    const d = model.get("details") || {};
    const selected = selectedId();
    if (!selected || !d.id || d.id !== selected) {
      details.hidden = true;
      return;
    }
    const node = nodes.get(d.id) || {};
    const state = d.state || node.state;
    details.hidden = false;
    details.replaceChildren();
    // The heading stays at the top of the panel (sticky): the name on a line of its own, wrapping, with
    // close beside it and the state and Retry below — a long name never pushes a button out of view.
    const head = html("div", { class: "nbflow-details-head" }, details);
    const h = html("h4", {}, head);
    html("span", { class: "nbflow-glyph", "aria-hidden": "true", "data-state": state }, h, glyphOf(state));
    html("span", { class: "nbflow-details-name", title: d.label }, h, d.label);
    const close = html("button", { class: "nbflow-close", title: "Close", "aria-label": "Close details" }, h, "×");
    close.addEventListener("click", closeDetails);
    const actions = html("div", { class: "nbflow-actions" }, head);
    html("span", { class: "nbflow-badge", "data-state": d.state_name }, actions,
      state === "upstream" ? "Upstream failed" : d.state_name);
    if (d.retryable && state !== "upstream") {
      const failedCalls = (d.failed_members || []).filter((m) => m.retryable).length;
      const label = d.group ? `Retry ${failedCalls || ""} failed`.replace("  ", " ") : "Retry";
      const retry = html("button", { class: "nbflow-retry", title: d.group ? "Rerun the failed calls with their inputs" : "Rerun with the same inputs" }, actions, label);
      retry.disabled = !!model.get("busy");
      retry.addEventListener("click", () => send({ type: "retry", id: d.id }));
    }
    if (state === "upstream") {
      html("div", { class: "nbflow-upstream-note" }, details,
        "Not run: a task it depends on failed. Retry that task, and this one runs after it.");
    }
    if (d.stale && d.stale.length) {
      html("div", { class: "nbflow-section" }, details, "stale because");
      const reasons = html("ul", { class: "nbflow-stale-reasons" }, details);
      for (const reason of d.stale) html("li", {}, reasons, reason);
    }
    const dl = html("dl", {}, details);
    if (d.group) {
      row(dl, d.group === "map" ? "mapped" : "calls", `${d.calls} of ${d.total}`);
      for (const [name, count] of Object.entries(d.counts || {})) row(dl, name, count);
    }
    const saved = known(d.saved) ? d.saved : node.saved;
    if (state === "cached" && !d.group) {
      // A cached call did not run: its attempts (0) and duration (0 ms) say nothing; the time saved does.
      row(dl, "saved", known(saved) ? `${fmtDuration(saved)} (its computed run)` : "the time of its computed run");
    } else {
      if (d.attempts || d.group) row(dl, "attempts", d.attempts + (!d.group && d.calls > 1 ? ` (${d.calls} runs)` : ""));
      if (state !== "upstream") row(dl, "duration", fmtDuration(known(d.duration) ? d.duration : node.duration));
    }
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

  // -- the timeline ------------------------------------------------------------------------------------
  // One row per node, ordered by start; bars from each call's spans (attempts coloured by how they ended,
  // waits before a retry hatched, a cache hit as a diamond); only the rows on screen are drawn.
  const tlAxis = svg("svg", { class: "nbflow-tl-axis", height: 22 }, timeline);
  const tlScroll = html("div", { class: "nbflow-tl-scroll", tabindex: "0", "aria-label": "Timeline: arrow keys move the selection" }, timeline);
  const tlSpacer = html("div", { class: "nbflow-tl-spacer" }, tlScroll);
  const tlSvg = svg("svg", { class: "nbflow-timeline" }, tlSpacer);
  const tlDefs = svg("defs", {}, tlSvg);
  const hatch = svg("pattern", { id: "nbflow-hatch-" + uid, width: 6, height: 6, patternUnits: "userSpaceOnUse",
    patternTransform: "rotate(45)" }, tlDefs);
  svg("rect", { class: "hatch-bg", width: 6, height: 6 }, hatch);
  svg("line", { class: "hatch-line", x1: 0, y1: 0, x2: 0, y2: 6 }, hatch);
  const tlRows = svg("g", { class: "rows" }, tlSvg);
  let tlOrder = []; // node ids, by start
  let tlQueued = false;
  let tlResort = true; // the order by start is stale (a new graph or patch)
  let tlTimer = null;
  let tlScrollH = MAX_HEIGHT;

  // Kernel and browser clocks may differ: "now" is never before the latest time the kernel reported.
  let latest = 0;
  const now = () => Math.max(Date.now() / 1000, latest);

  function spansOf(node) {
    if (Array.isArray(node.spans) && node.spans.length) return node.spans;
    if (!known(node.start)) return [];
    const open = ["running", "retrying", "pending"].includes(node.state);
    const end = known(node.end) ? node.end : open ? null : node.start;
    return [[node.start, end, node.state === "cached" ? "cached" : open ? "running" : node.state]];
  }

  function timelineExtent() {
    let t0 = Infinity;
    let t1 = -Infinity;
    let live = false;
    for (const run of runs.values()) {
      if (known(run.start)) t0 = Math.min(t0, run.start);
      if (known(run.end)) t1 = Math.max(t1, run.end);
      if (run.state === "Running" || (known(run.start) && !known(run.end) && run.kind !== "session")) live = true;
    }
    for (const node of nodes.values()) {
      for (const [s, e] of spansOf(node)) {
        t0 = Math.min(t0, s);
        t1 = Math.max(t1, known(e) ? e : s);
        latest = Math.max(latest, s, known(e) ? e : s);
        if (!known(e)) live = true;
      }
    }
    if (!Number.isFinite(t0)) return null;
    if (live) t1 = Math.max(t1, now());
    return { t0, t1: Math.max(t1, t0 + 1e-3), live };
  }

  function sortTimeline() {
    const position = new Map(order.map((id, i) => [id, i]));
    const start = (id) => {
      const node = nodes.get(id);
      const spans = spansOf(node);
      return spans.length ? spans[0][0] : Infinity;
    };
    tlOrder = [...order].sort((a, b) => start(a) - start(b) || position.get(a) - position.get(b));
  }

  function queueTimeline(resort) {
    if (resort) tlResort = true;
    if (tlQueued) return;
    tlQueued = true;
    requestAnimationFrame(() => {
      tlQueued = false;
      drawTimeline();
    });
  }

  function drawTimeline() {
    if (mode !== "timeline") return;
    if (tlResort) {
      sortTimeline();
      tlResort = false;
    }
    const width = Math.max(200, canvasW || 600);
    const plotW = Math.max(50, width - LABEL_W - 16);
    const extent = timelineExtent();
    // (scrollTop read first, before this frame writes anything that would make reading it lay out again)
    const scrollTop = tlScroll.scrollTop;
    tlSpacer.style.height = `${tlOrder.length * ROW_H}px`;
    tlScrollH = Math.min(MAX_HEIGHT - 22, Math.max(ROW_H * 2, tlOrder.length * ROW_H)) + 2;
    tlScroll.style.height = `${tlScrollH}px`;
    canvas.style.height = `${tlScrollH + 23}px`;
    tlAxis.setAttribute("width", String(width));
    tlSvg.setAttribute("width", String(width));
    tlAxis.replaceChildren();
    const axis = svg("g", {}, tlAxis);
    if (!extent) {
      svg("text", { class: "tl-empty", x: LABEL_W, y: 15 }, axis).textContent = "no timings yet";
    }
    const { t0, t1, live } = extent || { t0: 0, t1: 1, live: false };
    const scale = plotW / (t1 - t0);
    const xOf = (t) => LABEL_W + (t - t0) * scale;
    if (extent) {
      const step = tickStep(t1 - t0, Math.max(2, Math.floor(plotW / 80)));
      for (let t = 0; t <= t1 - t0 + 1e-9; t += step) {
        const x = xOf(t0 + t);
        svg("line", { class: "tick", x1: x, x2: x, y1: 16, y2: 22 }, axis);
        svg("text", { class: "tick-label", x: x + 2, y: 12 }, axis).textContent = fmtTick(t, step);
      }
      if (live) {
        const x = xOf(now());
        svg("line", { class: "now", x1: x, x2: x, y1: 0, y2: 22 }, axis);
      }
    }
    // Only the rows on screen, and a few around them.
    const first = Math.max(0, Math.floor(scrollTop / ROW_H) - 5);
    const count = Math.ceil(tlScrollH / ROW_H) + 10;
    const last = Math.min(tlOrder.length, first + count);
    tlSvg.style.top = `${first * ROW_H}px`;
    tlSvg.setAttribute("height", String(Math.max(1, (last - first) * ROW_H)));
    const selected = selectedId();
    const fragment = document.createDocumentFragment();
    for (let i = first; i < last; i++) {
      const node = nodes.get(tlOrder[i]);
      const status = statusText(node);
      const g = svg("g", { class: "row", "data-id": node.id, "data-state": node.state,
        transform: `translate(0,${(i - first) * ROW_H})` });
      if (node.id === selected) g.classList.add("selected");
      svg("title", {}, g).textContent = `${node.label}: ${status}`;
      svg("rect", { class: "row-bg", width, height: ROW_H }, g);
      svg("text", { class: "glyph", x: 4, y: 13 }, g).textContent = glyphOf(node.state);
      svg("text", { class: "row-label", x: 17, y: 13 }, g).textContent = short(node.label, 24);
      for (const [s, e, state] of spansOf(node)) {
        const x = xOf(s);
        if (state === "cached") {
          svg("path", { class: "cached-marker", d: `M ${x} 3 L ${x + 6} 9 L ${x} 15 L ${x - 6} 9 Z`, "data-state": "cached" }, g);
          continue;
        }
        const end = known(e) ? e : now();
        const w = Math.max(end === s ? 6 : 2, (end - s) * scale); // a call that never ran: a small mark
        const bar = svg("rect", { class: state === "waiting" ? "span wait" : "span", x, y: 3, width: w,
          height: ROW_H - 6, "data-state": SPAN_STATES.includes(state) ? state : node.state }, g);
        if (state === "waiting") bar.style.fill = `url(#${hatch.id})`;
      }
      fragment.appendChild(g);
    }
    if (live && extent) {
      const x = xOf(now());
      fragment.appendChild(svg("line", { class: "now", x1: x, x2: x, y1: 0, y2: (last - first) * ROW_H }));
    }
    tlRows.replaceChildren(fragment);
    timeline.setAttribute("data-live", live ? "true" : "false");
    // While the run goes on, open bars grow and "now" moves without any patch arriving.
    if (live && !tlTimer) tlTimer = setInterval(() => queueTimeline(false), 500);
    else if (!live && tlTimer) {
      clearInterval(tlTimer);
      tlTimer = null;
    }
  }

  function setMode(next) {
    mode = next;
    memory.mode = next;
    root.setAttribute("data-view", next);
    graphButton.setAttribute("aria-pressed", String(next === "graph"));
    timelineButton.setAttribute("aria-pressed", String(next === "timeline"));
    graphSvg.setAttribute("aria-hidden", String(next !== "graph"));
    const stop = nodeEls.get(current);
    if (stop) stop.g.setAttribute("tabindex", next === "graph" ? "0" : "-1"); // no tab stop out of sight
    timeline.hidden = next !== "timeline";
    fitButton.hidden = next !== "graph";
    legendKey = "";
    drawLegend();
    if (next === "timeline") {
      queueTimeline(true);
    } else {
      if (tlTimer) clearInterval(tlTimer);
      tlTimer = null;
      canvas.style.height = `${canvasH}px`;
      if (autoFit) fit(false);
    }
  }

  // -- events ------------------------------------------------------------------------------------------
  graphButton.addEventListener("click", () => setMode("graph"));
  timelineButton.addEventListener("click", () => setMode("timeline"));
  fitButton.addEventListener("click", refit);
  legendButton.addEventListener("click", () => {
    const open = legend.hidden;
    legend.hidden = !open;
    memory.legend = open;
    legendButton.setAttribute("aria-expanded", String(open));
  });

  // One set of listeners for every node: clicks, keys, focus.
  canvas.addEventListener("click", (event) => {
    const retry = event.target.closest && event.target.closest("g.retry");
    const g = event.target.closest && event.target.closest("g.node");
    if (!g) return;
    event.stopPropagation();
    const id = g.getAttribute("data-id");
    if (retry) send({ type: "retry", id });
    else select(id);
  });
  canvas.addEventListener("keydown", (event) => {
    const g = event.target.closest && event.target.closest("g.node");
    if (!g) return;
    const id = g.getAttribute("data-id");
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      select(id);
    } else if (event.key === "Escape") {
      closeDetails();
    } else if (event.key.startsWith("Arrow")) {
      event.preventDefault();
      const next = neighbour(id, event.key);
      if (next) {
        setCurrent(next);
        nodeEls.get(next).g.focus({ preventScroll: true });
      }
    }
  });
  const focusRing = svg("rect", { class: "focus", x: -4, y: -4, width: NODE_W + 8, height: NODE_H + 8, rx: 9 });
  canvas.addEventListener("focusout", () => focusRing.remove());
  canvas.addEventListener("focusin", (event) => {
    const g = event.target.closest && event.target.closest("g.node");
    if (!g) return;
    if (g.matches(":focus-visible")) g.insertBefore(focusRing, g.firstChild.nextSibling);
    setCurrent(g.getAttribute("data-id"));
    keepInView(g.getAttribute("data-id"));
  });

  // Pan with a drag on the background, zoom with the wheel around the pointer: one view change per frame.
  let drag = null;
  const inTimeline = () => mode === "timeline";
  canvas.addEventListener("pointerdown", (event) => {
    if (inTimeline(event) || (event.target.closest && event.target.closest("g.node"))) return;
    drag = { x: event.clientX - view.x, y: event.clientY - view.y };
    canvas.classList.add("nbflow-dragging");
  });
  const stopDrag = () => {
    drag = null;
    canvas.classList.remove("nbflow-dragging");
  };
  canvas.addEventListener("pointermove", (event) => {
    if (!drag) return;
    autoFit = false;
    view.x = event.clientX - drag.x;
    view.y = event.clientY - drag.y;
    queueView();
  });
  canvas.addEventListener("pointerup", stopDrag);
  canvas.addEventListener("pointerleave", stopDrag);
  let zoom = null;
  canvas.addEventListener("wheel", (event) => {
    if (inTimeline(event)) return; // the timeline scrolls
    event.preventDefault();
    autoFit = false;
    const unit = event.deltaMode === 1 ? 16 : event.deltaMode === 2 ? 400 : 1;
    if (!zoom) {
      zoom = { dy: 0, x: 0, y: 0 };
      requestAnimationFrame(() => {
        const box = canvas.getBoundingClientRect();
        const px = zoom.x - box.left;
        const py = zoom.y - box.top;
        const k = Math.min(MAX_SCALE, Math.max(MIN_SCALE, view.k * Math.exp(-zoom.dy * 0.0015)));
        view.x = px - ((px - view.x) * k) / view.k;
        view.y = py - ((py - view.y) * k) / view.k;
        view.k = k;
        zoom = null;
        applyView();
      });
    }
    zoom.dy += event.deltaY * unit;
    zoom.x = event.clientX;
    zoom.y = event.clientY;
  }, { passive: false });
  canvas.addEventListener("dblclick", (event) => {
    if (inTimeline(event) || (event.target.closest && event.target.closest("g.node"))) return;
    refit();
  });

  timeline.addEventListener("click", (event) => {
    const g = event.target.closest && event.target.closest("g.row");
    if (g) select(g.getAttribute("data-id"));
  });
  tlScroll.addEventListener("scroll", () => queueTimeline(false), { passive: true });
  tlScroll.addEventListener("keydown", (event) => {
    if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
    event.preventDefault();
    const at = tlOrder.indexOf(selectedId());
    const next = Math.min(tlOrder.length - 1, Math.max(0, at < 0 ? 0 : at + (event.key === "ArrowDown" ? 1 : -1)));
    if (!tlOrder.length) return;
    const top = next * ROW_H;
    if (top < tlScroll.scrollTop) tlScroll.scrollTop = top;
    else if (top + ROW_H > tlScroll.scrollTop + tlScroll.clientHeight) tlScroll.scrollTop = top + ROW_H - tlScroll.clientHeight;
    select(tlOrder[next]);
  });

  // The canvas has no width until the output is on the page, and narrows when the details panel opens:
  // fit again then (unless the user moved the view), and keep the selected node on screen.
  const resized = new ResizeObserver((entries) => {
    const entry = entries.find((e) => e.target === canvas);
    if (!entry) return;
    const width = Math.round(entry.contentRect.width);
    if (!canvasH) canvasH = Math.round(entry.contentRect.height);
    if (!width || width === canvasW) return;
    if (!canvasW) detectDark();
    canvasW = width;
    if (mode === "timeline") queueTimeline(false);
    if (autoFit) fit(false);
    if (selectedId()) keepInView(selectedId());
  });
  resized.observe(canvas);

  // Dark themes: JupyterLab and Notebook 7 mark <body>, VS Code too (CSS handles those); any other
  // front-end with a dark background is found by the background the theme variables resolve to.
  function detectDark() {
    const lum = luminance(getComputedStyle(root).backgroundColor);
    root.classList.toggle("nbflow-dark", lum !== null && lum < 0.2);
  }
  // Re-checked when a front-end switches themes the usual ways (a class, a data attribute or style on <html>
  // or <body>), and once the widget is on the page (when rendered it may not be: no theme variables yet).
  const themeWatch = new MutationObserver(detectDark);
  const themeAttributes = ["class", "style", "data-theme", "data-jp-theme-light", "data-jp-theme-name"];
  for (const target of [document.documentElement, document.body]) {
    themeWatch.observe(target, { attributes: true, attributeFilter: themeAttributes });
  }

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
  legend.hidden = !memory.legend;
  legendButton.setAttribute("aria-expanded", String(memory.legend));
  if (memory.mode !== "graph") setMode(memory.mode);
  if (!autoFit) applyView();
  detectDark();
  return () => {
    model.off("change:graph_json", onGraph);
    model.off("change:patch", onPatch);
    model.off("change:details", onDetails);
    model.off("change:selected", onDetails);
    model.off("change:notice", onNotice);
    model.off("change:busy", onBusy);
    resized.disconnect();
    themeWatch.disconnect();
    if (tlTimer) clearInterval(tlTimer);
  };
}

export default { render };
