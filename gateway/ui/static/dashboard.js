// The LMForge dashboard: live from GET /lf/status/stream, with actions over the native /lf API.
// Every value shown comes from the server and may carry a user's text (model names): it only ever reaches the
// page as textContent or a property, never as markup.
'use strict';

(() => {
  const KEY = 'lmforge.key';
  const HISTORY_MAX = 50;
  const ERRORS_MAX = 30;
  const ENDED = new Set(['done', 'failed', 'cancelled']);
  const GONE = new Set(['unloaded', 'failed']);
  const POLL = { status: 5000, requests: 3000, logs: 5000 };
  const $ = (id) => document.getElementById(id);

  const state = {
    slots: new Map(),    // "model|kind" -> SlotInfo
    loads: new Map(),    // "model|kind" -> the last load event while it loads
    queues: new Map(),   // "model|kind" -> the last queue event, while it is newer than the slot's own count
    started: new Map(),  // "model|kind|generation" -> when its load began (client ms)
    pulls: new Map(),    // pull_id -> PullInfo
    history: [],
    errors: [],
    hardware: null,
    budget: null,
    startedAt: 0,
    skew: 0,             // server clock minus ours, in seconds
    models: [],
  };

  // --- DOM, without markup ---

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'class') node.className = value;
      else if (name.startsWith('data-')) node.setAttribute(name, String(value));
      else if (name === 'onclick') node.addEventListener('click', value);
      else node[name] = value;
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fill(parent, nodes) { parent.replaceChildren(...nodes); }

  function button(action, label, onclick) {
    return el('button', { type: 'button', 'data-action': action, onclick }, label);
  }

  function show(node, visible) { node.hidden = !visible; }

  // --- formats ---

  function bytes(n) {
    if (n === null || n === undefined) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return `${v.toFixed(i === 0 || v >= 100 ? 0 : 1)} ${units[i]}`;
  }

  function duration(s) {
    if (s === null || s === undefined || !Number.isFinite(s)) return '—';
    s = Math.max(0, Math.round(s));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
    return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  }

  function clock(epochS) { return new Date(epochS * 1000).toLocaleTimeString([], { hour12: false }); }
  function ms(v) { return v === null || v === undefined ? '—' : `${Math.round(v)} ms`; }
  function serverNow() { return Date.now() / 1000 + state.skew; }
  function keyOf(o) { return `${o.model}|${o.kind}`; }

  // --- the key and the API ---

  class Failure extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  let keyWaiters = [];

  function headers(extra) {
    const h = Object.assign({}, extra);
    const key = sessionStorage.getItem(KEY);
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  }

  async function reason(resp) {
    const text = await resp.text();
    try {
      const body = JSON.parse(text);
      return (body.error && (body.error.message || body.error)) || text;
    } catch (_) {
      return text || `HTTP ${resp.status}`;
    }
  }

  function askKey(why) {
    const dialog = $('key-dialog');
    $('key-reason').textContent = why || 'This LMForge asks for a key.';
    if (!dialog.open) dialog.showModal();
    return new Promise((resolve) => keyWaiters.push(resolve));
  }

  $('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $('key-input').value.trim());
    $('key-input').value = '';
    show($('forget-key'), true);
    $('key-dialog').close();
  });

  // Closed with a key or without (Escape): whoever waited tries again, and asks again if it must.
  $('key-dialog').addEventListener('close', () => {
    const waiters = keyWaiters;
    keyWaiters = [];
    waiters.forEach((resolve) => resolve());
    refreshModels();
  });

  $('forget-key').addEventListener('click', () => { sessionStorage.removeItem(KEY); location.reload(); });

  // One call. A 401 fails it, and an action (`ask`) asks for a key: background reads never prompt on their own
  // (the logs need an admin key that a viewer may not have), they wait for the key the stream or an action asked.
  async function api(method, path, body, ask = true) {
    const init = { method, cache: 'no-store', headers: headers() };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    if (resp.status === 401) {
      const why = await reason(resp);
      if (ask) askKey(why);
      throw new Failure(401, why);
    }
    if (!resp.ok) throw new Failure(resp.status, await reason(resp));
    return resp;
  }

  // --- server-sent events over fetch (EventSource cannot send the key) ---

  async function readEvents(body, dispatch) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let name = '';
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, end).replace(/\r$/, '');
        buffer = buffer.slice(end + 1);
        if (line === '') {
          if (data.length) dispatch(name || 'message', JSON.parse(data.join('\n')));
          name = '';
          data = [];
        } else if (!line.startsWith(':')) {
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') name = text;
          else if (field === 'data') data.push(text);
        }
      }
    }
  }

  function setConn(text, kind) {
    const pill = $('conn');
    pill.textContent = text;
    pill.className = `pill ${kind || ''}`;
  }

  function banner(text) {
    $('banner').textContent = text || '';
    show($('banner'), Boolean(text));
  }

  // A bug in the page is reported, not mistaken for a dropped connection.
  function guarded(fn) {
    return (...args) => {
      try { fn(...args); } catch (err) { console.error('dashboard:', err); banner(`dashboard error: ${err.message}`); }
    };
  }

  const SILENCE_MS = 45000; // the gateway pings every 15 s: three missed pings mean the connection is dead

  async function follow() {
    let delay = 500;
    for (;;) {
      const abort = new AbortController();
      let heard = Date.now();
      const watchdog = setInterval(() => { if (Date.now() - heard > SILENCE_MS) abort.abort(); }, 5000);
      try {
        const resp = await fetch('/lf/status/stream',
          { headers: headers({ Accept: 'text/event-stream' }), cache: 'no-store', signal: abort.signal });
        if (resp.status === 401) {
          setConn('key needed', 'warn');
          await askKey(await reason(resp));
          continue;
        }
        if (!resp.ok) throw new Failure(resp.status, await reason(resp));
        setConn('live', 'good');
        await readEvents(resp.body, guarded((name, data) => {
          heard = Date.now();
          if (name === 'snapshot') delay = 500;
          onEvent(name, data);
        }));
      } catch (err) {
        // A dropped or refused connection is why we reconnect; anything else is a bug to report.
        const dropped = err instanceof TypeError || err instanceof Failure || err.name === 'AbortError';
        if (!dropped) console.error('dashboard:', err);
        if (err instanceof Failure) banner(`The status stream was refused: ${err.message}`);
      } finally {
        clearInterval(watchdog);
      }
      setConn(`reconnecting in ${Math.round(delay / 100) / 10}s`, 'bad');
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }

  // --- the model of the page, from events ---

  function onEvent(name, data) {
    switch (name) {
      case 'snapshot': applySnapshot(data); break;
      case 'slot': applySlot(data.slot, data.previous); break;
      case 'queue': state.queues.set(keyOf(data), data); break;
      case 'load': applyLoad(data); break;
      case 'download': applyPull(data.pull); break;
      case 'hardware': state.hardware = data.snapshot; renderMachine(); return;
      case 'error': addError(`${data.model} (${data.kind})`, data.error); break;
      case 'heartbeat': state.skew = data.time - Date.now() / 1000; return;
      case 'manager': banner(`The manager is not answering: ${data.reason}`); return;
      case 'stopping': banner('The manager is stopping.'); return;
      default: return; // ping, and events a newer gateway may add
    }
    render();
  }

  function applySnapshot(snap) {
    banner('');
    state.skew = snap.started_at + snap.uptime_s - Date.now() / 1000;
    state.startedAt = snap.started_at;
    state.hardware = snap.hardware;
    state.budget = snap.budget;
    state.slots = new Map(snap.slots.map((s) => [keyOf(s), s]));
    state.queues = new Map();
    state.pulls = new Map(snap.pulls.map((p) => [p.pull_id, p]));
    for (const key of state.loads.keys()) if (!state.slots.has(key)) state.loads.delete(key);
    for (const [label, error] of Object.entries(snap.last_errors || {})) addError(label, error);
    render();
  }

  function applyLoad(load) {
    const key = keyOf(load);
    const slot = state.slots.get(key);
    // The last stage ("ready") may come after the slot's own event: a loaded slot shows no stage.
    if (slot && slot.state !== 'pending' && slot.state !== 'loading') state.loads.delete(key);
    else state.loads.set(key, load);
  }

  function applySlot(slot, previous) {
    const key = keyOf(slot);
    state.queues.delete(key);  // its `waiting` is the newer count
    const run = `${key}|${slot.generation}`;
    const loading = slot.state === 'pending' || slot.state === 'loading';
    if (loading && !state.started.has(run)) state.started.set(run, Date.now());
    let took = null;
    if (slot.state === 'ready' && previous === 'loading' && state.started.has(run)) {
      took = (Date.now() - state.started.get(run)) / 1000;
      state.started.delete(run);
    }
    if (previous !== null && previous !== slot.state) {
      state.history.unshift({ at: serverNow(), model: slot.model, kind: slot.kind, from: previous, to: slot.state,
        took, detail: slot.detail });
      state.history.length = Math.min(state.history.length, HISTORY_MAX);
    }
    if (!loading) state.loads.delete(key);
    if (GONE.has(slot.state)) {
      const current = state.slots.get(key);
      if (!current || current.generation <= slot.generation) state.slots.delete(key);
      state.started.delete(run);
    } else {
      state.slots.set(key, slot);
    }
  }

  function applyPull(pull) {
    const before = state.pulls.get(pull.pull_id);
    state.pulls.set(pull.pull_id, pull);
    if (pull.state === 'done' && (!before || before.state !== 'done')) refreshModels();
  }

  function addError(label, error) {
    if (state.errors.some((e) => e.at === error.at && e.message === error.message)) return;
    state.errors.unshift({ label, at: error.at, message: error.message, severity: error.severity, count: error.count });
    state.errors.sort((a, b) => b.at - a.at);
    state.errors.length = Math.min(state.errors.length, ERRORS_MAX);
  }

  // --- rendering ---

  function render() {
    renderMachine();
    renderSlots();
    renderPulls();
    renderHistory();
    renderErrors();
  }

  function renderMachine() {
    const hw = state.hardware;
    const rows = [];
    if (hw) {
      rows.push(['OS', `${hw.os} (${hw.arch})`]);
      rows.push(['CPU', `${hw.cpu_model || 'unknown'}: ${hw.cpu_cores} cores, ${hw.cpu_threads} threads`]);
      rows.push(['RAM', `${bytes(hw.ram_total)} (${bytes(hw.ram_available)} available)`]);
      if (hw.apple_chip) rows.push(['Chip', hw.apple_chip]);
      for (const gpu of hw.gpus || []) {
        const vram = `${bytes(gpu.vram_total - gpu.vram_free)} / ${bytes(gpu.vram_total)} VRAM in use`;
        rows.push([`GPU ${gpu.index}`, `${gpu.name}: ${vram}${gpu.driver ? `, driver ${gpu.driver}` : ''}`]);
      }
      if (!(hw.gpus || []).length) rows.push(['GPU', 'none']);
    } else {
      rows.push(['Hardware', 'not probed yet']);
    }
    fill($('hardware'), rows.flatMap(([term, value]) => [el('dt', {}, term), el('dd', {}, value)]));
    renderBudget();
  }

  function renderBudget() {
    const budget = state.budget;
    const slots = [...state.slots.values()].filter((s) => s.charged_bytes > 0);
    const used = slots.reduce((sum, s) => sum + s.charged_bytes, 0);
    const total = budget ? budget.total_bytes : 0;
    $('budget-label').textContent = budget ? `${bytes(used)} / ${bytes(total)} (${budget.source})` : '';
    const segments = slots.map((s, i) => {
      const title = `${s.model} (${s.kind}): ${bytes(s.charged_bytes)}`;
      const segment = el('span', { class: `segment c${i % 6}`, title });
      segment.style.width = `${total ? Math.min(100, (100 * s.charged_bytes) / total) : 0}%`;
      return segment;
    });
    fill($('budget-bar'), segments);
    $('budget-bar').dataset.used = String(used);
    $('budget-bar').dataset.total = String(total);
    fill($('budget-legend'), slots.map((s, i) => el('li', {},
      el('span', { class: `swatch c${i % 6}` }), `${s.model} ${bytes(s.charged_bytes)}`)));
  }

  function stageOf(slot) {
    const load = state.loads.get(keyOf(slot));
    if (!load || (slot.state !== 'pending' && slot.state !== 'loading')) {
      return slot.detail ? el('div', { class: 'stage muted' }, slot.detail) : null;
    }
    const pct = typeof load.progress === 'number' ? Math.round(load.progress * 100) : null;
    return el('div', { class: 'stage', 'data-stage': load.stage, title: load.detail || '' },
      load.stage.replace(/_/g, ' '), pct === null ? '' : ` ${pct}%`,
      pct === null ? null : el('progress', { max: 100, value: pct }));
  }

  const TIMERS = new Set(['idle_s', 'expires_in_s']);  // the poll's own countdowns: tick() counts instead
  let shownSlots = '';

  function renderSlots() {
    const slots = [...state.slots.values()].sort((a, b) => keyOf(a).localeCompare(keyOf(b)));
    // Rows are rebuilt only when what they show changed, so a click is never lost to a rebuild under it.
    const shown = JSON.stringify(slots.map((s) => [s, state.loads.get(keyOf(s)), state.queues.get(keyOf(s))]),
      (name, value) => (TIMERS.has(name) ? undefined : value));
    if (shown === shownSlots) return tick();
    shownSlots = shown;
    fill($('slots').tBodies[0], slots.map((slot) => {
      const queue = state.queues.get(keyOf(slot));
      const waiting = queue ? queue.queued : slot.waiting;
      return el('tr', { 'data-model': slot.model, 'data-kind': slot.kind, 'data-state': slot.state },
        el('td', {}, el('strong', {}, slot.model), ` ${slot.kind}`,
          slot.pinned ? el('span', { class: 'badge' }, 'pinned') : null,
          el('div', { class: 'muted' }, [slot.engine, slot.threads && `${slot.threads} threads`,
            slot.ctx_size && `ctx ${slot.ctx_size}`].filter(Boolean).join(', '))),
        el('td', {}, el('span', { class: `pill state-${slot.state}` }, slot.state), stageOf(slot)),
        el('td', {}, `${bytes(slot.estimate_bytes)} / ${bytes(slot.measured_bytes)} / ${bytes(slot.charged_bytes)}`),
        el('td', { class: 'idle' }),
        el('td', { class: 'expiry' }),
        el('td', {}, String(waiting)),
        el('td', {}, slot.parallel ? `${slot.inflight} / ${slot.parallel}` : String(slot.inflight)),
        el('td', { class: 'row-actions' },
          slot.pinned ? null : button('pin', 'Pin', () => load(slot.model, slot.kind, true)),
          button('unload', 'Unload', () => unload(slot.model, slot.kind))));
    }));
    show($('slots-empty'), slots.length === 0);
    tick();
  }

  // Idle time and keep-alive count every second without rebuilding the rows (a click in progress survives).
  function tick() {
    const now = serverNow();
    for (const row of $('slots').tBodies[0].rows) {
      const slot = state.slots.get(`${row.dataset.model}|${row.dataset.kind}`);
      if (!slot) continue;
      const idle = slot.state === 'ready' && slot.inflight === 0;
      const busy = slot.inflight ? 'busy' : '—';
      row.querySelector('.idle').textContent = idle ? duration(now - slot.last_used_at) : busy;
      let expiry = '—';
      if (slot.pinned) expiry = 'pinned';
      else if (slot.expires_at) expiry = `unloads in ${duration(slot.expires_at - now)}`;
      else if (slot.keep_alive_s === null && slot.state === 'ready') expiry = 'until evicted';
      else if (slot.state === 'ready') expiry = `${duration(slot.keep_alive_s)} after use`;
      row.querySelector('.expiry').textContent = expiry;
    }
    $('uptime').textContent = state.startedAt ? `up ${duration(now - state.startedAt)}` : '';
  }

  function renderPulls() {
    const pulls = [...state.pulls.values()].sort((a, b) => b.started_at - a.started_at).slice(0, 10);
    fill($('pulls'), pulls.map((p) => {
      const pct = p.total_bytes ? Math.floor((100 * p.done_bytes) / p.total_bytes) : null;
      return el('li', { 'data-pull': p.pull_id, 'data-state': p.state },
        el('strong', {}, p.name || p.model), ' ', el('span', { class: `pill pull-${p.state}` }, p.state),
        p.total_bytes ? ` ${bytes(p.done_bytes)} / ${bytes(p.total_bytes)}` : '',
        p.bytes_per_s && !ENDED.has(p.state) ? ` at ${bytes(p.bytes_per_s)}/s` : '',
        pct === null || ENDED.has(p.state) ? null : el('progress', { max: 100, value: pct }),
        p.error ? el('div', { class: 'bad-text' }, p.error) : null);
    }));
    show($('pulls-empty'), !pulls.some((p) => !ENDED.has(p.state)));
  }

  function renderHistory() {
    fill($('history').tBodies[0], state.history.map((h) => el('tr', { 'data-model': h.model, 'data-to': h.to },
      el('td', {}, clock(h.at)), el('td', {}, `${h.model} (${h.kind})`),
      el('td', { title: h.detail || '' }, `${h.from} → ${h.to}`),
      el('td', { class: 'took' }, h.took === null ? '' : `${h.took.toFixed(2)}s`))));
  }

  function renderErrors() {
    fill($('errors'), state.errors.map((e) => el('li', {},
      el('span', { class: 'muted' }, clock(e.at)), ' ', el('strong', {}, e.label), ` ${e.severity}`,
      e.count > 1 ? ` ×${e.count}` : '', el('div', { class: 'bad-text' }, e.message))));
    show($('errors-empty'), state.errors.length === 0);
  }

  // --- actions: fire and forget; the stream shows the progress ---

  function notice(text, bad) {
    $('notice').textContent = text;
    $('notice').className = bad ? 'bad-text' : 'muted';
  }

  async function load(model, kind, pin) {
    notice(`loading ${model}…`);
    try {
      const body = await (await api('POST', '/lf/model/switch', { model, kind, pin })).json();
      notice(`${body.model} ready in ${body.load_s}s`);
    } catch (err) {
      notice(`${model}: ${err.message}`, true);
    }
  }

  async function unload(model, kind) {
    try {
      const body = await (await api('POST', '/lf/model/unload', { model, kind })).json();
      notice(body.unloaded.length ? `unloading ${body.unloaded.join(', ')}` : `${model} was not loaded`);
    } catch (err) {
      notice(`${model}: ${err.message}`, true);
    }
  }

  async function pull(model) {
    notice(`pulling ${model}…`);
    try {
      // keep: the pull goes on if this page is closed; its progress also comes as download events.
      const resp = await api('POST', '/lf/model/pull', { model, keep: true });
      await readEvents(resp.body, guarded((name, data) => {
        if (name === 'download') { applyPull(data); renderPulls(); }
        if (name === 'error') notice(`${model}: ${data.error.message}`, true);
        if (name === 'done') notice(`${data.model.name} is installed`);
      }));
    } catch (err) {
      notice(`${model}: ${err.message}`, true);
    }
  }

  function picked() { return [$('model-pick').value, $('kind-pick').value || 'chat']; }

  $('load-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const [model, kind] = picked();
    if (model) load(model, kind, false);
  });
  $('load-pinned').addEventListener('click', () => {
    const [model, kind] = picked();
    if (model) load(model, kind, true);
  });
  $('pull-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const name = $('pull-name').value.trim();
    if (name) { pull(name); $('pull-name').value = ''; }
  });
  $('model-pick').addEventListener('change', fillKinds);

  function fillKinds() {
    const entry = state.models.find((m) => m.name === $('model-pick').value);
    const kinds = entry && entry.kinds.length ? entry.kinds : ['chat'];
    fill($('kind-pick'), kinds.map((k) => el('option', { value: k }, k)));
  }

  // --- polled panels: hidden while their endpoint is not there (404) ---

  async function refreshModels() {
    try {
      const body = await (await api('GET', '/lf/model/list', undefined, false)).json();
      const chosen = $('model-pick').value;
      state.models = body.models;
      fill($('model-pick'), body.models.map((m) => el('option', { value: m.name }, m.name)));
      if (body.models.some((m) => m.name === chosen)) $('model-pick').value = chosen;
      fillKinds();
    } catch (err) {
      if (err.status !== 401) notice(`model list: ${err.message}`, true);
    }
  }

  // Leases, measurements and expiry times change without an event on the stream: a poll brings them, taken for
  // each slot the poll saw in the same load and state as the stream last did (so it never undoes a transition).
  async function refreshStatus() {
    const body = await (await api('GET', '/lf/status', undefined, false)).json();
    state.budget = body.budget;
    for (const fresh of body.slots) {
      const key = keyOf(fresh);
      const ours = state.slots.get(key);
      if (ours && ours.generation === fresh.generation && ours.state === fresh.state) {
        state.slots.set(key, fresh);
        state.queues.delete(key);
      }
    }
    renderSlots();
    renderBudget();
  }

  async function refreshRequests() {
    const body = await (await api('GET', '/lf/requests?limit=200', undefined, false)).json();
    const now = serverNow();
    const recent = body.requests.filter((r) => now - r.at <= 60);
    const failed = recent.filter((r) => r.status >= 400 || r.error);
    $('rates').textContent = `${recent.length} requests and ${failed.length} errors in the last minute`;
    show($('requests-empty'), body.requests.length === 0);
    fill($('requests').tBodies[0], body.requests.slice(0, 50).map((r) => {
      const t = r.timings_ms || {};
      const tokens = r.tokens || {};
      return el('tr', { 'data-status': r.status, class: r.status >= 400 || r.error ? 'bad-row' : '' },
        el('td', {}, clock(r.at)),
        el('td', { title: r.dialect || '' }, `${r.method} ${r.route}${r.stream ? ' (stream)' : ''}`),
        el('td', {}, r.model || '—'), el('td', { title: r.error || '' }, `${r.status} ${r.outcome || ''}`),
        el('td', {}, ms(t.queue)), el('td', {}, ms(t.load)), el('td', {}, ms(t.first_token)), el('td', {}, ms(t.total)),
        el('td', {}, tokens.prompt == null ? '—' : `${tokens.prompt} → ${tokens.completion ?? '—'}`
          + (tokens.per_s ? ` (${tokens.per_s}/s)` : '')));
    }));
  }

  async function refreshLogs() {
    const body = await (await api('GET', '/lf/logs', undefined, false)).json();
    const pick = $('log-pick');
    const chosen = pick.value;
    const names = body.logs.map((l) => l.name);
    if (names.join('\n') !== [...pick.options].map((o) => o.value).join('\n')) {
      fill(pick, body.logs.map((l) => el('option', { value: l.name }, `${l.name} (${bytes(l.size_bytes)})`)));
      pick.value = names.includes(chosen) ? chosen : (names.find((n) => n.startsWith('gateway')) || names[0] || '');
    }
    if (!pick.value) return;
    const path = `/lf/logs/${encodeURIComponent(pick.value)}?lines=200`;
    const text = await (await api('GET', path, undefined, false)).text();
    const tail = $('log-tail');
    const atBottom = tail.scrollTop + tail.clientHeight >= tail.scrollHeight - 4;
    tail.textContent = text;
    if (atBottom) tail.scrollTop = tail.scrollHeight;
  }
  $('log-pick').addEventListener('change', () => refreshLogs().catch(() => {}));

  // Every `ms`. A panel shows while its endpoint answers: a 404 (not in this gateway) hides it for good, a 401 or
  // 403 (no key yet, or one out of scope) until a round succeeds.
  function poll(fn, ms, panel) {
    const run = async () => {
      if (document.hidden) return setTimeout(run, ms);  // a tab nobody looks at asks for nothing
      try {
        await fn();
        if (panel) show($(panel), true);
      } catch (err) {
        if (panel && err.status) show($(panel), false);
        if (err.status === 404) return;
      }
      setTimeout(run, ms);
    };
    run();
  }

  show($('forget-key'), Boolean(sessionStorage.getItem(KEY)));
  show($('requests-panel'), false);
  show($('logs-panel'), false);
  render();
  refreshModels();
  follow();
  poll(refreshStatus, POLL.status);
  poll(refreshRequests, POLL.requests, 'requests-panel');
  poll(refreshLogs, POLL.logs, 'logs-panel');
  setInterval(tick, 1000);
})();
