// The paint page: strokes on the scene become interventions on a concept's top units.
//
// Every stroke is drawn twice: on the visible overlay (in screen pixels) and on a transparent
// canvas of the image's own size, which is sent as the stroke's mask (a PNG data URL; painted
// where alpha > 0). After each change the page posts all strokes, in order, to /api/generate and
// shows the image that comes back. No build step and no external files.
'use strict';

const GALLERY_SEEDS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

const state = {
  info: null,
  seed: 0,
  layer: null,
  concept: null,
  units: {},      // layer -> [{unit, label, iou, threshold, strip}]
  levels: {},     // layer -> [threshold per unit]
  rankings: {},   // `${layer}/${concept}` -> [{name, metric, units, scores}]
  strokes: [],    // [{intervention, text}]
  drawing: null,  // the stroke being drawn: {mask, ctx, last}
  request: 0,     // id of the newest generate request (older answers are dropped)
  shown: 0,       // images shown so far (data-generation on #result)
};

const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify(body),
  };
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(`${response.status}: ${data.detail || response.statusText}`);
  }
  return data;
}

function setStatus(text, isError = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', isError);
}

function checked(name) {
  return document.querySelector(`input[name="${name}"]:checked`).value;
}

// ------------------------------------------------------------------------- concept and units

function currentRanking() {
  const rankings = state.rankings[`${state.layer}/${state.concept}`] || [];
  return rankings.find((r) => r.metric === $('ranking').value) || rankings[0];
}

function currentUnits() {
  const ranking = currentRanking();
  return ranking ? ranking.units.slice(0, Number(checked('intensity'))) : [];
}

async function selectLayer(layer) {
  state.layer = layer;
  if (!state.units[layer]) {
    const q = `?layer=${encodeURIComponent(layer)}`;
    const [units, levels] = await Promise.all([api(`/api/units${q}`), api(`/api/levels${q}`)]);
    state.units[layer] = units.units;
    state.levels[layer] = levels.levels;
  }
  const {concepts} = await api(`/api/concepts?layer=${encodeURIComponent(layer)}`);
  const box = $('concepts');
  box.replaceChildren();
  for (const c of concepts) {
    const button = document.createElement('button');
    button.type = 'button';
    button.textContent = c.name;
    button.dataset.concept = c.name;
    button.title = `${c.interpretable} interpretable units; rankings: ${c.rankings.join(', ')}`;
    button.addEventListener('click', () => selectConcept(c.name));
    box.append(button);
  }
  if (concepts.length) {
    await selectConcept(concepts[0].name);
  }
}

async function selectConcept(concept) {
  state.concept = concept;
  const key = `${state.layer}/${concept}`;
  if (!state.rankings[key]) {
    const q = `?layer=${encodeURIComponent(state.layer)}&concept=${encodeURIComponent(concept)}`;
    state.rankings[key] = (await api(`/api/rankings${q}`)).rankings;
  }
  for (const b of $('concepts').children) {
    b.classList.toggle('selected', b.dataset.concept === concept);
  }
  const select = $('ranking');
  select.replaceChildren();
  for (const r of state.rankings[key]) {
    select.append(new Option(`${r.metric === 'alpha' ? 'learned alpha' : 'IoU'}`, r.metric));
  }
  // The learned unit set controls a concept better than the IoU ranking: prefer it.
  const metrics = state.rankings[key].map((r) => r.metric);
  select.value = metrics.includes('alpha') ? 'alpha' : 'iou';
  showUnits();
}

function showUnits() {
  const ranking = currentRanking();
  const body = $('units').querySelector('tbody');
  body.replaceChildren();
  if (!ranking) {
    return;
  }
  const units = state.units[state.layer];
  currentUnits().forEach((u, i) => {
    const row = body.insertRow();
    const info = units[u];
    row.insertCell().textContent = u;
    row.insertCell().textContent = info.label;
    row.insertCell().textContent = info.iou.toFixed(3);
    row.insertCell().textContent = ranking.scores[i].toFixed(3);
    const cell = row.insertCell();
    if (info.strip) {
      const img = document.createElement('img');
      img.src = info.strip;
      img.alt = `top images of unit ${u}`;
      img.loading = 'lazy';
      cell.append(img);
    }
  });
}

