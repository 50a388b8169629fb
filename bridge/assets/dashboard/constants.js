// Constants of the dashboard (every in-page buffer has its bound here), the transports to try,
// and the number and time formats.

import { TRANSPORTS } from '/v1/sdk/edgewatch.js';

export const SPARK_POINTS = 60; // values per metric's sparkline
export const STREAM_MAX_ITEMS = 200; // lines in the stream panel
export const STATUS_HISTORY_MAX = 50; // status changes kept per device
export const PENDING_MAX = 5000; // live readings held while a chart's history loads
export const RAW_PAGE = 5000; // readings per GET /v1/readings page
export const RAW_MAX_POINTS = 20_000; // raw readings one chart load keeps; beyond, rollups are shown
export const SERIES_MAX_POINTS = 50_000; // points (history + live) one chart series holds
export const REJECTS_SHOWN = 20; // rejects listed on a device page
export const RAW_MAX_RANGE_MS = 3_600_000; // ranges up to this are raw readings; longer ones rollups
export const DEFAULT_RANGE_MS = 3_600_000;
export const ROLLUP_STEPS_MS = [1000, 5000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000];
export const ROLLUP_BUCKETS = 360; // at most about this many buckets per range
export const UNITS_PER_PLOT = 2; // a plot has a left and a right y-axis, one unit each
export const COMPACT_PLOTS = 2; // plots of the list view's chart; the device page shows all
export const DEVICES_REFRESH_MS = 3000;
export const UPLINKS_REFRESH_MS = 5000;
export const REJECTS_REFRESH_MS = 5000;
export const POLL_FAILURES_LOST = 2; // failed device polls in a row before the page says the hub is gone
export const PALETTE = ['#2f7ed8', '#e8590c', '#2b8a3e', '#c2255c', '#7048e8', '#0c8599', '#b08800', '#5c940d', '#d6336c', '#1098ad', '#f08c00', '#495057'];
export const TRANSPORT_LABELS = { websocket: 'WebSocket', sse: 'SSE', poll: 'Long polling' };
export const STATUS_RANK = { online: 0, stale: 1, offline: 2, unknown: 3 };
export const SOURCE_TEXT = { status: 'from its status topic', readings: 'from its readings', none: '' };
export const AXIS_FONT = '12px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
export const AXIS_LABEL_FONT = 'bold 12px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';

export const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const forced = params.get('transport');
export const transports = TRANSPORTS.includes(forced) ? [forced] : TRANSPORTS;
export const timeZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
export const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 3 });
export const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'short', timeStyle: 'medium' });
export const clockFormat = new Intl.DateTimeFormat(undefined, { timeStyle: 'medium' });
// Axis labels: 24-hour clock, the shortest unambiguous label (room for more ticks on a phone).
export const hmsFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' });
export const hmFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
export const dayFormat = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
