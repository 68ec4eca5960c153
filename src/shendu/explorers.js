// The explorers of shendu.widgets, drawn and computed in the page: an anywidget module, so they
// respond in JupyterLab, VS Code and Colab and also in the published book, where no kernel runs.
//
// The arithmetic mirrors shendu.receptive (fields, param_comparison) and the transforms
// shendu.augment (RandomAffine, ElasticDistortion, ColorJitter, RandomErasing) line for line;
// the browser tests compare the two, on random stacks and on the same random draws. The page
// draws its own random numbers (seeded by "new draw"), so its pictures are draws of the same
// transforms, not NumPy's draws. State lives in the widget's model: with a kernel, Python sees
// every change (explorer.rows, explorer.transform()); without one, the page keeps it alone.

// -- receptive fields (shendu.receptive) -------------------------------------------------------
const KINDS = ["conv", "maxpool", "avgpool"];

class ShenduError extends Error {}

function count(name, value, minimum) {
  if (!Number.isInteger(value) || value < minimum) {
    throw new ShenduError(`${name} must be an integer of at least ${minimum}, got ${value}`);
  }
  return value;
}

function layerName(l) {
  const k = l.kernel_size;
  return `${l.kind} ${k}×${k}` + (l.stride > 1 ? `/${l.stride}` : "") +
    (l.padding ? ` pad ${l.padding}` : "") + (l.dilation > 1 ? ` dil ${l.dilation}` : "") +
    (l.out_channels ? ` → ${l.out_channels}` : "");
}

// A checked layer: {kind, kernel_size, stride, padding, dilation, out_channels, in_channels,
// bias, span}, as receptive.Layer; throws ShenduError with Layer's message.
function layer(spec) {
  const l = {stride: 1, padding: 0, dilation: 1, out_channels: null, in_channels: null,
             bias: true, ...spec};
  if (!KINDS.includes(l.kind)) {
    throw new ShenduError(`layer kind must be one of ${KINDS.join(", ")}; got '${l.kind}'`);
  }
  for (const [name, minimum] of [["kernel_size", 1], ["stride", 1], ["padding", 0],
                                 ["dilation", 1]]) count(name, l[name], minimum);
  for (const name of ["out_channels", "in_channels"]) {
    if (l[name] !== null) {
      if (l.kind !== "conv") {
        throw new ShenduError(`a ${l.kind} layer keeps its channels: it takes no ${name}`);
      }
      count(name, l[name], 1);
    }
  }
  l.span = l.dilation * (l.kernel_size - 1) + 1;  // a dilated kernel's k taps span α(k−1)+1
  if (l.padding >= l.span) {
    throw new ShenduError(`${layerName(l)}: padding ${l.padding} is not smaller than the ` +
      `${l.span}×${l.span} window, so the border units would see nothing but padding; use ` +
      "less padding or a larger kernel");
  }
  return l;
}

// One row per layer, as receptive.fields: each layer widens the field r by (k − 1) steps of the
// effective stride j, multiplies j by its stride and adds its padding, in steps of j, to P.
function fields(specs, inputSize = 28, inChannels = 1) {
  count("input_size", inputSize, 1);
  let channels = count("in_channels", inChannels, 1);
  const layers = specs.map(layer);
  const rows = [];
  let [r, j, P] = [1, 1, 0], size = inputSize;
  layers.forEach((l, i) => {
    const index = i + 1, padded = size + 2 * l.padding;
    const covered = padded - l.span;  // input the window slides over
    if (covered < 0) {
      throw new ShenduError(`layer ${index} (${layerName(l)}) gets a ${size}×${size} input, ` +
        `smaller than its ${l.span}×${l.span} window even with padding ${l.padding}: its ` +
        "output would be empty; use a smaller kernel or stride, more padding, fewer layers " +
        "or a larger input");
    }
    const note = covered % l.stride ? `stride ${l.stride} does not fit: the last ` +
      `${covered % l.stride} row(s) and column(s) of the padded ${padded}×${padded} input ` +
      "are never seen" : "";
    const cIn = l.in_channels || channels, cOut = l.out_channels || cIn;
    const out = Math.floor(covered / l.stride) + 1;
    [r, j, P] = [r + (l.span - 1) * j, j * l.stride, P + l.padding * j];
    const kernelWeights = l.kind === "conv" ? l.kernel_size ** 2 * cIn * cOut : 0;
    const bias = l.kind === "conv" && l.bias ? cOut : 0;
    rows.push({index, layer: l, input_size: inputSize, in_size: size, out_size: out,
               in_channels: cIn, out_channels: cOut, size: r, stride: j, padding: P,
               weights: kernelWeights + bias, kernel_weights: kernelWeights,
               macs: out * out * kernelWeights, note});
    size = out;
    channels = cOut;
  });
  return rows;
}

