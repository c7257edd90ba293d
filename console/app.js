// The console's shell: the login form, the navigation and the page shown for the
// location's hash (#/devices, #/device/<clientid>, #/events, #/gateway).

import { events, forget, loggedIn, login } from './api.js';
import { devicesPage } from './devices.js';
import { devicePage } from './device.js';
import { eventsPage } from './events.js';
import { gatewayPage } from './gateway.js';

const $ = (id) => document.getElementById(id);
let leave = null;

function showLogin(message = '') {
  if (leave) leave();
  leave = null;
  events.stop();
  $('view').hidden = true;
  $('nav').hidden = true;
  $('logout').hidden = true;
  $('stream-state').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message;
  $('login-secret').focus();
}

function route() {
  if (!loggedIn()) {
    showLogin();
    return;
  }
  $('login').hidden = true;
  $('view').hidden = false;
  $('nav').hidden = false;
  $('logout').hidden = false;
  $('stream-state').hidden = false;
  events.start();
  const hash = location.hash || '#/devices';
  const [where, query = ''] = hash.split('?');
  const [, page, ...rest] = where.split('/');
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.page === page || (page === 'device' && a.dataset.page === 'devices'));
  }
  if (leave) leave();
  const view = $('view');
  view.replaceChildren();
  switch (page) {
    case 'device':
      leave = devicePage(view, decodeURIComponent(rest.join('/')));
      break;
    case 'events':
      leave = eventsPage(view, new URLSearchParams(query).get('clientid') || '');
      break;
    case 'gateway':
      leave = gatewayPage(view);
      break;
    default:
      leave = devicesPage(view);
  }
}

window.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    $('login-error').textContent = '';
    try {
      await login($('login-key').value, $('login-secret').value);
      $('login-secret').value = '';
      route();
    } catch (e) {
      $('login-error').textContent = e.message;
    }
  });
  $('logout').addEventListener('click', () => {
    forget();
    showLogin();
  });
  events.onState((state, detail) => {
    const el = $('stream-state');
    el.className = `stream-state ${state}`;
    el.textContent = state === 'live' ? 'events live' : state === 'down' ? `events down${detail ? `: ${detail}` : ''}` : '';
  });
  window.addEventListener('console:logout', () => showLogin('Session ended: log in again.'));
  window.addEventListener('hashchange', route);
  route();
});
