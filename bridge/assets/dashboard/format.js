// Text the page shows in more than one place: device page links, ages, durations, escaped HTML.

import { numberFormat } from './constants.js';

export const deviceHref = (id) => `#/device/${encodeURIComponent(id)}`;

export function formatAge(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

export function formatDuration(ms) {
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 120 && s % 60 !== 0) return `${numberFormat.format(Math.round(s * 10) / 10)} s`;
  if (s < 7200 && s % 3600 !== 0) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}

export function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}