// [[top, bottom], [left, right]]: the input pixels unit (u, v) of a row's map sees, unclipped.
function unitWindow(row, u, v) {
  return [u, v].map(a => a * row.stride - row.padding).map(first => [first, first + row.size - 1]);
}

// One k×k convolution against the (k−1)/2 stacked 3×3 ones that see as much (C→C, padded).
function paramComparison(channels, kernelSize, size = 28) {
  count("channels", channels, 1);
  const k = count("kernel_size", kernelSize, 3);
  if (k % 2 === 0) {
    throw new ShenduError(
      `kernel_size must be odd (3×3 stacks see 3, 5, 7, ... pixels), got ${k}`);
  }
  const names = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"};
  return [[1, k], [(k - 1) / 2, 3]].map(([n, kernel]) => {
    const spec = {kind: "conv", kernel_size: kernel, padding: Math.floor(kernel / 2),
                  out_channels: channels};
    const stack = fields(Array(n).fill(spec), size, channels);
    const sum = key => stack.reduce((total, row) => total + row[key], 0);
    return {stack: `${names[n] || n} ${kernel}×${kernel}`, layers: n, field: stack[n - 1].size,
            weights: sum("weights"), kernel_weights: sum("kernel_weights"), macs: sum("macs")};
  });
}

// -- transforms (shendu.augment) on one-channel batches {n, h, w, data: Float64Array} ------------
// `rng` draws as NumPy's Generator is called there: uniform(low, high, count), random(count).
function generator(seed) {  // mulberry32: small, fast, good enough for pictures
  let state = seed >>> 0;
  const next = () => {
    state = (state + 0x6D2B79F5) >>> 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const random = count => Float64Array.from({length: count}, next);
  return {random, uniform: (low, high, count) => random(count).map(u => low + (high - low) * u)};
}

function replay(draws) {  // NumPy's recorded draws, handed out in the order they were made
  let next = 0;
  const take = () => Float64Array.from(draws[next++]);
  return {random: take, uniform: take};
}

function bilinear(x, rows, cols) {  // kernels.sample.bilinear: outside the image is zero
  const {n, h, w} = x, out = new Float64Array(n * h * w);
  for (let p = 0; p < out.length; p++) {
    const image = Math.floor(p / (h * w)) * h * w;
    const r0 = Math.floor(rows[p]), s0 = Math.floor(cols[p]);
    const fr = rows[p] - r0, fs = cols[p] - s0;
    for (const a of [0, 1]) {
      for (const b of [0, 1]) {
        const y = r0 + a, z = s0 + b, weight = (a ? fr : 1 - fr) * (b ? fs : 1 - fs);
        if (weight !== 0 && y >= 0 && y < h && z >= 0 && z < w) {
          out[p] += weight * x.data[image + y * w + z];
        }
      }
    }
  }
  return {...x, data: out};
}

const radians = degrees => degrees * (Math.PI / 180);

function affine(x, t, rng) {
  const {n, h, w} = x;
  const angle = rng.uniform(...t.degrees, n).map(radians);
  const shear = rng.uniform(...t.shear, n).map(radians);
  const scale = rng.uniform(...t.scale, n);
  const tx = rng.uniform(-t.translate[0] * w, t.translate[0] * w, n);
  const ty = rng.uniform(-t.translate[1] * h, t.translate[1] * h, n);
  const rows = new Float64Array(n * h * w), cols = new Float64Array(n * h * w);
  const cy = (h - 1) / 2, cx = (w - 1) / 2;
  for (let m = 0; m < n; m++) {
    // the forward map [[a, b], [c, d]] = scale · rotation · shear; its inverse finds the source
    const cos = Math.cos(angle[m]), sin = Math.sin(angle[m]), tan = Math.tan(shear[m]);
    const s = scale[m], a = s * cos, b = s * (cos * tan + sin), c = -s * sin;
    const d = s * (cos - sin * tan), det = a * d - b * c;
    for (let i = 0; i < h; i++) {
      for (let j = 0; j < w; j++) {
        const u = j - cx - tx[m], v = i - cy - ty[m], p = (m * h + i) * w + j;
        cols[p] = (d * u - b * v) / det + cx;
        rows[p] = (a * v - c * u) / det + cy;
      }
    }
  }
  return bilinear(x, rows, cols);
}

function smooth(field, n, h, w, sigma) {  // a Gaussian blur along rows, then columns, mirrored
  const radius = Math.max(1, Math.floor(3 * sigma));
  const kernel = Array.from({length: 2 * radius + 1},
                            (_, t) => Math.exp(-0.5 * ((t - radius) / sigma) ** 2));
  const total = kernel.reduce((a, b) => a + b);
  const mirror = (i, size) => i < 0 ? -i : i >= size ? 2 * (size - 1) - i : i;
  const pass = (input, along) => {
    const out = new Float64Array(input.length);
    for (let m = 0; m < n; m++) {
      for (let i = 0; i < h; i++) {
        for (let j = 0; j < w; j++) {
          let sum = 0;
          for (let t = -radius; t <= radius; t++) {
            const [y, z] = along === "rows" ? [mirror(i + t, h), j] : [i, mirror(j + t, w)];
            sum += input[(m * h + y) * w + z] * (kernel[t + radius] / total);
          }
          out[(m * h + i) * w + j] = sum;
        }
      }
    }
    return out;
  };
  return pass(pass(field, "rows"), "columns");
}

function elastic(x, t, rng) {
  const {n, h, w} = x;
  const [dy, dx] = [0, 1].map(() => smooth(rng.uniform(-1, 1, n * h * w), n, h, w, t.sigma));
  const rows = new Float64Array(n * h * w), cols = new Float64Array(n * h * w);
  for (let p = 0; p < rows.length; p++) {
    rows[p] = Math.floor(p / w) % h + t.alpha * dy[p];
    cols[p] = p % w + t.alpha * dx[p];
  }
  return bilinear(x, rows, cols);
}

function jitter(x, t, rng) {
  const {n, h, w} = x, size = h * w, out = new Float64Array(n * size);
  const bright = rng.uniform(1 - t.brightness, 1 + t.brightness, n);
  const contrast = rng.uniform(1 - t.contrast, 1 + t.contrast, n);
  for (let m = 0; m < n; m++) {
    let mean = 0;
    for (let p = 0; p < size; p++) mean += x.data[m * size + p] * bright[m] / size;
    for (let p = 0; p < size; p++) {
      const y = x.data[m * size + p] * bright[m];
      out[m * size + p] = Math.min(1, Math.max(0, (y - mean) * contrast[m] + mean));
    }
  }
  return {...x, data: out};
}

function roundHalfEven(v) {  // NumPy's round
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 ? r - 1 : r;
}

function erasing(x, t, rng) {
  const {n, h, w} = x, out = Float64Array.from(x.data);
  const erase = rng.random(n).map(u => u < t.p);
  const area = rng.uniform(...t.scale, n).map(a => a * h * w);
  const ratio = rng.uniform(Math.log(t.ratio[0]), Math.log(t.ratio[1]), n).map(Math.exp);
  const eh = area.map((a, m) => Math.min(roundHalfEven(Math.sqrt(a * ratio[m])), h));
  const ew = area.map((a, m) => Math.min(roundHalfEven(Math.sqrt(a / ratio[m])), w));
  const top = rng.random(n).map((u, m) => Math.floor(u * (h - eh[m] + 1)));
  const left = rng.random(n).map((u, m) => Math.floor(u * (w - ew[m] + 1)));
  for (let m = 0; m < n; m++) {
    if (!erase[m]) continue;
    for (let i = top[m]; i < top[m] + eh[m]; i++) {
      for (let j = left[m]; j < left[m] + ew[m]; j++) out[(m * h + i) * w + j] = t.value;
    }
  }
  return {...x, data: out};
}

// The transforms the sliders describe, as AugmentationExplorer.transform() builds them.
const STEPS = {RandomAffine: affine, ElasticDistortion: elastic, ColorJitter: jitter,
               RandomErasing: erasing};

function transforms(s, h, w) {
  const steps = [];
  if (s.rotation || s.shift || s.scale || s.shear) {
    steps.push(["RandomAffine", {degrees: [-s.rotation, s.rotation], shear: [-s.shear, s.shear],
                                 translate: [s.shift / w, s.shift / h],
                                 scale: [1 - s.scale / 100, 1 + s.scale / 100]}]);
  }
  if (s.elastic) steps.push(["ElasticDistortion", {alpha: s.elastic, sigma: 4}]);
  if (s.brightness || s.contrast) {
    steps.push(["ColorJitter", {brightness: s.brightness / 100, contrast: s.contrast / 100}]);
  }
  if (s.erasing) {
    steps.push(["RandomErasing", {p: s.erasing / 100, scale: [0.02, 0.33], ratio: [0.3, 3.3],
                                  value: 0}]);
  }
  return steps;
}

function augment(x, strengths, rng) {
  return transforms(strengths, x.h, x.w).reduce((y, [name, t]) => STEPS[name](y, t, rng), x);
}

// Python's repr of those transforms: what to paste into Trainer(augment=...).
function describe(strengths, h, w) {
  const f = v => Number.isInteger(v) ? v.toFixed(1) : String(v);  // a Python float
  const pair = ([a, b]) => `(${f(a)}, ${f(b)})`;
  const text = {
    RandomAffine: t => "RandomAffine(" + [
      ["degrees", t.degrees], ["translate", t.translate], ["scale", t.scale], ["shear", t.shear],
    ].filter(([name, v]) => v[0] !== (name === "scale" ? 1 : 0) ||
                            v[1] !== (name === "scale" ? 1 : 0))
      .map(([name, v]) => `${name}=${pair(v)}`).join(", ") + ")",
    ElasticDistortion: t => `ElasticDistortion(alpha=${t.alpha}, sigma=${t.sigma})`,
    ColorJitter: t => `ColorJitter(brightness=${f(t.brightness)}, contrast=${f(t.contrast)})`,
    RandomErasing: t => `RandomErasing(p=${f(t.p)}, scale=${pair(t.scale)}, ` +
      `ratio=${pair(t.ratio)}, value=${f(t.value)})`,
  };
  return `Compose([${transforms(strengths, h, w).map(([name, t]) => text[name](t)).join(", ")}])`;
}

// -- the page: controls, tables, pictures ------------------------------------------------------
const STYLE = `
.shendu-explorer { font: 13px/1.4 system-ui, sans-serif; color: #222; max-width: 100%; }
.shendu-explorer .controls { display: flex; flex-wrap: wrap; gap: 4px 18px; margin: 4px 0; }
.shendu-explorer label { display: inline-flex; align-items: center; gap: 6px; }
.shendu-explorer input[type=range] { width: 110px; }
.shendu-explorer select { max-width: 14em; }
.shendu-explorer output { min-width: 2.5em; font-variant-numeric: tabular-nums; }
.shendu-explorer button { padding: 1px 10px; }
.shendu-explorer button.on { background: #cde; font-weight: bold; }
.shendu-explorer .problem { color: #b00; margin: 4px 0; }
.shendu-explorer .views { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.shendu-explorer .views > * { max-width: 100%; }
.shendu-explorer svg, .shendu-explorer canvas { max-width: 100%; height: auto; }
.shendu-explorer .wide { overflow-x: auto; max-width: 100%; }
.shendu-explorer table { border-collapse: collapse; margin: 6px 0; }
.shendu-explorer th, .shendu-explorer td { padding: 1px 8px; text-align: left; }
.shendu-explorer td.n { text-align: right; font-variant-numeric: tabular-nums; }
.shendu-explorer tr.selected { font-weight: bold; background: #eef; }
.shendu-explorer .grid { display: grid; gap: 3px; align-items: center; max-width: 32em; }
.shendu-explorer canvas.digit { image-rendering: pixelated; width: 100%; }
.shendu-explorer code { font-size: 12px; white-space: pre-wrap; overflow-wrap: anywhere; }
`;

function element(tag, attributes = {}, ...children) {
  const e = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") e.className = value;
    else if (key.startsWith("on")) e.addEventListener(key.slice(2), value);
    else e.setAttribute(key, value);
  }
  e.append(...children);
  return e;
}

