// The device list: search by endpoint name, paging, and kept live by the event stream
// (register, update, deregister events reload the page shown) and a periodic refresh.

import { call, escape, events } from './api.js';

const LIMIT = 20;
const REFRESH_MS = 10000;

function ago(iso) {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ago`;
}

function row(c) {
  return `<tr data-clientid="${escape(c.clientid)}">
    <td><a class="device-link" href="#/device/${encodeURIComponent(c.clientid)}">${escape(c.endpoint_name)}</a>
      ${c.clientid !== c.endpoint_name ? `<div class="muted">${escape(c.clientid)}</div>` : ''}</td>
    <td class="mono">${escape(c.ip_address)}:${c.port}</td>
    <td>${escape(c.proto_ver)}</td>
    <td>${escape(c.binding)}</td>
    <td class="num">${c.lifetime} s</td>
    <td title="${escape(c.last_seen_at)}">${ago(c.last_seen_at)}</td>
    <td>${c.queue_mode ? 'yes' : 'no'}</td>
    <td>${c.dtls ? 'yes' : 'no'}</td>
  </tr>`;
}

export function devicesPage(view) {
  view.innerHTML = `
    <h1>Devices</h1>
    <div class="toolbar">
      <input id="device-search" type="search" placeholder="Search endpoint name" size="30">
      <span class="grow muted" id="device-count"></span>
      <button id="device-prev" class="light" type="button">‹ Previous</button>
      <span id="device-page" class="muted"></span>
      <button id="device-next" class="light" type="button">Next ›</button>
    </div>
    <table id="devices">
      <thead><tr><th>Name</th><th>Address</th><th>LwM2M</th><th>Binding</th><th>Lifetime</th>
        <th>Last seen</th><th>Queue mode</th><th>DTLS</th></tr></thead>
      <tbody></tbody>
    </table>
    <p id="device-error" class="error"></p>`;
  const q = (s) => view.querySelector(s);
  let page = 1;
  let hasNext = false;
  let timer = null;
  let pending = null;
  let alive = true;

  async function load() {
    const params = new URLSearchParams({ page, limit: LIMIT });
    const search = q('#device-search').value.trim();
    if (search) params.set('like_endpoint_name', search);
    try {
      const r = await call(`clients?${params}`);
      if (!alive) return;
      if (!r.data.length && page > 1) {
        page -= 1;
        load();
        return;
      }
      q('#devices tbody').innerHTML = r.data.length
        ? r.data.map(row).join('')
        : `<tr><td colspan="8" class="muted">No device${search ? ' matches' : ' registered'}.</td></tr>`;
      hasNext = r.meta.hasnext;
      q('#device-count').textContent = `${r.meta.count} device${r.meta.count === 1 ? '' : 's'}`;
      q('#device-page').textContent = `page ${page}`;
      q('#device-prev').disabled = page <= 1;
      q('#device-next').disabled = !hasNext;
      q('#device-error').textContent = '';
    } catch (e) {
      if (alive) q('#device-error').textContent = e.message;
    }
  }

  // Events come in bursts (a fleet registering): one reload for each burst.
  function soon() {
    if (pending) return;
    pending = setTimeout(() => {
      pending = null;
      load();
    }, 300);
  }

  for (const ev of ['input', 'change']) {
    q('#device-search').addEventListener(ev, () => {
      page = 1;
      soon();
    });
  }
  q('#device-prev').addEventListener('click', () => {
    page = Math.max(1, page - 1);
    load();
  });
  q('#device-next').addEventListener('click', () => {
    if (hasNext) page += 1;
    load();
  });
  const off = events.on((e) => {
    if (['register', 'update', 'deregister'].includes(e.msgType)) soon();
  });
  timer = setInterval(load, REFRESH_MS);
  load();
  return () => {
    alive = false;
    off();
    clearInterval(timer);
    clearTimeout(pending);
  };
}
