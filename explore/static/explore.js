// reweigh explore: the page's behaviour. Every number comes from the app's JSON routes (explore/app.py).
'use strict';

const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];
const state = { overview: null, y: 'loss_std', color: 'domain', domain: '', region: null, drawing: 0, curation: 0 };
const $ = (id) => document.getElementById(id);

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function fmt(value, digits = 3) {
  if (value === null || value === undefined) return '-';
  if (Number.isInteger(value)) return value.toLocaleString('en-US');
  return Number(value).toPrecision(digits);
}

function option(select, value, label) {
  const el = document.createElement('option');
  el.value = value;
  el.textContent = label;
  select.appendChild(el);
}

// --- the data map -------------------------------------------------------------------------------------------------

function mapQuery() {
  const q = new URLSearchParams({ y: state.y, color: state.color });
  if (state.domain !== '') q.set('domain', state.domain);
  if (state.region) ['x0', 'x1', 'y0', 'y1'].forEach((k, i) => q.set(k, state.region[i]));
  return q;
}

function colorScale() {
  return state.color === 'weight' ? 'RdBu' : 'Viridis';
}

function domainScale(n) {
  // a stepwise colourscale: domain d is PALETTE[d]
  const stops = [];
  for (let d = 0; d < n; d++) {
    stops.push([d / n, PALETTE[d % PALETTE.length]], [(d + 1) / n, PALETTE[d % PALETTE.length]]);
  }
  return stops;
}

function pointTraces(m) {
  const names = state.overview.domain_names;
  if (state.color === 'domain') {
    const byDomain = new Map();
    m.sample_id.forEach((id, k) => {
      const d = m.domain[k];
      if (!byDomain.has(d)) byDomain.set(d, { x: [], y: [], ids: [] });
      const t = byDomain.get(d);
      t.x.push(m.x[k]); t.y.push(m.y[k]); t.ids.push(id);
    });
    return [...byDomain.entries()].sort((a, b) => a[0] - b[0]).map(([d, t]) => ({
      type: 'scatter', mode: 'markers', name: names[d] || `domain ${d}`, x: t.x, y: t.y, customdata: t.ids,
      marker: { size: 6, color: PALETTE[d % PALETTE.length], opacity: 0.75 },
      hovertemplate: 'sample %{customdata}<br>loss %{x:.3f}<br>%{y:.3f}<extra>%{fullData.name}</extra>',
    }));
  }
  return [{
    type: 'scatter', mode: 'markers', name: state.color, x: m.x, y: m.y, customdata: m.sample_id,
    marker: { size: 6, color: m.color, colorscale: colorScale(), showscale: true, opacity: 0.8,
      ...(state.color === 'weight' ? { cmid: 1 } : {}) },
    hovertemplate: `sample %{customdata}<br>loss %{x:.3f}<br>%{y:.3f}<br>${state.color} %{marker.color:.3f}<extra></extra>`,
  }];
}

function binTrace(m) {
  const [x0, x1, y0, y1] = m.extent;
  const dx = (x1 - x0) / m.bins || 1;
  const dy = (y1 - y0) / m.bins || 1;
  const z = Array.from({ length: m.bins }, () => new Array(m.bins).fill(null));
  const counts = Array.from({ length: m.bins }, () => new Array(m.bins).fill(0));
  m.i.forEach((i, k) => { z[m.j[k]][i] = m.color[k]; counts[m.j[k]][i] = m.n[k]; });
  const xs = Array.from({ length: m.bins }, (_, i) => x0 + (i + 0.5) * dx);
  const ys = Array.from({ length: m.bins }, (_, j) => y0 + (j + 0.5) * dy);
  const n = state.overview.domain_names.length;
  const trace = {
    type: 'heatmap', x: xs, y: ys, z, customdata: counts, hoverongaps: false,
    hovertemplate: 'loss %{x:.3f}<br>%{y:.3f}<br>%{customdata} samples<extra></extra>',
  };
  if (state.color === 'domain') Object.assign(trace, { colorscale: domainScale(n), zmin: -0.5, zmax: n - 0.5, showscale: false });
  else Object.assign(trace, { colorscale: colorScale(), showscale: true, ...(state.color === 'weight' ? { zmid: 1 } : {}) });
  return [trace];
}