function svg(tag, attributes = {}, text = "") {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes)) e.setAttribute(key, value);
  e.textContent = text;
  return e;
}

// A labelled range slider; set(value, max) moves it without calling onChange.
function slider(name, label, min, max, step, onChange) {
  const input = element("input", {type: "range", min, max, step, "data-control": name});
  const shown = element("output");
  input.addEventListener("input", () => {
    shown.textContent = input.value;
    onChange(Number(input.value));
  });
  const set = (value, newMax = Number(input.max)) => {
    input.max = newMax;
    input.value = value;
    shown.textContent = input.value;
  };
  return {el: element("label", {}, label, input, shown), input, set};
}

function select(name, label, onChange) {
  const input = element("select", {"data-control": name,
                                    onchange: () => onChange(input.value)});
  const set = (options, value) => {
    input.replaceChildren(...options.map(([text, v]) => element("option", {value: v}, text)));
    input.value = value;
  };
  return {el: element("label", {}, label, input), input, set};
}

const number = v => v.toLocaleString("en-US");
const compact = v => v.toLocaleString("en-US", {notation: "compact", maximumSignificantDigits: 3});

function table(header, rows, selected = -1) {
  const cell = (tag, v) => element(tag, typeof v === "number" ? {class: "n"} : {},
                                   typeof v === "number" ? number(v) : String(v));
  return element("table", {}, element("tr", {}, ...header.map(h => cell("th", h))),
    ...rows.map((row, i) => element("tr", i === selected ? {class: "selected"} : {},
                                    ...row.map(v => cell("td", v)))));
}