// ------------------------------------------------------------------------------------ strokes

function intervention(mask) {
  const units = currentUnits();
  const remove = checked('mode') === 'remove';
  const scale = Number($('scale').value);
  const levels = state.levels[state.layer];
  return {
    layer: state.layer,
    units,
    alpha: 1,
    value: remove ? 0 : units.map((u) => levels[u] * scale),
    mask: mask.toDataURL('image/png'),
    pooling: 'max',
  };
}

function imagePoint(event) {
  const rect = $('overlay').getBoundingClientRect();
  const [h, w] = state.info.image_size;
  return {
    x: (event.clientX - rect.left) * w / rect.width,
    y: (event.clientY - rect.top) * h / rect.height,
  };
}

function brushCtx(ctx, width, colour) {
  ctx.lineCap = 'round';
  ctx.lineJoin = 'round';
  ctx.lineWidth = width;
  ctx.strokeStyle = colour;
  ctx.fillStyle = colour;
}

function paintSegment(from, to) {
  const overlay = $('overlay');
  const k = overlay.width / state.info.image_size[1];
  const brush = Number($('brush').value);
  const colour = checked('mode') === 'remove' ? 'rgb(220, 40, 40)' : 'rgb(40, 180, 60)';
  for (const [ctx, scale, style] of [[state.drawing.ctx, 1, 'black'],
                                     [state.drawing.display.getContext('2d'), k, colour],
                                     [overlay.getContext('2d'), k, colour]]) {
    brushCtx(ctx, brush * scale, style);
    ctx.beginPath();
    if (from.x === to.x && from.y === to.y) {
      ctx.arc(to.x * scale, to.y * scale, brush * scale / 2, 0, 2 * Math.PI);
      ctx.fill();
    } else {
      ctx.moveTo(from.x * scale, from.y * scale);
      ctx.lineTo(to.x * scale, to.y * scale);
      ctx.stroke();
    }
  }
}

function startStroke(event) {
  if (!state.layer || !currentUnits().length) {
    setStatus('choose a concept first', true);
    return;
  }
  const [h, w] = state.info.image_size;
  const mask = document.createElement('canvas');
  mask.width = w;
  mask.height = h;
  $('overlay').setPointerCapture(event.pointerId);
  const display = document.createElement('canvas');
  display.width = $('overlay').width;
  display.height = $('overlay').height;
  const p = imagePoint(event);
  state.drawing = {mask, ctx: mask.getContext('2d'), display, last: p};
  paintSegment(p, p);
}

function moveStroke(event) {
  if (!state.drawing) {
    return;
  }
  const p = imagePoint(event);
  paintSegment(state.drawing.last, p);
  state.drawing.last = p;
}

function endStroke() {
  if (!state.drawing) {
    return;
  }
  const iv = intervention(state.drawing.mask);
  const display = state.drawing.display;
  state.drawing = null;
  const how = checked('mode') === 'remove' ? 'remove' : 'add';
  const text = `${how} ${state.concept} (${state.layer}, top ${iv.units.length} by ` +
      `${$('ranking').value})`;
  state.strokes.push({intervention: iv, text, display});
  refresh();
}

// The overlay holds the stroke being drawn, plus every stroke when "show strokes" is on.
function drawOverlay() {
  const overlay = $('overlay');
  const ctx = overlay.getContext('2d');
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  const shown = $('show-strokes').checked ? state.strokes.map((s) => s.display) : [];
  if (state.drawing) {
    shown.push(state.drawing.display);
  }
  for (const canvas of shown) {
    ctx.drawImage(canvas, 0, 0);
  }
}

function showHistory() {
  const list = $('history');
  list.replaceChildren();
  state.strokes.forEach((s, i) => {
    const item = document.createElement('li');
    item.textContent = s.text;
    const drop = document.createElement('button');
    drop.type = 'button';
    drop.textContent = 'remove';
    drop.addEventListener('click', () => {
      state.strokes.splice(i, 1);
      refresh();
    });
    item.append(drop);
    list.append(item);
  });
  const used = {};
  for (const s of state.strokes) {
    const set = used[s.intervention.layer] || new Set();
    s.intervention.units.forEach((u) => set.add(u));
    used[s.intervention.layer] = set;
  }
  const parts = Object.entries(used).map(
      ([layer, set]) => `${layer}: ${[...set].sort((a, b) => a - b).join(', ')}`);
  $('in-use').textContent = parts.length ? `strokes use ${parts.join('; ')}` : 'no strokes yet';
}