async function drawMap(fetched = null) {
  const token = ++state.drawing;
  $('map-status').textContent = 'loading...';
  let m;
  try {
    m = await (fetched || getJSON(`/api/map?${mapQuery()}`));
  } catch (e) {
    $('map-status').textContent = e.message;
    return;
  }
  if (token !== state.drawing) return; // a newer request is on its way
  const layout = {
    margin: { l: 55, r: 10, t: 10, b: 45 }, dragmode: 'zoom', uirevision: `${state.y}/${state.color}/${state.domain}`,
    xaxis: { title: { text: 'mean loss across visits' } }, yaxis: { title: { text: state.overview.axes[state.y] } },
    legend: { orientation: 'h' },
  };
  if (state.region) {
    layout.xaxis.range = state.region.slice(0, 2);
    layout.yaxis.range = state.region.slice(2, 4);
  }
  await Plotly.react('map', m.kind === 'points' ? pointTraces(m) : binTrace(m), layout, { displaylogo: false, responsive: true });
  $('map').dataset.kind = m.kind;
  $('map').dataset.count = m.count;
  $('map-status').textContent = `${fmt(m.count)} samples (${m.kind})`;
}

function onRelayout(event) {
  if (event['xaxis.autorange'] || event['yaxis.autorange']) {
    state.region = null;
  } else if ('xaxis.range[0]' in event && 'yaxis.range[0]' in event) {
    state.region = [event['xaxis.range[0]'], event['xaxis.range[1]'], event['yaxis.range[0]'], event['yaxis.range[1]']];
  } else {
    return;
  }
  drawMap();
}

function onMapClick(event) {
  const point = event.points && event.points[0];
  if (!point) return;
  if (point.data.type === 'scatter') {
    loadSample(point.customdata);
  } else { // a bin: zoom into the 5 x 5 bins around it
    const xs = point.data.x, ys = point.data.y;
    const dx = xs.length > 1 ? xs[1] - xs[0] : 1, dy = ys.length > 1 ? ys[1] - ys[0] : 1;
    state.region = [point.x - 2.5 * dx, point.x + 2.5 * dx, point.y - 2.5 * dy, point.y + 2.5 * dy];
    drawMap();
  }
}

// --- a sample -----------------------------------------------------------------------------------------------------

async function loadSample(id) {
  let s;
  try {
    s = await getJSON(`/api/sample/${encodeURIComponent(id)}`);
  } catch (e) {
    $('sample-text').textContent = e.message;
    return;
  }
  $('sample-id').textContent = s.sample_id;
  const docs = (s.documents || []).map((d) => d.doc_id).join(', ');
  $('sample-facts').textContent = `domain ${s.domain_name} · ${s.visits} visits · mean loss ${fmt(s.mean_loss)} · `
    + `loss std ${fmt(s.loss_std)} · mean weight ${fmt(s.mean_rel_weight)} x uniform` + (docs ? ` · documents ${docs}` : '');
  $('sample-text').textContent = s.text !== null ? s.text : `text unavailable: ${s.text_unavailable}`;
  const t = s.trajectory;
  await Plotly.react('sample-plot', [
    { type: 'scatter', mode: 'lines+markers', name: 'loss', x: t.step, y: t.loss },
    { type: 'scatter', mode: 'lines+markers', name: 'weight (x uniform)', x: t.step, y: t.rel_weight, yaxis: 'y2' },
  ], {
    margin: { l: 45, r: 45, t: 10, b: 35 }, xaxis: { title: { text: 'step' } }, yaxis: { title: { text: 'loss' } },
    yaxis2: { title: { text: 'weight' }, overlaying: 'y', side: 'right' }, legend: { orientation: 'h' },
  }, { displaylogo: false, responsive: true });
  $('sample-panel').dataset.sample = s.sample_id;
}

// --- domains over training ----------------------------------------------------------------------------------------