// Redraw once after a burst of changes (a preset sets six values, one event each), when the
// state is whole again.
function whenChanged(model, keys, update) {
  let pending = false;
  const schedule = () => {
    if (pending) return;
    pending = true;
    queueMicrotask(() => {
      pending = false;
      update();
    });
  };
  for (const key of keys) model.on(`change:${key}`, schedule);
}

function save(model) {
  try {
    model.save_changes();
  } catch (error) {
    // the published book has no kernel to tell: the page keeps the state alone
  }
}

// A line or bar chart in SVG: x values, series of y values, axis labels.
function chart({xs, series, xlabel, ylabel, title, bars = false, marker = null, right = null}) {
  const [W, H, L, R, T, B] = [340, 220, 52, right ? 40 : 12, 40, 40];
  const top = Math.max(...series.flatMap(s => s.ys), 1);
  const [x0, x1] = [Math.min(...xs) - (bars ? 0.6 : 0), Math.max(...xs) + (bars ? 0.6 : 0)];
  const X = x => L + (x - x0) / Math.max(x1 - x0, 1e-9) * (W - L - R);
  const Y = (y, max = top) => H - B - y / max * (H - T - B);
  const root = svg("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
                           "aria-label": title});
  root.append(svg("text", {x: W / 2, y: 13, "text-anchor": "middle", "font-size": 12}, title));
  root.append(svg("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#444"}));
  root.append(svg("line", {x1: L, y1: T, x2: L, y2: H - B, stroke: "#444"}));
  for (const y of [0, top / 2, top]) {
    root.append(svg("text", {x: L - 4, y: Y(y) + 4, "text-anchor": "end", "font-size": 10},
                    compact(y)));
  }
  const every = Math.ceil(xs.length / 12);
  xs.forEach((x, i) => i % every || root.append(
    svg("text", {x: X(x), y: H - B + 13, "text-anchor": "middle", "font-size": 10}, x)));
  root.append(svg("text", {x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle",
                           "font-size": 11}, xlabel));
  root.append(svg("text", {x: 12, y: (T + H - B) / 2, "font-size": 11, "text-anchor": "middle",
                           transform: `rotate(-90 12 ${(T + H - B) / 2})`}, ylabel));
  if (marker !== null) {
    root.append(svg("line", {x1: X(marker), x2: X(marker), y1: T, y2: H - B, stroke: "#999",
                             "stroke-dasharray": "2 3"}));
  }
  const width = (W - L - R) / (x1 - x0) * 0.7;
  series.forEach(({ys, color, label}, k) => {
    if (bars) {
      ys.forEach((y, i) => root.append(svg("rect", {x: X(xs[i]) - width / 2, y: Y(y),
        width, height: H - B - Y(y), fill: color})));
    } else {
      root.append(svg("polyline", {points: xs.map((x, i) => `${X(x)},${Y(ys[i])}`).join(" "),
                                   fill: "none", stroke: color, "stroke-width": 2}));
      xs.forEach((x, i) => root.append(svg("circle", {cx: X(x), cy: Y(ys[i]), r: 3,
                                                      fill: color})));
    }
    root.append(svg("text", {x: L + 110 * k, y: T - 10, fill: color, "font-size": 11},
                    label));  // the legend, between the title and the plot
  });
  if (right) {  // a second series on its own axis, at the right
    const max = Math.max(...right.ys, 1);
    root.append(svg("polyline", {points: xs.map((x, i) => `${X(x)},${Y(right.ys[i], max)}`)
      .join(" "), fill: "none", stroke: "#000", "stroke-width": 1.5}));
    for (const y of [0, max / 2, max]) {
      root.append(svg("text", {x: W - R + 4, y: Y(y, max) + 4, "font-size": 10}, compact(y)));
    }
    root.append(svg("text", {x: L + 110 * series.length, y: T - 10, "font-size": 11},
                    right.label));
  }
  return root;
}

