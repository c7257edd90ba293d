// A device: its objects and instances (from the registration's object list), each
// resource named from the gateway's object definitions, with one-click operations. Every
// command's outcome (from the event stream, matched by reqID) is shown in the results
// column and, for reads and notifications, in the resource's value cell.

import { call, command, escape, events, timeOf } from './api.js';

const definitions = new Map();

async function definition(id) {
  if (!definitions.has(id)) {
    definitions.set(id, call(`objects/${id}`).catch(() => null));
  }
  return definitions.get(id);
}

// "/3/0" "/3" "</3/0>" → [3, 0] / [3]
function parsePath(p) {
  return p.replace(/[<>]/g, '').split(';')[0].split('/').filter(Boolean).map(Number);
}

const NUMERIC = new Set(['Integer', 'Unsigned Integer', 'Float', 'Time']);

function valueInput(res, path) {
  const id = `in-${path}`;
  if (res.type === 'Boolean') {
    return `<select data-input="${path}" id="${id}"><option>true</option><option>false</option></select>`;
  }
  const type = NUMERIC.has(res.type) ? 'number' : 'text';
  const step = res.type === 'Float' ? ' step="any"' : '';
  const hint = res.type === 'Objlnk' ? '3:0' : res.type === 'Opaque' ? 'hex' : res.type;
  return `<input data-input="${path}" id="${id}" type="${type}"${step} placeholder="${escape(hint)}">`;
}

// The command's `type` and `value` for a write of `res` with the text typed.
function typedValue(res, text) {
  switch (res.type) {
    case 'Integer':
    case 'Unsigned Integer':
    case 'Time':
      if (!/^[-+]?\d+$/.test(text.trim())) throw new Error(`${res.name}: an integer is expected`);
      return { type: res.type === 'Unsigned Integer' ? 'Integer' : res.type, value: Number(text) };
    case 'Float':
      if (!Number.isFinite(Number(text)) || text.trim() === '') throw new Error(`${res.name}: a number is expected`);
      return { type: 'Float', value: Number(text) };
    case 'Boolean':
      return { type: 'Boolean', value: text === 'true' };
    default:
      return { type: res.type === 'Corelnk' ? 'String' : res.type, value: text };
  }
}

function resourceRow(res, base) {
  const path = `${base}/${res.id}`;
  const ops = res.operations;
  const b = (op, label, cls = 'light') => `<button type="button" class="${cls}" data-op="${op}" data-path="${path}">${label}</button>`;
  const actions = [];
  if (ops.includes('R')) actions.push(b('read', 'Read'), b('observe', 'Observe'), b('cancel-observe', 'Cancel'));
  if (ops.includes('W')) actions.push(valueInput(res, path), b('write', 'Write'));
  if (ops.includes('E')) actions.push(`<input data-args="${path}" placeholder="args">`, b('execute', 'Execute'));
  actions.push(b('discover', 'Discover'), b('write-attr', 'Attributes'));
  return `<tr data-path="${path}">
    <td class="num">${res.id}</td>
    <td>${escape(res.name)}${res.multiple ? ' <span class="tag">multiple</span>' : ''}</td>
    <td class="muted">${escape(res.type)}</td>
    <td class="muted">${escape(ops)}</td>
    <td class="value" data-value="${path}"></td>
    <td><div class="actions">${actions.join('')}</div></td>
  </tr>`;
}

function instanceBlock(def, oid, iid) {
  const base = `/${oid}/${iid}`;
  const rows = def ? def.resources.map((r) => resourceRow(r, base)).join('') : '';
  const b = (op, label, cls = 'light') => `<button type="button" class="${cls}" data-op="${op}" data-path="${base}">${label}</button>`;
  return `<div class="inst" data-instance="${base}">
    <div class="inst-head"><span class="path">${base}</span>
      ${b('read', 'Read')}${b('observe', 'Observe')}${b('cancel-observe', 'Cancel')}${b('discover', 'Discover')}
      ${b('write-attr', 'Attributes')}${b('delete', 'Delete instance', 'danger')}</div>
    ${def ? `<table><thead><tr><th>ID</th><th>Resource</th><th>Type</th><th>Ops</th><th>Value</th><th></th></tr></thead>
      <tbody>${rows}</tbody></table>` : '<p class="muted">No definition of this object: read the instance to see its values.</p>'}
  </div>`;
}

function objectCard(def, oid, instances) {
  const title = def ? `${escape(def.name)} <span class="muted">/${oid}${def.version ? ` v${escape(def.version)}` : ''}</span>` : `Object /${oid}`;
  const b = (op, label) => `<button type="button" class="light" data-op="${op}" data-path="/${oid}">${label}</button>`;
  return `<div class="card obj" data-object="${oid}">
    <div class="inst-head"><h2>${title}</h2>${b('read', 'Read object')}${b('discover', 'Discover')}${b('create', 'Create instance')}</div>
    ${instances.map((iid) => instanceBlock(def, oid, iid)).join('')}
  </div>`;
}

