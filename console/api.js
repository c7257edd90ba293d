// The management API as the console uses it: credentials kept in sessionStorage and sent
// as HTTP basic auth, JSON calls, the live event stream (read with fetch, since
// EventSource cannot send credentials) and commands matched with their outcomes.

const GW = '/api/v5/gateways/lwm2m';
const AUTH_KEY = 'lwm2m-console.auth';

export class Unauthorized extends Error {}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function loggedIn() {
  return sessionStorage.getItem(AUTH_KEY) !== null;
}

function basic(key, secret) {
  const bytes = new TextEncoder().encode(`${key}:${secret}`);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

export function forget() {
  sessionStorage.removeItem(AUTH_KEY);
}

// Every call carries its credentials itself and omits the browser's: a 401 then never
// opens the browser's own login prompt (Fetch: no prompt without credentials mode).
const OMIT = 'omit';

function headers(extra) {
  return { Authorization: `Basic ${sessionStorage.getItem(AUTH_KEY) || ''}`, ...extra };
}

// Any 401 ends the session: the page goes back to the login form.
function unauthorized() {
  forget();
  window.dispatchEvent(new Event('console:logout'));
  return new Unauthorized('credentials refused');
}

// A call of the API: the parsed JSON answer, the text for non-JSON answers, null for 204.
export async function call(path, { method = 'GET', body } = {}) {
  const init = { method, credentials: OMIT, headers: headers(body === undefined ? {} : { 'Content-Type': 'application/json' }) };
  if (body !== undefined) init.body = typeof body === 'string' ? body : JSON.stringify(body);
  const r = await fetch(path.startsWith('/') ? path : `${GW}/${path}`, init);
  if (r.status === 401) throw unauthorized();
  if (r.status === 204) return null;
  const text = await r.text();
  const json = (r.headers.get('Content-Type') || '').startsWith('application/json');
  if (!r.ok) {
    let msg = text;
    if (json) {
      try { msg = JSON.parse(text).message || text; } catch (_) { /* shown as is */ }
    }
    throw new ApiError(r.status, `${r.status}: ${msg}`);
  }
  return json ? JSON.parse(text) : text;
}

// Checks credentials before keeping them.
export async function login(key, secret) {
  const r = await fetch(GW, {
    credentials: OMIT,
    headers: { Authorization: `Basic ${basic(key, secret)}` },
  });
  if (r.status === 401) {
    let msg = 'wrong key or secret';
    try { msg = (await r.json()).message || msg; } catch (_) { /* default */ }
    throw new Error(msg);
  }
  if (!r.ok) throw new Error(`the API answered ${r.status}`);
  sessionStorage.setItem(AUTH_KEY, basic(key, secret));
}

// The gateway's event stream, one connection shared by every page. Listeners get each
// event as parsed from the SSE `data:` line ({seq, ts, topic, clientid, msgType, message})
// or {lost: N} when the gateway skipped events for this reader.
class EventStream {
  constructor() {
    this.listeners = new Set();
    this.stateListeners = new Set();
    this.state = 'idle';
    this.abort = null;
    this.retry = 1000;
  }

  on(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  onState(fn) {
    this.stateListeners.add(fn);
    fn(this.state);
    return () => this.stateListeners.delete(fn);
  }

  setState(s, detail = '') {
    this.state = s;
    for (const fn of this.stateListeners) fn(s, detail);
  }

  start() {
    if (this.abort) return;
    this.abort = new AbortController();
    this.run(this.abort.signal);
  }

  stop() {
    if (this.abort) this.abort.abort();
    this.abort = null;
    this.setState('idle');
  }

  async run(signal) {
    while (!signal.aborted) {
      try {
        const r = await fetch(`${GW}/events`, { credentials: OMIT, headers: headers({ Accept: 'text/event-stream' }), signal });
        if (r.status === 401) {
          unauthorized();
          return;
        }
        if (!r.ok) throw new Error(`event stream: ${r.status}`);
        this.setState('live');
        this.retry = 1000;
        await this.read(r.body.getReader(), signal);
        this.setState('down', 'closed by the gateway');
      } catch (e) {
        if (signal.aborted) return;
        this.setState('down', e.message);
      }
      await new Promise((ok) => setTimeout(ok, this.retry));
      this.retry = Math.min(this.retry * 2, 15000);
    }
  }

  async read(reader, signal) {
    const decoder = new TextDecoder();
    let buf = '';
    let ev = { event: 'message', data: [] };
    while (!signal.aborted) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        let line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.endsWith('\r')) line = line.slice(0, -1);
        if (line === '') {
          if (ev.data.length) this.dispatch(ev.event, ev.data.join('\n'));
          ev = { event: 'message', data: [] };
        } else if (line.startsWith(':')) {
          // a keep-alive comment
        } else {
          const i = line.indexOf(':');
          const field = i < 0 ? line : line.slice(0, i);
          let val = i < 0 ? '' : line.slice(i + 1);
          if (val.startsWith(' ')) val = val.slice(1);
          if (field === 'data') ev.data.push(val);
          else if (field === 'event') ev.event = val;
        }
      }
    }
  }

  dispatch(event, data) {
    let parsed;
    try {
      parsed = JSON.parse(data);
    } catch (_) {
      return;
    }
    if (event === 'lost') parsed = { lost: parsed.lost, ts: Date.now() };
    for (const fn of this.listeners) {
      try { fn(parsed); } catch (e) { console.error(e); }
    }
  }
}

export const events = new EventStream();

// The last events since the page was opened, for the events page.
export const RECENT = 500;
export const recent = [];
events.on((e) => {
  recent.push(e);
  if (recent.length > RECENT) recent.shift();
});

// Commands: each carries a reqID of the page's own; its outcome is the first event of the
// same device with that reqID that is not a notification.
let seq = 0;
const session = Math.random().toString(36).slice(2, 8);
const waiting = new Map();

events.on((e) => {
  const m = e.message;
  if (!m || m.reqID === undefined || e.msgType === 'notify') return;
  const w = waiting.get(String(m.reqID));
  if (w) {
    waiting.delete(String(m.reqID));
    w(e);
  }
});

// Sends `{reqID, msgType, data}` to `clientid`; `onOutcome` gets the outcome event.
// Returns the reqID.
export async function command(clientid, msgType, data, onOutcome) {
  seq += 1;
  const reqID = `console-${session}-${seq}`;
  waiting.set(reqID, onOutcome);
  try {
    await call(`clients/${encodeURIComponent(clientid)}/command`, {
      method: 'POST',
      body: { reqID, msgType, data },
    });
  } catch (e) {
    waiting.delete(reqID);
    throw e;
  }
  return reqID;
}

export function escape(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

export function timeOf(ms) {
  const d = new Date(ms);
  return d.toLocaleTimeString(undefined, { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
}