// -- the receptive-field explorer -----------------------------------------------------------
function receptiveExplorer(model, el) {
  const presets = model.get("presets"), image = model.get("image");
  const message = element("div", {class: "problem"});
  const picture = element("canvas", {width: 260, height: 260, "data-view": "field"});
  const caption = element("div", {"data-view": "caption"});
  const bars = element("div");
  const rows = element("div", {class: "wide", "data-view": "table"});
  const state = () => ({layers: model.get("layers"), selected: model.get("selected")});

  const set = (changes) => {
    for (const [key, value] of Object.entries(changes)) model.set(key, value);
    save(model);
  };
  const editLayer = (key, value) => {
    const {layers, selected} = state();
    const spec = {...layers[selected], [key]: value};
    if (spec.kind !== "conv") spec.out_channels = null;  // pooling keeps its input's channels
    else if (spec.out_channels === null) {  // a pooling layer becomes a convolution again
      spec.out_channels = Number(editors.out_channels.input.value);
    }
    set({layers: layers.map((s, i) => i === selected ? spec : s)});
  };
  const preset = select("preset", "preset", name => {
    const p = presets[name];
    set({preset: name, layers: p.layers, input_size: p.input_size,
         in_channels: p.in_channels, selected: p.layers.length - 1, unit: null});
  });
  const size = slider("input_size", "input size", 4, 256, 1, v => set({input_size: v}));
  const channels = slider("in_channels", "input channels", 1, 64, 1,
                          v => set({in_channels: v}));
  const which = select("layer", "layer", v => set({selected: Number(v)}));
  const add = element("button", {"data-control": "add", onclick: () => {
    const {layers, selected} = state();
    set({layers: [...layers.slice(0, selected + 1), {...layers[selected]},
                  ...layers.slice(selected + 1)],
         selected: selected + 1});
  }}, "add layer");
  const remove = element("button", {"data-control": "remove", onclick: () => {
    const {layers, selected} = state();
    set({layers: layers.filter((_, i) => i !== selected),
         selected: Math.min(selected, layers.length - 2)});
  }}, "remove layer");
  const kind = select("kind", "kind", v => editLayer("kind", v));
  const editors = {
    kernel_size: slider("kernel_size", "kernel", 1, 11, 1, v => editLayer("kernel_size", v)),
    stride: slider("stride", "stride", 1, 4, 1, v => editLayer("stride", v)),
    padding: slider("padding", "padding", 0, 5, 1, v => editLayer("padding", v)),
    dilation: slider("dilation", "dilation", 1, 4, 1, v => editLayer("dilation", v)),
    out_channels: slider("out_channels", "out channels", 1, 2048, 1,
                         v => editLayer("out_channels", v)),
  };
  const u = slider("u", "unit u (row)", 0, 0, 1, v => set({unit: [v, model.get("unit")[1]]}));
  const v = slider("v", "unit v (column)", 0, 0, 1, w => set({unit: [model.get("unit")[0], w]}));
  const controls = (...items) => element("div", {class: "controls"}, ...items.map(c => c.el || c));
  el.append(controls(preset, size, channels), controls(which, add, remove),
            controls(kind, ...Object.values(editors)), controls(u, v), message,
            element("div", {class: "views"}, element("div", {}, caption, picture), bars), rows);

  function update() {
    const {layers, selected} = state(), spec = layers[selected];
    preset.set(Object.keys(presets).map(name => [name, name]), model.get("preset"));
    size.set(model.get("input_size"));
    channels.set(model.get("in_channels"));
    which.set(layers.map((s, i) => {
      let label;
      try { label = layerName(layer(s)); } catch (error) { label = `${s.kind} (invalid)`; }
      return [`${i + 1}: ${label}`, i];
    }), selected);
    remove.disabled = layers.length === 1;
    kind.set(KINDS.map(k => [k, k]), spec.kind);
    for (const [key, control] of Object.entries(editors)) {
      if (spec[key] !== null) control.set(spec[key]);
    }
    editors.out_channels.input.disabled = spec.kind !== "conv";
    let table_;
    try {
      table_ = fields(layers, model.get("input_size"), model.get("in_channels"));
      message.textContent = "";
    } catch (error) {
      if (!(error instanceof ShenduError)) throw error;
      message.textContent = error.message;
      rows.replaceChildren();
      bars.replaceChildren();
      caption.textContent = "no valid stack";
      draw(picture, image, model.get("input_size"), null);
      return;
    }
    const last = table_[table_.length - 1], n = last.out_size;
    let unit = model.get("unit");
    if (!unit) unit = [Math.floor(n / 2), Math.floor(n / 2)];  // a new stack: its centre unit
    unit = unit.map(a => Math.min(a, n - 1));
    if (String(unit) !== String(model.get("unit"))) {
      model.set("unit", unit);  // kept inside a smaller map
      save(model);
    }
    u.set(unit[0], n - 1);
    v.set(unit[1], n - 1);
    const [[top, bottom], [left, right]] = unitWindow(last, ...unit);
    caption.textContent = `unit (${unit}) of layer ${last.index} sees rows ${top}…${bottom}, ` +
      `columns ${left}…${right}`;
    draw(picture, image, model.get("input_size"), [last, unit]);
    const index = table_.map(r => r.index);
    bars.replaceChildren(chart({
      xs: index, bars: true, xlabel: "layer", ylabel: "field size (pixels)",
      title: "what one unit of each layer sees",
      series: [{ys: table_.map(r => r.size), color: "#f28e2b", label: "field size"}],
      right: {ys: table_.map(r => r.stride), label: "effective stride (right)"}}));
    const total = key => table_.reduce((sum, r) => sum + r[key], 0);
    const s = model.get("input_size"), c = model.get("in_channels");
    rows.replaceChildren(table(
      ["layer", "output", "field", "effective stride", "weights", "weights w/o bias",
       "multiply-adds", "note"],
      [["input", `${s}×${s}×${c}`, 1, 1, 0, 0, 0, ""],
       ...table_.map(r => [`${r.index}: ${layerName(r.layer)}`,
                           `${r.out_size}×${r.out_size}×${r.out_channels}`, r.size, r.stride,
                           r.weights, r.kernel_weights, r.macs, r.note]),
       ["total", "", "", "", total("weights"), total("kernel_weights"), total("macs"), ""]],
      selected + 1));
  }
  whenChanged(model, ["layers", "selected", "unit", "input_size", "in_channels", "preset"], update);
  update();
}