async function drawDomains() {
  const d = await getJSON('/api/domains');
  const names = state.overview.domain_names;
  const traces = [];
  Object.entries(d.domains).forEach(([name, c]) => {
    const color = PALETTE[Math.max(0, names.indexOf(name)) % PALETTE.length];
    traces.push({ type: 'scatter', mode: 'lines', name: `${name} weight share`, x: c.window, y: c.weight_share, line: { color } });
    traces.push({ type: 'scatter', mode: 'lines', name: `${name} loss`, x: c.window, y: c.mean_loss, yaxis: 'y2',
      line: { color, dash: 'dot' } });
  });
  await Plotly.react('domains-plot', traces, {
    margin: { l: 50, r: 50, t: 10, b: 40 }, xaxis: { title: { text: 'step (window start)' } },
    yaxis: { title: { text: 'share of the weight' } }, yaxis2: { title: { text: 'mean loss' }, overlaying: 'y', side: 'right' },
    legend: { orientation: 'h', y: -0.3 },
  }, { displaylogo: false, responsive: true });
  const q = d.quantiles;
  const names_q = Object.keys(q).filter((k) => k !== 'window');
  await Plotly.react('quantiles-plot', names_q.map((k) => ({ type: 'scatter', mode: 'lines', name: k, x: q.window, y: q[k] })), {
    margin: { l: 50, r: 10, t: 10, b: 40 }, xaxis: { title: { text: 'step (window start)' } },
    yaxis: { title: { text: 'weight (x uniform), quantiles' } }, legend: { orientation: 'h' },
  }, { displaylogo: false, responsive: true });
}

// --- runs side by side -------------------------------------------------------------------------------------------

async function drawRuns() {
  const r = await getJSON('/api/runs');
  if (!r.arms.length) {
    $('runs-note').textContent = r.note || 'no evaluations to show';
    $('runs-panel').dataset.arms = 0;
    return;
  }
  const domains = Object.keys(r.curves);
  const traces = [];
  const layout = { margin: { l: 50, r: 10, t: 30, b: 40 }, legend: { orientation: 'h', y: -0.3 }, annotations: [],
    grid: { rows: 1, columns: domains.length, pattern: 'independent' } };
  domains.forEach((domain, k) => {
    const axis = k === 0 ? '' : String(k + 1);
    r.arms.forEach((arm, a) => {
      const c = r.curves[domain][arm];
      if (!c) return;
      const color = PALETTE[a % PALETTE.length];
      traces.push({ type: 'scatter', mode: 'lines', x: c.step, y: c.max, line: { width: 0 }, showlegend: false, hoverinfo: 'skip',
        xaxis: `x${axis}`, yaxis: `y${axis}`, legendgroup: arm });
      traces.push({ type: 'scatter', mode: 'lines', x: c.step, y: c.min, fill: 'tonexty', line: { width: 0 }, showlegend: false,
        fillcolor: `${color}33`, hoverinfo: 'skip', xaxis: `x${axis}`, yaxis: `y${axis}`, legendgroup: arm });
      traces.push({ type: 'scatter', mode: 'lines+markers', name: arm, x: c.step, y: c.mean, line: { color }, legendgroup: arm,
        showlegend: k === 0, xaxis: `x${axis}`, yaxis: `y${axis}` });
    });
    layout[`xaxis${axis}`] = { title: { text: 'step' } };
    layout.annotations.push({ text: domain, xref: `x${axis} domain`, yref: `y${axis} domain`, x: 0.5, y: 1.08, showarrow: false });
  });
  // no mode bar: it would cover the last domain's title (drag to zoom, double-click to reset still work)
  await Plotly.react('runs-plot', traces, layout, { displayModeBar: false, responsive: true });
  const body = $('runs-table').querySelector('tbody');
  body.replaceChildren(...r.final.map((f) => {
    const row = document.createElement('tr');
    const ci = f.diff_ci_low === null ? '-' : `[${fmt(f.diff_ci_low)}, ${fmt(f.diff_ci_high)}]`;
    [f.arm, f.domain, fmt(f.loss_mean, 4), f.arm === r.baseline ? 'baseline' : fmt(f.diff_mean), ci, fmt(f.step_ratio)]
      .forEach((value) => {
        const cell = document.createElement('td');
        cell.textContent = value;
        cell.title = value;
        row.appendChild(cell);
      });
    return row;
  }));
  $('runs-note').textContent = `${r.runs.length} run(s) in ${r.arms.length} arm(s); baseline ${r.baseline}. Bands: min to max over seeds.`;
  $('runs-panel').dataset.arms = r.arms.length;
}

// --- curation -----------------------------------------------------------------------------------------------------