function showValue(view, path, value) {
  const cell = view.querySelector(`[data-value="${CSS.escape(path)}"]`);
  if (cell) {
    cell.textContent = typeof value === 'object' ? JSON.stringify(value) : String(value);
    return;
  }
  // A resource instance (/3/0/7/1): shown in its resource's cell.
  const parts = path.split('/');
  if (parts.length === 5) {
    const res = view.querySelector(`[data-value="${CSS.escape(parts.slice(0, 4).join('/'))}"]`);
    if (res) {
      const items = new Map(JSON.parse(res.dataset.items || '[]'));
      items.set(parts[4], value);
      res.dataset.items = JSON.stringify([...items]);
      res.textContent = [...items].map(([k, v]) => `${k}: ${v}`).join(', ');
    }
  }
}

function attrDialog(view, path) {
  return new Promise((resolve) => {
    const d = document.createElement('dialog');
    const field = (k, label) => `<label>${label}<input name="${k}" type="number" step="any"></label>`;
    d.innerHTML = `<form method="dialog"><strong>Write-Attributes ${escape(path)}</strong>
      ${field('pmin', 'pmin (s)')}${field('pmax', 'pmax (s)')}${field('gt', 'gt')}${field('lt', 'lt')}${field('st', 'st')}
      <p class="muted">Empty fields are left out.</p>
      <div class="buttons"><button value="cancel" class="light">Cancel</button><button value="ok">Write</button></div></form>`;
    view.append(d);
    d.addEventListener('close', () => {
      const data = { path };
      for (const input of d.querySelectorAll('input')) {
        if (input.value !== '') data[input.name] = Number(input.value);
      }
      d.remove();
      resolve(d.returnValue === 'ok' ? data : null);
    });
    d.showModal();
  });
}

function createDialog(view, oid, def) {
  return new Promise((resolve) => {
    const d = document.createElement('dialog');
    const writable = def ? def.resources.filter((r) => r.operations.includes('W') && r.type !== 'None') : [];
    d.innerHTML = `<form method="dialog"><strong>Create an instance of /${oid}</strong>
      <label>Instance ID<input name="iid" type="number" min="0" max="65534" required></label>
      ${writable.map((r) => `<label>${escape(r.name)} (${r.id})${valueInput(r, `c-${r.id}`)}</label>`).join('')}
      <p class="muted">Empty fields are left out.</p>
      <p class="error" data-error></p>
      <div class="buttons"><button value="cancel" class="light" formnovalidate>Cancel</button><button value="ok">Create</button></div></form>`;
    view.append(d);
    d.addEventListener('close', () => {
      d.remove();
      if (d.returnValue !== 'ok') return resolve(null);
      const iid = d.querySelector('[name=iid]').value;
      const content = [];
      try {
        for (const r of writable) {
          const v = d.querySelector(`[data-input="c-${r.id}"]`).value;
          if (v !== '') content.push({ path: `${iid}/${r.id}`, ...typedValue(r, v) });
        }
      } catch (e) {
        return resolve({ error: e.message });
      }
      resolve({ basePath: `/${oid}`, content });
    });
    d.showModal();
  });
}

