// The gateway: metrics at a glance (from /metrics, with rates between two readings), its
// listeners, its configuration (editable: a PUT applies what can change at run time and
// names the key that cannot), and the Bootstrap-Server's configurations when enabled.

import { call, escape } from './api.js';

const POLL_MS = 5000;

// Prometheus text → Map(name → summed value) of the families shown (labels summed).
function parseMetrics(text) {
  const sums = new Map();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const v = Number(m[3]);
    if (!Number.isFinite(v)) continue;
    sums.set(m[1], (sums.get(m[1]) || 0) + v);
  }
  return sums;
}

// (label, metric, rate?) — a rate is per second between the last two readings.
const GLANCE = [
  ['Devices', 'lwm2m_endpoints', false],
  ['Registrations /s', 'lwm2m_registrations_total', true],
  ['Updates /s', 'lwm2m_updates_total', true],
  ['Notifications /s', 'lwm2m_notifications_total', true],
  ['Commands /s', 'lwm2m_commands_total', true],
  ['Datagrams in /s', 'lwm2m_datagrams_in_total', true],
  ['Datagrams out /s', 'lwm2m_datagrams_out_total', true],
  ['MQTT published /s', 'lwm2m_mqtt_published_total', true],
  ['DTLS sessions', 'lwm2m_dtls_sessions', false],
  ['MQTT connections up', 'lwm2m_mqtt_connections_up', false],
  ['Datagrams dropped', 'lwm2m_datagrams_dropped_total', false],
  ['MQTT dropped', 'lwm2m_mqtt_dropped_total', false],
  ['Mailbox dropped', 'lwm2m_mailbox_dropped_total', false],
  ['Shed (congestion)', 'lwm2m_shed_total', false],
  ['Requests refused', 'lwm2m_requests_refused_total', false],
  ['Resident memory', 'process_resident_memory_bytes', false],
];

function fmt(v, name) {
  if (v === undefined) return '–';
  if (name.endsWith('_bytes')) return `${(v / 1048576).toFixed(1)} MiB`;
  if (!Number.isInteger(v)) return v.toFixed(1);
  return v.toLocaleString();
}

export function gatewayPage(view) {
  view.innerHTML = `
    <h1>Gateway</h1>
    <section class="card"><h2>At a glance</h2><div id="glance" class="stats"></div>
      <p class="muted">From <a href="/metrics" target="_blank">/metrics</a>, every ${POLL_MS / 1000} s.</p></section>
    <div class="grid2">
      <section class="card"><h2>Listeners</h2><table id="listeners">
        <thead><tr><th>Type</th><th>Name</th><th>Bind</th><th>Max connections</th><th>Max conn rate</th></tr></thead><tbody></tbody></table>
        <h2>Bootstrap-Server</h2><div id="bootstrap" class="muted">…</div></section>
      <section class="card"><h2>Configuration</h2>
        <p class="muted">Edit and save: what can change at run time is applied at once (lifetimes, auto_observe,
          translators, listener limits, …); a key that cannot is refused, named. Changes last until the
          gateway restarts unless the configuration file says the same.</p>
        <textarea id="config" class="config" spellcheck="false"></textarea>
        <div class="toolbar"><button id="config-save" type="button">Save</button>
          <button id="config-reload" type="button" class="light">Reload</button><span id="config-status"></span></div>
      </section>
    </div>`;
  const q = (s) => view.querySelector(s);
  let last = null;
  let alive = true;

  async function metrics() {
    let text;
    try {
      text = await call('/metrics');
    } catch (e) {
      q('#glance').textContent = e.message;
      return;
    }
    if (!alive) return;
    const now = { at: Date.now(), m: parseMetrics(text) };
    q('#glance').innerHTML = GLANCE.map(([label, name, rate]) => {
      let v = now.m.get(name);
      if (rate) {
        v = last && v !== undefined && last.m.has(name) ? Math.max(0, (v - last.m.get(name)) / ((now.at - last.at) / 1000)) : undefined;
      }
      return `<div class="stat" data-metric="${name}"><div class="v">${fmt(v, name)}</div><div class="k">${escape(label)}</div></div>`;
    }).join('');
    last = now;
  }

  function listeners(cfg) {
    q('#listeners tbody').innerHTML = (cfg.listeners || []).map((l) => `<tr>
      <td>${escape(l.type)}</td><td>${escape(l.name)}</td><td class="mono">${escape(l.bind)}</td>
      <td class="num">${escape(l.max_connections)}</td><td class="num">${escape(l.max_conn_rate)}</td></tr>`).join('');
  }

  async function config() {
    try {
      const cfg = await call('');
      if (!alive) return;
      q('#config').value = JSON.stringify(cfg, null, 2);
      listeners(cfg);
    } catch (e) {
      q('#config-status').textContent = e.message;
    }
  }

  async function bootstrap() {
    const el = q('#bootstrap');
    try {
      const r = await call('bootstrap');
      if (!alive) return;
      el.classList.remove('muted');
      el.innerHTML = r.data.length
        ? `<table id="bootstrap-configs"><thead><tr><th>Endpoint</th><th>Servers</th><th>Delete</th></tr></thead><tbody>${r.data.map((b) => `<tr>
            <td>${escape(b.endpoint)}</td>
            <td class="mono">${(b.servers || []).map((s) => `${escape(s.uri)} <span class="muted">${escape(s.security || '')}</span>`).join('<br>')}</td>
            <td class="mono">${escape((b.delete || []).join(' '))}</td></tr>`).join('')}</tbody></table>`
        : 'Enabled, no configuration yet.';
    } catch (e) {
      if (alive) el.textContent = e.status === 404 ? 'Not enabled ([bootstrap] enable).' : e.message;
    }
  }

  q('#config-save').addEventListener('click', async () => {
    const status = q('#config-status');
    status.className = '';
    let body;
    try {
      body = JSON.parse(q('#config').value);
    } catch (e) {
      status.className = 'error';
      status.textContent = `not JSON: ${e.message}`;
      return;
    }
    try {
      const cfg = await call('', { method: 'PUT', body });
      q('#config').value = JSON.stringify(cfg, null, 2);
      listeners(cfg);
      status.className = 'ok';
      status.textContent = 'applied';
    } catch (e) {
      status.className = 'error';
      status.textContent = e.message;
    }
  });
  q('#config-reload').addEventListener('click', config);
  const timer = setInterval(metrics, POLL_MS);
  // A second reading soon after the first, so that rates show at once.
  const first = setTimeout(metrics, 1000);
  metrics();
  config();
  bootstrap();
  return () => {
    alive = false;
    clearInterval(timer);
    clearTimeout(first);
  };
}