// ------------------------------------------------------------------------------- generation

async function refresh() {
  showHistory();
  const id = ++state.request;
  setStatus('generating...');
  try {
    const body = {seeds: [state.seed], interventions: state.strokes.map((s) => s.intervention)};
    const {images} = await api('/api/generate', body);
    if (id !== state.request) {
      return;  // a newer request is on its way
    }
    const img = $('result');
    await new Promise((resolve) => {
      img.onload = resolve;
      img.onerror = resolve;
      img.src = images[0];
    });
    if (!body.interventions.length) {
      $('original').src = images[0];
    }
    drawOverlay();
    state.shown += 1;
    img.dataset.generation = String(state.shown);
    setStatus(`seed ${state.seed}, ${state.strokes.length} stroke(s)`);
  } catch (err) {
    if (id === state.request) {
      setStatus(err.message, true);
    }
  }
}

function showSeed(seed) {
  if (!Number.isInteger(seed) || seed < 0) {
    setStatus(`seed must be a whole number >= 0, not ${$('seed').value}`, true);
    return;
  }
  state.seed = seed;
  $('seed').value = seed;
  state.strokes = [];
  for (const b of $('gallery').children) {
    b.classList.toggle('selected', Number(b.dataset.seed) === seed);
  }
  refresh();
}

async function showGallery() {
  // One request per thumbnail: the server keeps one compiled function per batch size, and the
  // single-image one is the one every edit uses.
  const seeds = GALLERY_SEEDS;
  const images = (await Promise.all(seeds.map((seed) => api('/api/generate', {seeds: [seed]}))))
      .map((answer) => answer.images[0]);
  const box = $('gallery');
  box.replaceChildren();
  seeds.forEach((seed, i) => {
    const button = document.createElement('button');
    button.type = 'button';
    button.dataset.seed = seed;
    button.title = `seed ${seed}`;
    button.classList.toggle('selected', seed === state.seed);
    const img = document.createElement('img');
    img.src = images[i];
    img.alt = `seed ${seed}`;
    button.append(img);
    button.addEventListener('click', () => showSeed(seed));
    box.append(button);
  });
}

// ------------------------------------------------------------------------------------- set up

function wire() {
  const overlay = $('overlay');
  overlay.width = overlay.clientWidth;
  overlay.height = overlay.clientHeight;
  overlay.addEventListener('pointerdown', startStroke);
  overlay.addEventListener('pointermove', moveStroke);
  overlay.addEventListener('pointerup', endStroke);
  overlay.addEventListener('pointercancel', endStroke);
  $('undo').addEventListener('click', () => {
    state.strokes.pop();
    refresh();
  });
  $('clear').addEventListener('click', () => {
    state.strokes = [];
    refresh();
  });
  $('load-seed').addEventListener('click', () => showSeed(Number($('seed').value)));
  $('seed').addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      showSeed(Number($('seed').value));
    }
  });
  $('layer').addEventListener('change', () => selectLayer($('layer').value));
  $('ranking').addEventListener('change', showUnits);
  for (const input of document.querySelectorAll('input[name="intensity"]')) {
    input.addEventListener('change', showUnits);
  }
  $('show-strokes').addEventListener('change', drawOverlay);
  $('brush').addEventListener('input', () => {
    $('brush-size').textContent = $('brush').value;
  });
}

async function main() {
  wire();
  try {
    state.info = await api('/api/info');
    $('model-name').textContent = `Model: ${state.info.model}.`;
    const {layers} = await api('/api/layers');
    for (const l of layers) {
      $('layer').append(new Option(`${l.layer} (${l.shape[2]} units)`, l.layer));
    }
    $('layer').value = state.info.default_layer;
    await selectLayer(state.info.default_layer);
    await showGallery();
    await refresh();
    document.body.dataset.ready = '1';
  } catch (err) {
    setStatus(err.message, true);
  }
}

main();