export function devicePage(view, clientid) {
  view.innerHTML = `
    <div class="toolbar"><a href="#/devices">‹ Devices</a><span class="grow"></span>
      <a href="#/events?clientid=${encodeURIComponent(clientid)}">Events of this device</a></div>
    <h1 id="device-name">${escape(clientid)}</h1>
    <p id="device-info" class="muted"></p>
    <p id="device-error" class="error"></p>
    <div class="layout">
      <div id="objects"></div>
      <section class="card results"><h2>Results</h2><div id="results"><p class="muted">Results of the commands sent appear here.</p></div></section>
    </div>`;
  const q = (s) => view.querySelector(s);
  let endpoint = clientid;
  let alive = true;
  let shownList = null;
  const observed = new Set();

  function result(op, path) {
    const el = document.createElement('div');
    el.className = 'result';
    el.dataset.op = op;
    el.dataset.path = path;
    el.innerHTML = `<div><strong>${escape(op)}</strong> <code>${escape(path)}</code> <span class="muted">${timeOf(Date.now())}</span></div>
      <div class="outcome pending">sent, waiting for the device…</div>`;
    const list = q('#results');
    if (list.querySelector('p.muted')) list.replaceChildren();
    list.prepend(el);
    while (list.children.length > 100) list.lastChild.remove();
    return el;
  }

  function outcome(el, e) {
    const d = (e.message && e.message.data) || {};
    const code = d.code || '';
    const ok = code.startsWith('2.');
    const out = el.querySelector('.outcome');
    out.className = `outcome ${ok ? 'ok' : 'error'}`;
    out.dataset.code = code;
    let text = `${code} ${d.codeMsg || ''}`;
    if (d.location) text += ` → ${d.location}`;
    out.textContent = text;
    if (d.content !== undefined) {
      const pre = document.createElement('pre');
      pre.textContent = JSON.stringify(d.content, null, 1);
      out.append(pre);
    }
    showContent(d);
  }

  function showContent(d) {
    if (!Array.isArray(d.content)) return;
    for (const item of d.content) {
      if (item && typeof item === 'object' && item.path !== undefined && 'value' in item) {
        showValue(view, item.path, item.value);
      }
    }
  }

  function failed(op, path, message) {
    const out = result(op, path).querySelector('.outcome');
    out.className = 'outcome error';
    out.textContent = message;
  }

  async function send(op, path, data) {
    const el = result(op, path);
    try {
      await command(endpoint, op, data, (e) => outcome(el, e));
      if (op === 'observe') observed.add(path);
      if (op === 'cancel-observe') observed.delete(path);
      for (const c of view.querySelectorAll('td.value')) c.classList.toggle('observed', observed.has(c.dataset.value));
    } catch (e) {
      const out = el.querySelector('.outcome');
      out.className = 'outcome error';
      out.textContent = e.message;
    }
  }


  async function onClick(ev) {
    const btn = ev.target.closest('button[data-op]');
    if (!btn) return;
    const { op, path } = btn.dataset;
    const [oid] = parsePath(path);
    const def = await definition(oid);
    switch (op) {
      case 'read':
      case 'observe':
      case 'cancel-observe':
      case 'discover':
      case 'delete':
        if (op === 'delete' && !window.confirm(`Delete instance ${path}?`)) return;
        return send(op, path, { path });
      case 'write': {
        const res = def.resources.find((r) => r.id === parsePath(path)[2]);
        const input = view.querySelector(`[data-input="${CSS.escape(path)}"]`);
        let typed;
        try {
          typed = typedValue(res, input.value);
        } catch (e) {
          return failed(op, path, e.message);
        }
        return send(op, path, { path, ...typed });
      }
      case 'execute': {
        const args = view.querySelector(`[data-args="${CSS.escape(path)}"]`).value;
        return send(op, path, args ? { path, args } : { path });
      }
      case 'write-attr': {
        const data = await attrDialog(view, path);
        return data && send(op, path, data);
      }
      case 'create': {
        const data = await createDialog(view, oid, def);
        if (!data) return undefined;
        if (data.error) return failed(op, path, data.error);
        return send(op, path, data);
      }
      default:
        return undefined;
    }
  }

  async function load() {
    let c;
    try {
      c = await call(`clients/${encodeURIComponent(clientid)}`);
    } catch (e) {
      q('#device-error').textContent = e.status === 404 ? 'This device is not registered (any more).' : e.message;
      return;
    }
    if (!alive) return;
    endpoint = c.endpoint_name;
    q('#device-name').textContent = c.endpoint_name;
    q('#device-info').textContent = `${c.ip_address}:${c.port} · LwM2M ${c.proto_ver || '?'} · binding ${c.binding} · lifetime ${c.lifetime} s${c.queue_mode ? ' · queue mode' : ''}${c.dtls ? ' · DTLS' : ''} · registered ${c.connected_at}`;
    const objects = new Map();
    for (const p of c.object_list) {
      const [oid, iid] = parsePath(p);
      if (oid === undefined || Number.isNaN(oid)) continue;
      if (!objects.has(oid)) objects.set(oid, []);
      if (iid !== undefined && !Number.isNaN(iid)) objects.get(oid).push(iid);
    }
    const list = c.object_list.join(',');
    if (list === shownList) return;
    shownList = list;
    const ids = [...objects.keys()].sort((a, b) => a - b);
    const defs = await Promise.all(ids.map(definition));
    if (!alive) return;
    q('#objects').innerHTML = ids.map((oid, i) => objectCard(defs[i], oid, objects.get(oid))).join('')
      || '<p class="muted">The device registered no objects.</p>';
  }

  view.addEventListener('click', onClick);
  const off = events.on((e) => {
    if (e.clientid !== endpoint) return;
    if (e.msgType === 'notify') showContent((e.message && e.message.data) || {});
    if (e.msgType === 'update') load();
    if (e.msgType === 'deregister') q('#device-error').textContent = `Deregistered (${(e.message.data || {}).reason || ''}).`;
  });
  load();
  return () => {
    alive = false;
    off();
  };
}
