// The live panel of `unlearn-lens serve` (unlearn_lens.report.serve): as the user types, it asks the server for a
// unit's activation at each token of the text (GET /api/activations) and for the top-5 next tokens (GET
// /api/predict), both unpruned and pruned, and draws them side by side, each token coloured by the activation with
// the value on hover. Every token goes into the page as text, never as HTML. Its configuration (the units offered,
// the longest text, the display rules) is a JSON block made in Python. It also gives the neuron explorer
// window.ulLive.dashboard(unit), a promise of the full dashboard of any unit (GET /api/dashboard).
(function () {
  "use strict";

  const WAIT = 250; // ms after the last keystroke before asking the server

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

  function fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) {
      return "–";
    }
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) {
      return v.toExponential(2);
    }
    return String(Number(v.toPrecision(4)));
  }

  async function get(url) {
    const response = await fetch(url, {headers: {Accept: "application/json"}});
    const body = await response.json();
    if (!response.ok) {
      throw new Error(body.error || "the server answered " + response.status);
    }
    return body;
  }

  // The neuron explorer asks here for the dashboard of a unit the page does not hold (GET /api/dashboard).
  window.ulLive = {dashboard: (unit) => get("api/dashboard?" + new URLSearchParams({unit: unit}))};

  function Live(root) {
    const config = JSON.parse(root.querySelector(".uld-live-data").textContent);
    const ramp = config.display.ramp;
    const levels = (ramp.length - 1) / 2;
    const text = root.querySelector(".uld-textbox");
    const unit = root.querySelector(".uld-unit");
    const status = root.querySelector(".uld-status");
    const side = root.querySelector(".uld-side");
    const options = root.querySelector("datalist");
    config.units.forEach((name) => {
      const option = el("option");
      option.value = name;
      options.appendChild(option);
    });
    unit.value = config.units[0] || "L0.mlp.0";
    text.maxLength = config.max_chars;
    let timer;
    let asked = 0;

    function colour(value, scale) {
      if (!(scale > 0) || value === null) {
        return "transparent";
      }
      const q = Math.max(-levels, Math.min(levels, Math.round((value / scale) * levels)));
      return ramp[q + levels];
    }

    function column(title, tokens, acts, scale, top) {
      const col = el("section", "uld-column");
      col.appendChild(el("h4", null, title));
      const ctx = el("p", "ulx-ctx");
      tokens.forEach((t, i) => {
        const span = el("span", null, t);
        span.style.background = colour(acts[i], scale);
        span.title = "activation " + fmt(acts[i]);
        ctx.appendChild(span);
      });
      col.appendChild(ctx);
      const table = el("table", "uld-logits");
      table.appendChild(el("caption", null, "next token"));
      top.forEach(([token, p]) => {
        const tr = el("tr");
        const cell = el("td", "uld-token");
        cell.appendChild(el("span", "ulx-ctx", token));
        tr.appendChild(cell);
        tr.appendChild(el("td", null, (100 * p).toFixed(1) + " %"));
        table.appendChild(tr);
      });
      col.appendChild(table);
      return col;
    }

    function draw(acts, predicted) {
      const all = acts.acts.concat(acts.acts_pruned).filter((v) => v !== null).map(Math.abs);
      const scale = Math.max(...all, 0);
      side.replaceChildren(
        column("unpruned", acts.tokens, acts.acts, scale, predicted.unpruned),
        column("pruned", acts.tokens, acts.acts_pruned, scale, predicted.pruned)
      );
    }

    async function update() {
      const mine = ++asked;
      if (!text.value) {
        side.replaceChildren();
        status.textContent = "";
        return;
      }
      status.className = "uld-status";
      status.textContent = "…";
      try {
        const q = new URLSearchParams({unit: unit.value.trim(), text: text.value});
        const [acts, predicted] = await Promise.all([
          get("api/activations?" + q),
          get("api/predict?" + new URLSearchParams({text: text.value})),
        ]);
        if (mine === asked) {
          draw(acts, predicted);
          status.textContent = acts.unit + ": " + acts.tokens.length + " tokens";
        }
      } catch (error) {
        if (mine === asked) {
          status.className = "uld-status uld-error";
          status.textContent = error.message;
        }
      }
    }

    function later() {
      clearTimeout(timer);
      timer = setTimeout(update, WAIT);
    }

    text.addEventListener("input", later);
    unit.addEventListener("change", later);
    return {text: text, unit: unit, update: update, status: status, side: side};
  }

  // The test hook: a URL hash #uld-live-test?unit=...&text=... types the text and the unit as a user would, waits
  // for the answers, and writes what the panel shows as JSON into pre#uld-live-result.
  async function selfTest(live) {
    const hash = location.hash;
    if (hash.indexOf("#uld-live-test") !== 0) {
      return;
    }
    const params = new URLSearchParams(hash.slice(hash.indexOf("?") + 1));
    live.unit.value = params.get("unit") || live.unit.value;
    live.text.value = params.get("text") || "";
    live.text.dispatchEvent(new Event("input", {bubbles: true}));
    await live.update();
    const columns = Array.from(live.side.querySelectorAll(".uld-column")).map((col) => ({
      title: col.querySelector("h4").textContent,
      tokens: Array.from(col.querySelectorAll("p.ulx-ctx span")).map((s) => [s.textContent, s.title,
        s.style.background]),
      next: Array.from(col.querySelectorAll("tr")).map((tr) => tr.textContent),
    }));
    const result = {
      status: live.status.textContent,
      columns: columns,
      resources: performance.getEntriesByType("resource").map((e) => e.name),
    };
    const out = el("pre", null, JSON.stringify(result));
    out.id = "uld-live-result";
    document.body.appendChild(out);
  }

  function init() {
    document.querySelectorAll("[data-uld-live]").forEach((root) => {
      if (!root.dataset.uldLiveReady) {
        root.dataset.uldLiveReady = "1";
        selfTest(Live(root));
      }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
