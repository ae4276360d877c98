// Unit dashboards (unlearn_lens.report.dashboard_view): one unit's activations on forget and retain, its examples
// across its whole range, its direct logit effect, the effect of ablating it, and its place in the run, drawn from
// the page data made in Python (page_data) and the display rules (the unit texts, the colour ramp). Every token and
// label goes into the page as text, never as HTML. window.ulDashboard.create(data, display) gives an object whose
// render(key) draws the dashboard of units[key]; the neuron explorer uses it, and div.uld-root[data-uld] elements
// (a notebook output, a saved dashboard) draw every unit of their own data.
(function () {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";
  const WIDTH = 380;
  const HEIGHT = 140;
  const PAD = 36; // left and bottom margin of a chart, for its labels
  const STATS = [
    // [row label, key of a dataset's statistics, how it is shown]
    ["tokens", "tokens", "int"],
    ["mean", "mean"],
    ["std", "std"],
    ["mean |x|", "abs_mean"],
    ["RMS", "rms"],
    ["min", "min"],
    ["max", "max"],
    ["P(x > 0)", "fires", "pct"],
    ["P(x = 0)", "zeros", "pct"],
  ];

  // A number for a label: four significant digits, exponent notation when very large or small.
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

  function pct(v) {
    return v === null || v === undefined ? "–" : (100 * v).toFixed(1) + " %";
  }

  function shown(v, how) {
    if (how === "int") {
      return v === undefined ? "–" : v.toLocaleString("en");
    }
    return how === "pct" ? pct(v) : fmt(v);
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

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach((k) => e.setAttribute(k, attrs[k]));
    if (text !== undefined) {
      e.textContent = text;
    }
    return e;
  }

  function fill(template, fields) {
    return template.replace(/\{(\w+)\}/g, (match, key) => String(fields[key]));
  }

  // Bars of one or more series of counts on equal bins from lo, width w, overlaid on one axis.
  // opts: density (divide by total * w), log (log10 of the height; empty bins are not drawn), label (x axis).
  function bars(series, lo, w, opts) {
    const n = series[0].counts.length;
    const heights = series.map((s) => {
      const total = s.counts.reduce((a, b) => a + b, 0) || 1;
      return s.counts.map((c) => (opts.density ? c / (total * w) : c));
    });
    const positive = [].concat(...heights).filter((h) => h > 0);
    const top = Math.max(...positive, 1e-300);
    const least = Math.min(...positive, top);
    // on a log scale the smallest bar keeps a tenth of the height, so that a single token still shows
    const floor = opts.log ? Math.log10(least) - Math.max(Math.log10(top / least), 1) / 9 : 0;
    const y = (h) => {
      const v = opts.log ? (h > 0 ? (Math.log10(h) - floor) / (Math.log10(top) - floor || 1) : 0) : h / top;
      return HEIGHT - PAD - v * (HEIGHT - PAD - 6);
    };
    const chart = svg("svg", {viewBox: "0 0 " + WIDTH + " " + HEIGHT, class: "uld-chart", role: "img"});
    const bw = (WIDTH - PAD - 4) / n;
    heights.forEach((hs, k) => {
      hs.forEach((h, b) => {
        if (h <= 0) {
          return;
        }
        const x = PAD + b * bw;
        const rect = svg("rect", {x: x, y: y(h), width: Math.max(bw - 0.5, 0.5), height: HEIGHT - PAD - y(h)});
        rect.setAttribute("class", series[k].cls);
        rect.appendChild(svg("title", {}, series[k].name + " [" + fmt(lo + b * w) + ", " + fmt(lo + (b + 1) * w) +
          "): " + fmt(series[k].counts[b]) + (opts.density ? " tokens, density " + fmt(h) : " tokens")));
        chart.appendChild(rect);
      });
    });
    const axis = {class: "uld-axis"};
    chart.appendChild(svg("line", Object.assign({x1: PAD, y1: HEIGHT - PAD, x2: WIDTH - 4, y2: HEIGHT - PAD}, axis)));
    chart.appendChild(svg("line", Object.assign({x1: PAD, y1: 4, x2: PAD, y2: HEIGHT - PAD}, axis)));
    const label = (x, yy, text, anchor) => svg("text", {x: x, y: yy, "text-anchor": anchor, class: "uld-label"}, text);
    chart.appendChild(label(PAD, HEIGHT - PAD + 12, fmt(lo), "start"));
    chart.appendChild(label(WIDTH - 4, HEIGHT - PAD + 12, fmt(lo + n * w), "end"));
    chart.appendChild(label((PAD + WIDTH) / 2, HEIGHT - 4, opts.label, "middle"));
    const what = opts.density ? "density" : "tokens";
    chart.appendChild(label(PAD - 3, 12, fmt(top), "end"));
    chart.appendChild(label(PAD - 3, opts.log ? y(least) + 3 : HEIGHT - PAD, opts.log ? fmt(least) : "0", "end"));
    chart.appendChild(svg("text", {x: 10, y: (HEIGHT - PAD) / 2, class: "uld-label", "text-anchor": "middle",
      transform: "rotate(-90 10 " + (HEIGHT - PAD) / 2 + ")"}, opts.log ? "log " + what : what));
    return chart;
  }

  function Dashboards(data, display) {
    const levels = (display.ramp.length - 1) / 2;
    const names = data.datasets;

    function unitText(u, what) {
      return fill(display.units[u.kind][what], {layer: u.layer, unit: u.index, head: u.head, d: u.d});
    }

    function colour(value, scale) {
      if (!(scale > 0) || Number.isNaN(value)) {
        return "transparent";
      }
      const q = Math.max(-levels, Math.min(levels, Math.round((value / scale) * levels)));
      return display.ramp[q + levels];
    }

    // One example's tokens, each coloured by the unit's activation, the value (and the ablation effect) on hover.
    function context(u, ex) {
      const [, maxPos, toks, acts, deltas] = ex;
      const ctx = el("span", "ulx-ctx");
      toks.forEach((t, j) => {
        const value = acts[j] === null ? NaN : (acts[j] * u.scale) / data.scale;
        const span = el("span", j === maxPos ? "ulx-max" : null, data.vocab[t]);
        span.style.background = colour(value, u.scale);
        let title = "activation " + fmt(value);
        if (deltas) {
          const delta = deltas[j] === null ? null : deltas[j] * data.delta;
          title += " · ablating it: Δ log p(next token) " + fmt(delta);
        }
        span.title = title;
        ctx.appendChild(span);
      });
      return ctx;
    }

    function value(u, ex) {
      return (ex[3][ex[1]] * u.scale) / data.scale;
    }

    // A list of examples: the top ones in the explorer's classes (value, then context), others in their own.
    function examples(u, list, actClass) {
      const ol = el("ol", actClass === "ulx-act" ? null : "uld-examples");
      list.forEach((ex) => {
        const li = el("li");
        li.appendChild(el("span", actClass, fmt(value(u, ex))));
        li.appendChild(context(u, ex));
        if (actClass !== "ulx-act") {
          li.title = names[ex[0]];
        }
        ol.appendChild(li);
      });
      return ol.children.length ? ol : el("p", "ulx-none", "no tokens");
    }

    function statsTable(u) {
      const table = el("table");
      const header = el("tr");
      ["statistic", ...names].forEach((name) => header.appendChild(el("th", null, name)));
      table.appendChild(header);
      STATS.forEach(([label, key, how]) => {
        const tr = el("tr");
        tr.appendChild(el("td", null, label));
        names.forEach((name) => tr.appendChild(el("td", null, shown(u.stats[name][key], how))));
        table.appendChild(tr);
      });
      return table;
    }

    function subline(u) {
      const parts = [unitText(u, "address")];
      if (u.method) {
        const kindName = u.kind === "mlp" ? "MLP" : "attention";
        const total = data.counts[u.kind] * data.n_layers;
        parts.push("score " + fmt(u.score) + " ('" + u.method + "')");
        parts.push("rank " + u.rank.toLocaleString("en") + " of " + total.toLocaleString("en") + " " + kindName +
          " neurons, " + u.rank_in_layer.toLocaleString("en") + " of " + data.counts[u.kind].toLocaleString("en") +
          " in layer " + u.layer);
      }
      if (u.pruned) {
        parts.push(u.step ? "pruned at step " + u.step : "pruned (the run does not record the step)");
      } else {
        parts.push("kept");
      }
      return parts.join(" · ");
    }

    function toggle(label, onChange) {
      const box = el("input");
      box.type = "checkbox";
      box.addEventListener("change", onChange);
      const wrap = el("label", "uld-toggle");
      wrap.appendChild(box);
      wrap.appendChild(document.createTextNode(" " + label));
      return [wrap, box];
    }

    function histogram(u) {
      const fig = el("figure", "uld-fig uld-hist");
      fig.appendChild(el("figcaption", null, "Activations on " + names.join(" and ") + " (same bins)"));
      const [dLabel, dBox] = toggle("density", () => draw());
      const [lLabel, lBox] = toggle("log scale", () => draw());
      lBox.checked = true; // a unit that is 0 on most tokens would otherwise show one bar
      const controls = el("p", "uld-controls");
      controls.appendChild(dLabel);
      controls.appendChild(lLabel);
      fig.appendChild(controls);
      const holder = el("span", "uld-chart-holder");
      fig.appendChild(holder);
      const legend = el("p", "uld-legend");
      names.forEach((name, k) => {
        const s = u.stats[name];
        const key = el("span", "uld-key uld-s" + k, name);
        legend.appendChild(key);
        legend.appendChild(document.createTextNode(": fires (x > 0) on " + pct(s.fires) + " of tokens, exactly 0 on " +
          pct(s.zeros) + " "));
      });
      fig.appendChild(legend);
      function draw() {
        const series = names.map((name, k) => ({name: name, counts: u.hist.counts[k] || [], cls: "uld-s" + k}));
        holder.replaceChildren(bars(series, u.hist.lo, u.hist.w,
          {density: dBox.checked, log: lBox.checked, label: "activation"}));
      }
      draw();
      return fig;
    }

    function logitTable(caption, rows) {
      const table = el("table", "uld-logits");
      table.appendChild(el("caption", null, caption));
      rows.forEach(([t, v]) => {
        const tr = el("tr");
        const token = el("td", "uld-token");
        token.appendChild(el("span", "ulx-ctx", data.vocab[t]));
        tr.appendChild(token);
        tr.appendChild(el("td", null, fmt(v)));
        table.appendChild(tr);
      });
      return table;
    }

    function logits(u) {
      const fig = el("figure", "uld-fig uld-logit");
      fig.appendChild(el("figcaption", null, "Direct logit effect (per unit of activation)"));
      const tables = el("p", "uld-tables");
      tables.appendChild(logitTable("promoted", u.up));
      tables.appendChild(logitTable("suppressed", u.down));
      fig.appendChild(tables);
      const series = [{name: "vocabulary", counts: u.logit_hist.counts, cls: "uld-vocab"}];
      fig.appendChild(bars(series, u.logit_hist.lo, u.logit_hist.w, {density: false, log: false,
        label: "logit effect over the whole vocabulary"}));
      fig.appendChild(el("p", "uld-note", data.norm));
      return fig;
    }

    function effect(u) {
      const fig = el("figure", "uld-fig uld-effect");
      fig.appendChild(el("figcaption", null, "Ablating this unit alone (" + u.effect.ablation + " ablation)"));
      const list = el("ul");
      names.forEach((name) => {
        const n = u.effect.positions[name] || 0;
        list.appendChild(el("li", null, name + ": mean Δ log p(next token) " + fmt(u.effect[name]) + " over " + n +
          " positions of its top examples"));
      });
      fig.appendChild(list);
      fig.appendChild(el("p", "uld-note", "Hover a token of a top example for the change at that position."));
      return fig;
    }

    function layerMap(u) {
      const fig = el("figure", "uld-fig uld-map");
      const map = u.map ? data.maps[u.map] : null;
      const kindName = u.kind === "mlp" ? "MLP" : "attention";
      fig.appendChild(el("figcaption", null, "Layer " + u.layer + ": its " + kindName + " neurons by score"));
      if (!map) {
        fig.appendChild(el("p", "ulx-none", "no scores"));
        return fig;
      }
      const vals = map.values.map((v) => (v === null ? NaN : v));
      const finite = vals.filter((v) => Number.isFinite(v));
      const hi = Math.max(...finite);
      const lo = Math.min(...finite);
      const x = (i) => PAD + (i / Math.max(vals.length - 1, 1)) * (WIDTH - PAD - 4);
      const y = (v) => HEIGHT - PAD - ((v - lo) / (hi - lo || 1)) * (HEIGHT - PAD - 8);
      const chart = svg("svg", {viewBox: "0 0 " + WIDTH + " " + HEIGHT, class: "uld-chart", role: "img"});
      const points = vals.map((v, i) => (Number.isFinite(v) ? x(i) + "," + y(v) : "")).filter((p) => p).join(" ");
      chart.appendChild(svg("polyline", {points: points, class: "uld-line"}));
      map.pruned.forEach((p) => chart.appendChild(svg("line", {x1: x(p), x2: x(p), y1: HEIGHT - PAD,
        y2: HEIGHT - PAD + 6, class: "uld-tick"})));
      const mark = svg("circle", {cx: x(u.at), cy: y(vals[u.at]), r: 4, class: "uld-mark"});
      mark.appendChild(svg("title", {}, "this unit: " + fmt(vals[u.at])));
      chart.appendChild(mark);
      chart.appendChild(svg("line", {x1: x(u.at), x2: x(u.at), y1: 4, y2: HEIGHT - PAD, class: "uld-markline"}));
      chart.appendChild(svg("text", {x: PAD - 3, y: 12, class: "uld-label", "text-anchor": "end"}, fmt(hi)));
      chart.appendChild(svg("text", {x: PAD - 3, y: HEIGHT - PAD, class: "uld-label", "text-anchor": "end"}, fmt(lo)));
      chart.appendChild(svg("text", {x: (PAD + WIDTH) / 2, y: HEIGHT - 4, class: "uld-label", "text-anchor": "middle"},
        "units of the layer, highest score first; ticks: pruned"));
      fig.appendChild(chart);
      fig.appendChild(el("p", "uld-note", map.label + "; the circle is this unit"));
      return fig;
    }

    // The panels of units[key]: its histograms, its logit effect, the ablation effect (not in a light dashboard, which
    // has no examples to ablate on) and its layer's map.
    function panels(key) {
      const u = data.units[key];
      const section = el("section", "uld-panels");
      [histogram(u), logits(u), ...(u.light ? [] : [effect(u)]), layerMap(u)].forEach((p) => section.appendChild(p));
      return section;
    }

    // The dashboard of units[key]: the card of the explorer (title, place in the run, statistics, top contexts),
    // then the histograms, the logit effect, the ablation effect, the layer map, bottom contexts and quantile bands.
    function render(key) {
      const u = data.units[key];
      const card = el("div", "ulx-card");
      card.dataset.unit = key;
      card.appendChild(el("h3", null, unitText(u, "title")));
      card.appendChild(el("div", "ulx-sub", subline(u)));
      const readout = el("p", "uld-hover", "Hover a token for its activation.");
      card.appendChild(readout);
      card.addEventListener("mouseover", (e) => {
        const t = e.target;
        if (t.parentNode && t.parentNode.classList && t.parentNode.classList.contains("ulx-ctx") && t.title) {
          readout.textContent = "“" + t.textContent + "”: " + t.title;
        }
      });
      card.appendChild(statsTable(u));
      names.forEach((name, k) => {
        const scanned = " (" + (u.stats[name].tokens || 0).toLocaleString("en") + " tokens scanned)";
        card.appendChild(el("h4", null, "Top contexts on " + name + scanned));
        card.appendChild(examples(u, u.top.filter((ex) => ex[0] === k), "ulx-act"));
      });
      card.appendChild(panels(key));
      const rest = el("section", "uld-more");
      names.forEach((name, k) => {
        rest.appendChild(el("h4", null, "Bottom contexts on " + name + " (most negative first)"));
        rest.appendChild(examples(u, u.bottom.filter((ex) => ex[0] === k), "uld-act"));
      });
      rest.appendChild(el("h4", null, "Examples from quantile bands (a random sample of tokens of " +
        names.join(" and ") + "), lowest band first"));
      u.bands.forEach(([range, list], b) => {
        rest.appendChild(el("h5", null, "band " + (b + 1) + ": " + fmt(range[0]) + " to " + fmt(range[1])));
        rest.appendChild(examples(u, list, "uld-act"));
      });
      card.appendChild(rest);
      return card;
    }

    return {has: (key) => Object.prototype.hasOwnProperty.call(data.units, String(key)), render: render,
      panels: panels, isLight: (key) => Boolean(data.units[String(key)].light), keys: () => Object.keys(data.units)};
  }

  function init() {
    document.querySelectorAll(".uld-root[data-uld]").forEach((root) => {
      if (root.dataset.uldReady) {
        return;
      }
      root.dataset.uldReady = "1";
      const data = JSON.parse(root.querySelector(".uld-data").textContent);
      const display = JSON.parse(root.querySelector(".uld-display").textContent);
      const dash = Dashboards(data, display);
      const out = root.querySelector(".uld-out");
      dash.keys().forEach((key) => out.appendChild(dash.render(key)));
    });
  }

  window.ulDashboard = {create: Dashboards};
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
