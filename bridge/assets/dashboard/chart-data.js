// The charts' point arrays: rollup steps, sorted inserts, trimming, merging the series of one
// plot onto one x array, CSV fields.

import { ROLLUP_BUCKETS, ROLLUP_STEPS_MS } from './constants.js';

export function niceStep(rangeMs) {
  const want = rangeMs / ROLLUP_BUCKETS;
  return ROLLUP_STEPS_MS.find((s) => s >= want) ?? ROLLUP_STEPS_MS[ROLLUP_STEPS_MS.length - 1];
}

export function sortByX(s) {
  let sorted = true;
  for (let i = 1; i < s.xs.length && sorted; i++) if (s.xs[i] < s.xs[i - 1]) sorted = false;
  if (sorted) return;
  const order = s.xs.map((_, i) => i).sort((a, b) => s.xs[a] - s.xs[b] || s.seqs[a] - s.seqs[b]);
  s.xs = order.map((i) => s.xs[i]);
  s.ys = order.map((i) => s.ys[i]);
  s.seqs = order.map((i) => s.seqs[i]);
}

/** Adds a raw point keeping x sorted (a late or replayed reading goes into its place). */
export function insertPoint(s, x, y, seq) {
  const n = s.xs.length;
  if (n === 0 || x >= s.xs[n - 1]) {
    s.xs.push(x);
    s.ys.push(y);
    s.seqs.push(seq);
    return;
  }
  let i = n;
  while (i > 0 && s.xs[i - 1] > x) i--;
  s.xs.splice(i, 0, x);
  s.ys.splice(i, 0, y);
  s.seqs.splice(i, 0, seq);
}

export function dropFront(s, n) {
  for (const key of ['xs', 'ys', 'seqs', 'mins', 'maxs', 'counts']) if (s[key].length) s[key].splice(0, n);
  s.historyCount = Math.max(0, s.historyCount - n);
}

export function csvField(v) {
  const s = String(v ?? '');
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/**
 * uPlot wants one x array shared by all series of a plot; ours each have their own sorted
 * timestamps. Merges them in one linear pass into the union of the x values, with `undefined`
 * where a member has no point: uPlot draws straight across those (unlike `null`, a gap).
 * `members`: [{ xs, cols: [ys, ...] }] → [xs, ...cols of each member in order].
 */
export function alignColumns(members) {
  if (members.length === 1) return [members[0].xs.slice(), ...members[0].cols.map((c) => c.slice())];
  const k = members.length;
  const pos = new Array(k).fill(0);
  const xs = [];
  const out = members.map((m) => m.cols.map(() => []));
  for (;;) {
    let x = Infinity;
    for (let i = 0; i < k; i++) {
      const v = members[i].xs[pos[i]];
      if (v < x) x = v;
    }
    if (x === Infinity) break;
    const n = xs.length;
    xs.push(x);
    for (let i = 0; i < k; i++) {
      const m = members[i];
      // Several points of one series at the same x: the last one wins.
      while (m.xs[pos[i]] === x) {
        for (let c = 0; c < m.cols.length; c++) out[i][c][n] = m.cols[c][pos[i]];
        pos[i]++;
      }
      for (let c = 0; c < m.cols.length; c++) if (out[i][c].length <= n) out[i][c][n] = undefined;
    }
  }
  return [xs, ...out.flat()];
}