// The image stretched over the input's pixel grid (pixel i centred at i), and unit's window:
// dashed where it reaches into the padding, filled where it covers the image.
function draw(canvas, image, n, field) {  // field: [row, [u, v]] or null
  const g = canvas.getContext("2d"), S = canvas.width;
  let [lo, hi] = [-0.5, n - 0.5];
  let seen = null, clipped = null;
  if (field) {
    seen = unitWindow(field[0], ...field[1]);
    clipped = seen.map(([a, b]) => [Math.max(a, 0), Math.min(b, n - 1)]);
    lo = Math.min(lo, seen[0][0] - 1, seen[1][0] - 1);
    hi = Math.max(hi, seen[0][1] + 1, seen[1][1] + 1);
  }
  const at = p => (p - lo) / (hi - lo) * S;  // input coordinate → canvas pixels
  g.fillStyle = "#eee";
  g.fillRect(0, 0, S, S);
  const pixels = document.createElement("canvas");
  pixels.width = pixels.height = image.size;
  const data = pixels.getContext("2d").createImageData(image.size, image.size);
  image.pixels.forEach((p, i) => data.data.set([p, p, p, 255], 4 * i));
  pixels.getContext("2d").putImageData(data, 0, 0);
  g.imageSmoothingEnabled = false;
  g.drawImage(pixels, at(-0.5), at(-0.5), at(n - 0.5) - at(-0.5), at(n - 0.5) - at(-0.5));
  if (!field) return;
  const box = ([[top, bottom], [left, right]]) =>
    [at(left - 0.5), at(top - 0.5), at(right + 0.5) - at(left - 0.5),
     at(bottom + 0.5) - at(top - 0.5)];
  g.strokeStyle = "#f28e2b";
  g.lineWidth = 1.5;
  g.setLineDash([5, 4]);
  g.strokeRect(...box(seen));
  g.setLineDash([]);
  g.lineWidth = 2.5;
  g.fillStyle = "rgba(242, 142, 43, 0.35)";
  g.fillRect(...box(clipped));
  g.strokeRect(...box(clipped));
  const [cy, cx] = seen.map(([a, b]) => at((a + b) / 2));
  g.beginPath();
  g.moveTo(cx - 7, cy);
  g.lineTo(cx + 7, cy);
  g.moveTo(cx, cy - 7);
  g.lineTo(cx, cy + 7);
  g.stroke();
}

