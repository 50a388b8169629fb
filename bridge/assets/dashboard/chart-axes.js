// The charts' axes and cursor for uPlot: tick labels and steps, label widths, unit scales.

import { AXIS_FONT, RAW_MAX_RANGE_MS, dayFormat, hmFormat, hmsFormat } from './constants.js';

const measureCtx = document.createElement('canvas').getContext('2d');
function textWidth(text, font = AXIS_FONT) {
  measureCtx.font = font;
  return measureCtx.measureText(text).width;
}

const decimalFormats = new Map();
export function formatTick(v, incr) {
  const s = String(+Math.abs(incr).toPrecision(6));
  const d = s.includes('e-') ? Number(s.split('e-')[1]) : (s.split('.')[1]?.length ?? 0);
  const digits = Math.min(6, d);
  if (!decimalFormats.has(digits)) decimalFormats.set(digits, new Intl.NumberFormat(undefined, { minimumFractionDigits: digits, maximumFractionDigits: digits }));
  return decimalFormats.get(digits).format(v);
}

/** The x-axis labels of a range: seconds at 5 min, hours and minutes up to a day, days beyond. */
export function xFormatter(rangeMs) {
  return (u, splits, axisIdx, space, incr) =>
    splits.map((v) => {
      const d = new Date(v * 1000);
      const midnight = d.getHours() === 0 && d.getMinutes() === 0 && d.getSeconds() === 0;
      if (incr >= 86400 || (rangeMs > RAW_MAX_RANGE_MS && midnight)) return dayFormat.format(d);
      return incr < 60 ? hmsFormat.format(d) : hmFormat.format(d);
    });
}

/** Room each x label needs (px), from the widest label this range can show. */
export function xSpace(rangeMs) {
  const sample = new Date(2026, 11, 30, 23, 58, 58);
  const texts = rangeMs <= 600_000 ? [hmsFormat.format(sample)] : [hmFormat.format(sample), dayFormat.format(sample)];
  return Math.ceil(Math.max(...texts.map((t) => textWidth(t)))) + 24;
}

/** x tick steps (s): uPlot's own skip 2 min, which a phone needs at 5 min; beyond a day, whole days. */
export const TIME_TICKS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400];
export const DAY_TICKS = [86_400, 2 * 86_400, 3 * 86_400, 7 * 86_400];

export const unitKey = (unit) => `u:${unit ?? ''}`;
export const unitLabel = (unit) => (unit ? unit : 'no unit');
export const hexAlpha = (hex, a) => `${hex}${Math.round(a * 255).toString(16).padStart(2, '0')}`;

/** uPlot axis `size`: the widest tick label plus ticks and gap, so labels are never cut. */
export function yAxisSize(u, values, axisIdx, cycleNum) {
  const axis = u.axes[axisIdx];
  if (cycleNum > 1 && axis._size) return axis._size; // keep it stable between layout passes
  let w = 0;
  for (const v of values ?? []) w = Math.max(w, textWidth(v));
  return Math.ceil(w) + 14;
}

/** cursor.dataIdx: the index of the point of series `si` nearest to `xValue`. */
export function nearestDefined(u, si, closestIdx, xValue) {
  const ys = u.data[si];
  if (si === 0 || ys[closestIdx] != null) return closestIdx;
  const xs = u.data[0];
  let lo = closestIdx - 1;
  let hi = closestIdx + 1;
  while (lo >= 0 && ys[lo] == null) lo--;
  while (hi < ys.length && ys[hi] == null) hi++;
  const dLo = lo >= 0 ? xValue - xs[lo] : Infinity;
  const dHi = hi < ys.length ? xs[hi] - xValue : Infinity;
  if (dLo === Infinity && dHi === Infinity) return closestIdx;
  return dLo <= dHi ? lo : hi;
}