function curationQuery() {
  const q = new URLSearchParams();
  [['drop-below', 'drop_below'], ['min-visits', 'min_visits'], ['drop-easy-stable', 'drop_easy_stable'], ['keep-top', 'keep_top']]
    .forEach(([id, key]) => { if ($(id).value !== '') q.set(key, $(id).value); });
  if ($('score').value !== 'weight') q.set('score', $('score').value);
  if ($('drop-unvisited').checked) q.set('drop_unvisited', 'true');
  document.querySelectorAll('#caps input').forEach((input) => {
    if (input.value !== '') q.append('cap', `${input.dataset.name}=${input.value}`);
  });
  return q;
}

async function updateCuration() {
  const token = ++state.curation;
  let c;
  try {
    c = await getJSON(`/api/curate?${curationQuery()}`);
  } catch (e) {
    if (token === state.curation) $('curation-error').textContent = e.message;
    return;
  }
  if (token !== state.curation) return;
  $('curation-error').textContent = '';
  const body = $('curation-table').querySelector('tbody');
  body.replaceChildren(...c.domains.map((d) => {
    const row = document.createElement('tr');
    row.dataset.domain = d.name;
    [d.name, d.samples, d.dropped, d.kept, d.kept_tokens, d.dropped_tokens].forEach((value, k) => {
      const cell = document.createElement('td');
      cell.textContent = k === 0 ? value : fmt(value);
      cell.className = ['name', 'samples', 'dropped', 'kept', 'kept-tokens', 'dropped-tokens'][k];
      row.appendChild(cell);
    });
    return row;
  }));
  $('curation-command').textContent = c.command;
  const examples = $('curation-examples');
  examples.replaceChildren(...c.domains.flatMap((d) => d.examples.map((e) => {
    const p = document.createElement('p');
    p.className = 'example';
    p.textContent = `${d.name} ${e.sample_id} (${e.reason}): ${e.text === null ? '(text unavailable)' : e.text}`;
    return p;
  })));
  $('curation-panel').dataset.version = token;
}

let curationTimer = null;
function scheduleCuration() {
  clearTimeout(curationTimer);
  curationTimer = setTimeout(updateCuration, 150);
}

// --- start --------------------------------------------------------------------------------------------------------

async function start() {
  const firstMap = getJSON(`/api/map?${mapQuery()}`); // the default view, fetched while the overview is
  const o = await getJSON('/api/overview');
  state.overview = o;
  $('run-summary').textContent = `${o.run} · ${fmt(o.rows)} history rows · ${fmt(o.steps)} steps · ${fmt(o.samples)} samples`
    + (o.text_unavailable ? ` · text unavailable: ${o.text_unavailable}` : '');
  Object.entries(o.axes).forEach(([k, label]) => option($('map-y'), k, label));
  o.colors.forEach((k) => option($('map-color'), k, k));
  o.domain_names.forEach((name, d) => option($('map-domain'), d, name));
  o.domain_names.forEach((name) => {
    const label = document.createElement('label');
    label.textContent = `cap ${name} `;
    const input = document.createElement('input');
    Object.assign(input, { type: 'number', min: 0, step: 1, id: `cap-${name}` });
    input.dataset.name = name;
    label.appendChild(input);
    $('caps').appendChild(label);
  });
  $('map-y').addEventListener('change', (e) => { state.y = e.target.value; state.region = null; drawMap(); });
  $('map-color').addEventListener('change', (e) => { state.color = e.target.value; drawMap(); });
  $('map-domain').addEventListener('change', (e) => { state.domain = e.target.value; drawMap(); });
  $('map-reset').addEventListener('click', () => { state.region = null; drawMap(); });
  $('curation-form').addEventListener('input', scheduleCuration);
  $('curation-form').addEventListener('change', scheduleCuration);
  $('curation-form').addEventListener('submit', (e) => e.preventDefault());
  $('copy-command').addEventListener('click', () => navigator.clipboard && navigator.clipboard.writeText($('curation-command').textContent));
  await drawMap(firstMap);
  $('map').on('plotly_relayout', onRelayout);
  $('map').on('plotly_click', onMapClick);
  await Promise.all([drawDomains(), drawRuns(), updateCuration()]);
  document.body.dataset.ready = 'true';
}

start().catch((e) => { $('run-summary').textContent = `error: ${e.message}`; });
