// The live event stream: everything the gateway publishes (registrations, updates,
// de-registrations, notifications, Sends, command outcomes), newest first, filterable by
// device and by message type.

import { RECENT as KEEP, escape, events, recent as kept, timeOf } from './api.js';

function summary(e) {
  const d = (e.message && e.message.data) || {};
  if (e.msgType === 'register' || e.msgType === 'update') {
    return `lt ${d.lt ?? '?'}${d.lwm2m ? ` · LwM2M ${d.lwm2m}` : ''}${d.b ? ` · ${d.b}` : ''}${d.objectList ? ` · ${d.objectList.length} objects` : ''}`;
  }
  if (e.msgType === 'deregister') return d.reason || '';
  if (d.code) {
    const content = d.content === undefined ? '' : ` ${JSON.stringify(d.content)}`;
    return `${d.reqPath || ''} ${d.code} ${d.codeMsg || ''}${content}`;
  }
  return JSON.stringify(d);
}

export function eventsPage(view, initial) {
  view.innerHTML = `
    <h1>Events</h1>
    <div class="toolbar">
      <input id="event-filter" type="search" placeholder="Device (endpoint name)" value="${escape(initial)}" size="26">
      <select id="event-type">
        <option value="">every type</option><option>register</option><option>update</option>
        <option>deregister</option><option>notify</option><option>send</option><option value="response">command outcomes</option>
      </select>
      <label><input id="event-pause" type="checkbox"> pause</label>
      <button id="event-clear" class="light" type="button">Clear</button>
      <span class="grow"></span><span id="event-count" class="muted"></span>
    </div>
    <div class="card events"><table id="events">
      <thead><tr><th>Time</th><th>Device</th><th>Type</th><th>Summary</th><th>Topic</th></tr></thead>
      <tbody></tbody></table></div>`;
  const q = (s) => view.querySelector(s);
  let shown = 0;

  function matches(e) {
    const who = q('#event-filter').value.trim();
    const type = q('#event-type').value;
    if (who && e.lost === undefined && !(e.clientid || '').includes(who)) return false;
    if (type === 'response') return e.message && e.message.reqID !== undefined && e.msgType !== 'notify';
    if (type && e.lost === undefined && e.msgType !== type) return false;
    return true;
  }

  function rowOf(e) {
    const tr = document.createElement('tr');
    tr.className = 'event';
    if (e.lost !== undefined) {
      tr.dataset.msgtype = 'lost';
      tr.innerHTML = `<td>${timeOf(e.ts)}</td><td></td><td><span class="tag lost">lost</span></td>
        <td colspan="2">${e.lost} events skipped: this page read the stream too slowly</td>`;
      return tr;
    }
    tr.dataset.msgtype = e.msgType || 'message';
    tr.dataset.clientid = e.clientid || '';
    const reqId = e.message && e.message.reqID !== undefined ? ` <span class="muted">#${escape(e.message.reqID)}</span>` : '';
    tr.innerHTML = `<td>${timeOf(e.ts)}</td>
      <td>${e.clientid ? `<a href="#/device/${encodeURIComponent(e.clientid)}">${escape(e.clientid)}</a>` : ''}</td>
      <td><span class="tag ${escape(e.msgType || '')}">${escape(e.msgType || 'message')}</span>${reqId}</td>
      <td class="msg mono" title="${escape(JSON.stringify(e.message))}">${escape(summary(e))}</td>
      <td class="muted mono">${escape(e.topic || '')}</td>`;
    return tr;
  }

  function render() {
    const rows = kept.filter(matches).slice(-KEEP).reverse().map(rowOf);
    q('#events tbody').replaceChildren(...rows);
    shown = rows.length;
    count();
  }

  function count() {
    q('#event-count').textContent = `${shown} shown · ${kept.length} kept`;
  }

  // `kept` (the stream's recent events) already holds `e`.
  const off = events.on((e) => {
    if (q('#event-pause').checked || !matches(e)) {
      count();
      return;
    }
    const body = q('#events tbody');
    body.prepend(rowOf(e));
    shown += 1;
    while (body.children.length > KEEP) {
      body.lastChild.remove();
      shown -= 1;
    }
    count();
  });
  q('#event-filter').addEventListener('input', render);
  q('#event-filter').addEventListener('change', render);
  q('#event-type').addEventListener('change', render);
  q('#event-pause').addEventListener('change', () => !q('#event-pause').checked && render());
  q('#event-clear').addEventListener('click', () => {
    kept.length = 0;
    render();
  });
  render();
  return off;
}
