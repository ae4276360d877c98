// The neuron explorer (unlearn_lens.report.explorer): every unit of a run in one table, sorted and filtered on
// typed arrays and index permutations, of which only the rows in view are drawn; a click on a row opens the
// unit's statistics and top contexts. Each explorer (div.ulx[data-ulx]) holds two JSON blocks made in Python:
// its data (explorer_data) and its display rules (the unit texts as templates, the colour of each activation
// level). Every token and label goes into the page as text, never as HTML.
(function () {
  "use strict";

  const ROW = 22; // the height of a row in px, as .ulx-row in explorer.css
  const OVER = 10; // rows drawn beyond the view on either side
  const KINDS = ["mlp", "attn"];
  const STATS = [
    // [row label, key of a dataset's column, whether the ratio column divides forget by retain]
    ["mean |x|", "abs_mean", true],
    ["mean", "mean", false],
    ["P(x > 0)", "freq", true],
  ];
  const COMPARE = {
    ">": (a, b) => a > b,
    "<": (a, b) => a < b,
    ">=": (a, b) => a >= b,
    "<=": (a, b) => a <= b,
    "=": (a, b) => a === b,
  };

  // A JSON number, with null (NaN or an infinity in Python) as NaN.
  function num(v) {
    return v === null || v === undefined ? NaN : v;
  }

  // A column of n numbers from a JSON list (all NaN without one).
  function col(list, n) {
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      out[i] = list ? num(list[i]) : NaN;
    }
    return out;
  }

  // A number for the table: four significant digits, exponent notation when very large or small.
  function fmt(v) {
    if (Number.isNaN(v)) {
      return "–";
    }
    if (!Number.isFinite(v)) {
      return v > 0 ? "∞" : "−∞";
    }
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) {
      return v.toExponential(2);
    }
    return String(Number(v.toPrecision(4)));
  }

  // An element with a class and a text; the text goes in as text, never as HTML.
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) {
      e.className = cls;
    }
    if (text !== undefined) {
      e.textContent = text;
    }
    return e;
  }

  // A template of the display rules, such as "L{layer}.N{unit}", filled in.
  function fill(template, fields) {
    return template.replace(/\{(\w+)\}/g, (match, key) => String(fields[key]));
  }

  function stepText(step) {
    if (step > 0) {
      return String(step);
    }
    return step < 0 ? "?" : "–";
  }

  function prunedText(step) {
    if (step > 0) {
      return "pruned at step " + step;
    }
    return step < 0 ? "pruned (the run does not record the step)" : "not pruned";
  }

  function Explorer(root) {
    const $ = (selector) => root.querySelector(selector);
    const data = JSON.parse($(".ulx-data").textContent);
    const display = JSON.parse($(".ulx-display").textContent);
    const q = $(".ulx-q");
    const count = $(".ulx-count");
    const head = $(".ulx-head");
    const scroll = $(".ulx-scroll");
    const spacer = $(".ulx-spacer");
    const rows = $(".ulx-rows");
    const detail = $(".ulx-detail");
    const dashBlock = $(".ulx-dash");
    const dash = dashBlock && window.ulDashboard ? window.ulDashboard.create(JSON.parse(dashBlock.textContent), display)
      : null;

    // Every unit in the order of unit_order: the MLP neurons of each layer, then its attention neurons.
    const dims = data.dims;
    const DH = dims.d_head;
    const perLayer = [dims.d_mlp, dims.n_heads * DH];
    const nMlp = dims.n_layers * dims.d_mlp;
    const n = nMlp + dims.n_layers * perLayer[1];
    const kind = new Float64Array(n); // 0: MLP, 1: attention
    const layer = new Float64Array(n);
    const unit = new Float64Array(n); // flat index within the layer, head * d_head + d for attention
    for (let i = 0; i < n; i++) {
      kind[i] = i < nMlp ? 0 : 1;
      const j = i < nMlp ? i : i - nMlp;
      layer[i] = Math.floor(j / perLayer[kind[i]]);
      unit[i] = j % perLayer[kind[i]];
    }

    // The step that pruned each unit (0 never, -1 unrecorded), and as a sort key: unrecorded last, never NaN.
    const step = col(data.step, n);
    const stepKey = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      if (step[i] > 0) {
        stepKey[i] = step[i];
      } else {
        stepKey[i] = step[i] < 0 ? 1e9 : NaN;
      }
    }

    const sets = data.sets;
    const F = sets[0];
    const R = sets[1] || null;
    const retainName = R ? R.name : "retain";
    const forgetAbs = col(F.abs_mean, n);
    const retainAbs = col(R && R.abs_mean, n);
    const ratio = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      ratio[i] = forgetAbs[i] / retainAbs[i];
    }

    function unitText(i, what) {
      const u = unit[i];
      const fields = {layer: layer[i], unit: u, head: Math.floor(u / DH), d: u % DH};
      return fill(display.units[KINDS[kind[i]]][what], fields);
    }

    // The columns: v holds the values to sort and filter on, t the text of a cell (default: fmt of v).
    const cols = [
      {key: "layer", label: "layer", v: layer},
      {key: "unit", label: "unit", v: unit, t: (i) => unitText(i, "index")},
      {key: "kind", label: "kind", v: kind, t: (i) => unitText(i, "kind")},
      {key: "score", label: "score", v: col(data.score, n), d: -1},
      {key: "f_abs", label: F.name + " mean|x|", v: forgetAbs, d: -1},
      {key: "r_abs", label: retainName + " mean|x|", v: retainAbs, d: -1},
      {key: "ratio", label: "ratio", v: ratio, d: -1, title: F.name + " mean|x| / " + retainName + " mean|x|"},
      {key: "f_freq", label: F.name + " P(x>0)", v: col(F.freq, n), d: -1},
      {key: "r_freq", label: retainName + " P(x>0)", v: col(R && R.freq, n), d: -1},
      {key: "f_mean", label: F.name + " mean", v: col(F.mean, n), d: -1},
      {key: "r_mean", label: retainName + " mean", v: col(R && R.mean, n), d: -1},
      {key: "step", label: "pruned", v: stepKey, title: "the step that pruned the unit", t: (i) => stepText(step[i])},
    ];
    const byKey = {};
    const all = new Uint32Array(n);
    for (let i = 0; i < n; i++) {
      all[i] = i;
    }
    let order; // every unit, sorted
    let view; // the units that match the search, sorted
    let sortKey;
    let sortDir;
    let selected = -1;
    const pool = []; // the row elements, reused as the view scrolls
    let pending = false;
    let timer;

    cols.forEach((c) => {
      const button = el("button", null, c.label);
      button.type = "button";
      button.title = c.title || "sort by " + c.label;
      byKey[c.key] = c;
      c.button = button;
      button.addEventListener("click", () => sortBy(c.key, sortKey === c.key ? -sortDir : c.d || 1));
      head.appendChild(button);
    });

    // An index permutation sorted on one column (dir 1 ascending, -1 descending): NaN last, ties in unit order.
    function sortBy(key, dir) {
      const v = byKey[key].v;
      sortKey = key;
      sortDir = dir;
      order = all.slice();
      order.sort((a, b) => {
        const x = v[a];
        const y = v[b];
        if (Number.isNaN(x) || Number.isNaN(y)) {
          if (Number.isNaN(x) && Number.isNaN(y)) {
            return a - b;
          }
          return Number.isNaN(x) ? 1 : -1;
        }
        if (x === y) {
          return a - b;
        }
        return x < y ? -dir : dir;
      });
      cols.forEach((c) => {
        const state = dir > 0 ? "ascending" : "descending";
        c.button.setAttribute("aria-sort", c.key === key ? state : "none");
      });
      filter();
    }

    // The tests of one search word, or null for a word not understood.
    function wordTests(w) {
      let m;
      if (w === "mlp" || w === "attn" || w === "attention") {
        const k = w === "mlp" ? 0 : 1;
        return [(i) => kind[i] === k];
      }
      if (w === "pruned") {
        return [(i) => step[i] !== 0];
      }
      if (w === "kept" || w === "unpruned") {
        return [(i) => step[i] === 0];
      }
      if ((m = /^l(\d+)(?:\.(?:n(\d+)|h(\d+)(?:\.d(\d+))?))?$/.exec(w))) {
        const l = +m[1];
        const tests = [(i) => layer[i] === l];
        if (m[2] !== undefined) {
          tests.push(...wordTests("mlp"), ...wordTests(m[2]));
        }
        if (m[3] !== undefined) {
          tests.push(...wordTests("h" + m[3]));
        }
        if (m[4] !== undefined) {
          tests.push(...wordTests("d" + m[4]));
        }
        return tests;
      }
      if ((m = /^n?(\d+)$/.exec(w))) {
        const u = +m[1];
        return [(i) => unit[i] === u];
      }
      if ((m = /^([hd])(\d+)$/.exec(w))) {
        const x = +m[2];
        const ofHead = m[1] === "h";
        return [(i) => kind[i] === 1 && (ofHead ? Math.floor(unit[i] / DH) : unit[i] % DH) === x];
      }
      if ((m = /^(?:s|step)=?(\d+)$/.exec(w))) {
        const s = +m[1];
        return [(i) => step[i] === s];
      }
      m = /^([a-z_]+)(<=|>=|<|>|=)(-?[0-9.]+(?:e[-+]?\d+)?)$/.exec(w);
      if (m && byKey[m[1]] && !Number.isNaN(+m[3])) {
        const v = m[1] === "step" ? step : byKey[m[1]].v;
        const compare = COMPARE[m[2]];
        const x = +m[3];
        return [(i) => compare(v[i], x)];
      }
      return null;
    }

    // A search: every word must match, such as mlp attn pruned kept L2 L2.N17 L1.H3.D5 17 H3 D5 step2 score>5.
    function parse(text) {
      const tests = [];
      const bad = [];
      for (const w of text.toLowerCase().split(/[\s,]+/)) {
        if (!w) {
          continue;
        }
        const found = wordTests(w);
        if (found) {
          tests.push(...found);
        } else {
          bad.push(w);
        }
      }
      return {tests, bad};
    }

    function filter() {
      const search = parse(q.value);
      const tests = search.tests;
      const out = new Uint32Array(n);
      let k = 0;
      for (let r = 0; r < n; r++) {
        const i = order[r];
        let ok = true;
        for (let j = 0; j < tests.length && ok; j++) {
          ok = tests[j](i);
        }
        if (ok) {
          out[k++] = i;
        }
      }
      view = out.subarray(0, k);
      const unknown = search.bad.length ? " · not understood: " + search.bad.join(" ") : "";
      count.textContent = k.toLocaleString("en") + " of " + n.toLocaleString("en") + " units" + unknown;
      spacer.style.height = Math.max(k * ROW, 1) + "px";
      render();
    }

    function newRow() {
      const r = el("div", "ulx-row");
      r.setAttribute("role", "row");
      r.tabIndex = 0;
      cols.forEach(() => r.appendChild(el("span")));
      r.addEventListener("click", () => open(+r.dataset.unit));
      r.addEventListener("keydown", (e) => {
        if (e.key === "Enter") {
          open(+r.dataset.unit);
        }
      });
      rows.appendChild(r);
      return r;
    }

    function fillRow(r, i) {
      r.dataset.unit = i;
      r.className = "ulx-row" + (step[i] !== 0 ? " ulx-pruned" : "") + (i === selected ? " ulx-sel" : "");
      for (let c = 0; c < cols.length; c++) {
        r.children[c].textContent = cols[c].t ? cols[c].t(i) : fmt(cols[c].v[i]);
      }
    }

    // Only the rows in view, and a few around them, are in the DOM.
    function render() {
      const top = scroll.scrollTop;
      const height = scroll.clientHeight || 440;
      const first = Math.max(0, Math.floor(top / ROW) - OVER);
      const last = Math.min(view.length, Math.ceil((top + height) / ROW) + OVER);
      rows.style.transform = "translateY(" + first * ROW + "px)";
      while (pool.length < last - first) {
        pool.push(newRow());
      }
      for (let k = 0; k < pool.length; k++) {
        const shown = k < last - first;
        pool[k].style.display = shown ? "" : "none";
        if (shown) {
          fillRow(pool[k], view[first + k]);
        }
      }
    }

    scroll.addEventListener("scroll", () => {
      if (!pending) {
        pending = true;
        requestAnimationFrame(() => {
          pending = false;
          render();
        });
      }
    });
    q.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(filter, 80);
    });

    // One token of a context at flat position at (the top token at p), with its stored activation level code
    // (0 .. 2 * levels; anything else: no counted token there), or null where there is none.
    function tokenSpan(s, p, at, code, scale) {
      const v = s.tok[at];
      const sameRow = Math.floor(at / s.width) === Math.floor(p / s.width);
      if (at < 0 || !sameRow || !(v >= 0) || !(code >= 0 && code < display.ramp.length)) {
        return null;
      }
      const classes = [];
      if (data.special.indexOf(v) >= 0) {
        classes.push("ulx-special");
      }
      if (at === p) {
        classes.push("ulx-max");
      }
      const span = el("span", classes.join(" "), data.vocab[v]);
      span.style.background = display.ramp[code];
      span.title = "≈ " + fmt(((code - data.levels) / data.levels) * scale);
      return span;
    }

    // A unit's top contexts on one dataset, each token coloured by its activation.
    function contexts(s, i, scale) {
      const nc = data.n_contexts;
      const before = data.window[0];
      const width = before + data.window[1] + 1;
      const ol = el("ol");
      for (let j = 0; j < nc; j++) {
        const c = i * nc + j;
        const p = s.pos[c];
        if (p < 0) {
          continue;
        }
        const li = el("li");
        const ctx = el("span", "ulx-ctx");
        li.appendChild(el("span", "ulx-act", fmt(num(s.act[c]))));
        for (let o = 0; o < width; o++) {
          const span = tokenSpan(s, p, p - before + o, s.win.charCodeAt(c * width + o) - 97, scale);
          if (span) {
            ctx.appendChild(span);
          }
        }
        li.appendChild(ctx);
        ol.appendChild(li);
      }
      return ol.children.length ? ol : el("p", "ulx-none", "no tokens");
    }

    function statsTable(i) {
      const table = el("table");
      const header = el("tr");
      const names = ["statistic", ...sets.map((s) => s.name), ...(R ? ["ratio"] : [])];
      names.forEach((name) => header.appendChild(el("th", null, name)));
      table.appendChild(header);
      for (const [label, key, withRatio] of STATS) {
        const tr = el("tr");
        tr.appendChild(el("td", null, label));
        sets.forEach((s) => tr.appendChild(el("td", null, fmt(num(s[key][i])))));
        if (R) {
          tr.appendChild(el("td", null, withRatio ? fmt(num(F[key][i]) / num(R[key][i])) : ""));
        }
        table.appendChild(tr);
      }
      return table;
    }

    // The card of a unit: its address, score and pruned step, its statistics and its contexts on each dataset;
    // or its dashboard, where the page has one; a light dashboard's panels follow the card. Served by
    // `unlearn-lens serve` (window.ulLive), the card of a unit without a full dashboard is replaced by its dashboard
    // once the server has computed it; open returns that promise.
    function open(i) {
      const method = data.score_methods ? data.score_methods[KINDS[kind[i]]] : null;
      let score = "no scores";
      if (method) {
        score = "score " + fmt(byKey.score.v[i]) + " ('" + method + "', " + data.score_from + ")";
      }
      selected = i;
      render();
      const held = dash && dash.has(i);
      if (held && !dash.isLight(i)) {
        detail.replaceChildren(dash.render(String(i)));
        return null;
      }
      const card = el("div", "ulx-card");
      card.dataset.unit = i;
      card.appendChild(el("h3", null, unitText(i, "title")));
      card.appendChild(el("div", "ulx-sub", [unitText(i, "address"), score, prunedText(step[i])].join(" · ")));
      card.appendChild(statsTable(i));
      sets.forEach((s) => {
        const scanned = " (" + s.n_tokens.toLocaleString("en") + " tokens scanned)";
        card.appendChild(el("h4", null, "Top contexts on " + s.name + scanned));
        card.appendChild(contexts(s, i, num(data.scale[i])));
      });
      if (held) {
        card.appendChild(dash.panels(String(i))); // a light dashboard: the card's contexts, then its panels
      }
      detail.replaceChildren(card);
      return window.ulLive && window.ulDashboard ? fetchDashboard(i, card) : null;
    }

    function fetchDashboard(i, card) {
      const note = el("p", "ulx-sub", "Computing the full dashboard on the server …");
      card.insertBefore(note, card.children[2]);
      return window.ulLive.dashboard(unitText(i, "label")).then(
        (page) => {
          if (selected === i) {
            detail.replaceChildren(window.ulDashboard.create(page, display).render(String(i)));
          }
        },
        (error) => {
          note.textContent = "No dashboard: " + error.message;
        }
      );
    }

    if (data.score) {
      sortBy("score", -1);
    } else {
      sortBy("layer", 1);
    }
    return {
      sortBy: sortBy,
      filter: filter,
      open: open,
      q: q,
      rows: rows,
      view: () => view,
      label: (i) => unitText(i, "label"),
      scrollTo: (k) => {
        scroll.scrollTop = k * ROW;
        render();
      },
    };
  }

  // The test hook: a URL hash #ulx-test?q=...&sort=KEY&dir=asc&open=ROW&wait=1&scroll=ROW&bench=1&hover=1&show=1
  // searches, sorts, opens (with wait, until a dashboard asked of the server is drawn), points at the opened unit's
  // first top token, scrolls (the table; with show, the page to the opened unit), then writes what it saw (rows
  // shown, the first units and their labels, the rows drawn, timings in ms, what the pointer showed, the resources
  // the page fetched) as JSON into pre#ulx-test-result.
  async function selfTest(ex) {
    const hash = location.hash;
    if (hash.indexOf("#ulx-test") !== 0) {
      return;
    }
    const params = new URLSearchParams(hash.slice(hash.indexOf("?") + 1));
    const ms = {};

    function time(name, f) {
      const t0 = performance.now();
      f();
      ms[name] = Math.max(ms[name] || 0, performance.now() - t0);
    }

    function search(text) {
      ex.q.value = text;
      ex.filter();
    }

    if (params.get("bench")) {
      ["score", "ratio", "layer", "f_abs", "step", "unit"].forEach((key) => time("sort", () => ex.sortBy(key, -1)));
      const searches = ["mlp", "attn h2", "l3 pruned", "score>1", "ratio<0.5", ""];
      searches.forEach((text) => time("filter", () => search(text)));
    }
    if (params.get("q") !== null) {
      time("query", () => search(params.get("q")));
    }
    if (params.get("sort")) {
      time("sort_one", () => ex.sortBy(params.get("sort"), params.get("dir") === "asc" ? 1 : -1));
    }
    const view = ex.view();
    const first = Array.from(view.subarray(0, 20));
    if (params.get("open") !== null && view.length) {
      const pending = ex.open(view[+params.get("open")]);
      if (pending && params.get("wait")) {
        await pending;
      }
    }
    if (params.get("scroll")) {
      ex.scrollTo(+params.get("scroll"));
    }
    if (params.get("show")) {
      document.querySelector(".ulx-detail").scrollIntoView();
    }
    const drawn = Array.from(ex.rows.children).filter((r) => r.style.display !== "none");
    const hover = {};
    if (params.get("hover")) {
      // a pointer over the outlined token of the first context, as a user's mouse would move it there
      const token = document.querySelector(".ulx-detail .ulx-ctx .ulx-max");
      const readout = document.querySelector(".ulx-detail .uld-hover");
      if (token) {
        token.dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));
        hover.title = token.title;
        hover.readout = readout ? readout.textContent : null;
      }
    }
    const result = {
      hover: hover,
      resources: performance.getEntriesByType("resource").map((e) => e.name),
      shown: view.length,
      distinct: new Set(view).size,
      first: first,
      ms: ms,
      labels: first.map((i) => ex.label(i)),
      drawn: drawn.map((r) => +r.dataset.unit),
    };
    const out = el("pre", null, JSON.stringify(result));
    out.id = "ulx-test-result";
    document.body.appendChild(out);
  }

  function init() {
    document.querySelectorAll(".ulx[data-ulx]").forEach((root) => {
      if (!root.dataset.ulxReady) {
        root.dataset.ulxReady = "1";
        selfTest(Explorer(root));
      }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