// -- the parameter explorer -------------------------------------------------------------------
function parameterExplorer(model, el) {
  const sliders = {
    channels: slider("channels", "channels C", 1, 512, 1, v => change("channels", v)),
    kernel_size: slider("kernel_size", "kernel k", 3, 15, 2, v => change("kernel_size", v)),
    size: slider("size", "map size", 1, 224, 1, v => change("size", v)),
  };
  const change = (key, value) => {
    model.set(key, value);
    save(model);
  };
  const rows = element("div", {class: "wide", "data-view": "table"});
  const plots = element("div", {class: "views"});
  el.append(element("div", {class: "controls"}, ...Object.values(sliders).map(s => s.el)),
            rows, plots);

  function update() {
    const [C, k, size] = ["channels", "kernel_size", "size"].map(key => model.get(key));
    for (const [key, control] of Object.entries(sliders)) control.set(model.get(key));
    const [big, stack] = paramComparison(C, k, size);
    rows.replaceChildren(
      table(["stack", "layers (ReLUs)", "field", "weights", "weights w/o bias", "multiply-adds"],
            [big, stack].map(r => [r.stack, r.layers, r.field, r.weights, r.kernel_weights,
                                   r.macs])),
      element("p", {}, `The 3×3 stack needs ${Math.round(100 * stack.kernel_weights /
        big.kernel_weights)}% of the weights and has ${stack.layers} nonlinearities instead ` +
        "of 1."));
    const ks = [];
    for (let n = 3; n <= Math.max(k, 11); n += 2) ks.push(n);
    const curves = ks.map(n => paramComparison(C, n, size));
    plots.replaceChildren(...[["weights", "weights"], ["macs", "multiply-adds per image"]].map(
      ([key, label]) => chart({xs: ks, marker: k, xlabel: "field size k (pixels)", ylabel: label,
        title: `${label}, C = ${C}`,
        series: [{ys: curves.map(c => c[0][key]), color: "#4e79a7", label: "one k×k"},
                 {ys: curves.map(c => c[1][key]), color: "#f28e2b", label: "stacked 3×3"}]})));
  }
  whenChanged(model, Object.keys(sliders), update);
  update();
}

// -- the augmentation explorer ----------------------------------------------------------------
function augmentationExplorer(model, el) {
  const {n, h, w, pixels} = model.get("images");
  const bytes = Uint8Array.from(atob(pixels), ch => ch.charCodeAt(0));
  const images = {n, h, w, data: Float64Array.from(bytes, b => b / 255)};
  const pick = (x, indices) => ({...x, n: indices.length,
    data: Float64Array.from(indices.flatMap(i => Array.from(x.data.subarray(i * h * w,
                                                                          (i + 1) * h * w))))});
  const labels = model.get("labels");  // slider name → [label, maximum]
  const sliders = Object.fromEntries(Object.entries(labels).map(([name, [label, max]]) =>
    [name, slider(name, label, 0, max, 1, v => {
      model.set("strengths", {...model.get("strengths"), [name]: v});
      save(model);
    })]));
  const modes = model.get("modes").map(mode => element("button", {"data-control": "mode",
    onclick: () => { model.set("mode", mode); save(model); }}, mode));
  const again = element("button", {"data-control": "draw", onclick: () => {
    model.set("draw", model.get("draw") + 1);
    save(model);
  }}, "new draw");
  const code = element("code", {"data-view": "transform"});
  const grid = element("div", {class: "grid", "data-view": "digits"});
  const names = Object.keys(sliders);
  el.append(element("div", {class: "controls"}, ...names.slice(0, 4).map(k => sliders[k].el)),
            element("div", {class: "controls"}, ...names.slice(4).map(k => sliders[k].el)),
            element("div", {class: "controls"}, ...modes, again), code, grid);

  const digit = (x, m) => {
    const canvas = element("canvas", {width: w, height: h, class: "digit"});
    const data = canvas.getContext("2d").createImageData(w, h);
    for (let p = 0; p < h * w; p++) {
      const g = Math.round(255 * x.data[m * h * w + p]);
      data.data.set([g, g, g, 255], 4 * p);
    }
    canvas.getContext("2d").putImageData(data, 0, 0);
    return canvas;
  };
  function update() {
    const strengths = model.get("strengths"), mode = model.get("mode");
    for (const [name, control] of Object.entries(sliders)) control.set(strengths[name]);
    modes.forEach(b => b.classList.toggle("on", b.textContent === mode));
    code.textContent = describe(strengths, h, w);
    const rng = generator(model.get("draw"));
    let rows;
    if (mode === model.get("modes")[0]) {
      const shown = pick(images, [...Array(Math.min(6, n)).keys()]);
      rows = [["original", shown], ["draw 1", augment(shown, strengths, rng)],
              ["draw 2", augment(shown, strengths, rng)]];
    } else {  // a random batch of 24 as the network receives it
      const order = [...Array(n).keys()];
      const u = rng.random(n);
      order.sort((a, b) => u[a] - u[b]);
      const batch = augment(pick(images, order.slice(0, Math.min(24, n))), strengths, rng);
      rows = [0, 8, 16].filter(k => k < batch.n).map(k =>
        ["", pick(batch, [...Array(Math.min(8, batch.n - k)).keys()].map(i => k + i))]);
    }
    const columns = Math.max(...rows.map(([, x]) => x.n));
    grid.style.gridTemplateColumns = `4.5em repeat(${columns}, minmax(0, 56px))`;
    grid.replaceChildren(...rows.flatMap(([label, x]) =>
      [element("span", {}, label), ...[...Array(x.n).keys()].map(m => digit(x, m)),
       ...Array(columns - x.n).fill(0).map(() => element("span"))]));
  }
  whenChanged(model, ["strengths", "mode", "draw"], update);
  update();
}

// -- anywidget's entry point ------------------------------------------------------------------
const EXPLORERS = {receptive: receptiveExplorer, parameters: parameterExplorer,
                   augmentation: augmentationExplorer};

// The arithmetic, for the browser tests and for readers with the developer console open.
globalThis.shendu = {fields, layerName, paramComparison, augment, describe, generator, replay};

function render({model, el}) {
  if (!document.getElementById("shendu-explorer-style")) {
    document.head.append(element("style", {id: "shendu-explorer-style"}, STYLE));
  }
  const root = element("div", {class: "shendu-explorer",
                               "data-explorer": model.get("explorer")});
  el.append(root);
  EXPLORERS[model.get("explorer")](model, root);
}

export default {render};
