import type { Redis } from 'ioredis';
import { runKeys, type SeriesPoint } from '../shared/redis-keys.ts';
import type { EpochSummary } from './coordinator.ts';

export interface RunCurves { run: string; series: SeriesPoint[]; history: EpochSummary[] }

/** The run's curves from Redis; after a resume, the replayed steps' newer points win. */
export async function readCurves(redis: Redis, run: string): Promise<RunCurves> {
  const keys = runKeys(run);
  const [rawSeries, rawHistory] = await Promise.all([redis.lrange(keys.series, 0, -1), redis.lrange(keys.history, 0, -1)]);
  const byStep = new Map<number, SeriesPoint>();
  for (const v of rawSeries) {
    const p = JSON.parse(v) as SeriesPoint;
    byStep.set(p.step, p);
  }
  const byEpoch = new Map<number, EpochSummary>();
  for (const v of rawHistory) {
    const h = JSON.parse(v) as EpochSummary;
    byEpoch.set(h.epoch, h);
  }
  return {
    run, series: [...byStep.values()].sort((a, b) => a.step - b.step), history: [...byEpoch.values()].sort((a, b) => a.epoch - b.epoch),
  };
}

interface Line { name: string; color: string; points: [number, number][]; dots?: boolean }

const W = 460;
const H = 250;
const M = { l: 58, r: 14, t: 28, b: 36 };

function ticks(lo: number, hi: number, n = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((k) => k * mag).find((s) => s >= raw) ?? raw;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

const fmt = (v: number) => (Math.abs(v) >= 1000 ? v.toFixed(0) : Math.abs(v) >= 1 ? String(Number(v.toFixed(2))) : v === 0 ? '0' : v.toPrecision(2));
const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** One panel: axes, ticks, epoch boundaries, one polyline per line. `logY` plots log10 of y. */
function panel(x0: number, y0: number, title: string, xLabel: string, lines: Line[], epochSteps: number[], logY = false): string {
  const all = lines.flatMap((l) => l.points).filter(([, y]) => Number.isFinite(y) && (!logY || y > 0));
  const tx = (y: number) => (logY ? Math.log10(y) : y);
  const xs = all.map(([x]) => x);
  const ys = all.map(([, y]) => tx(y));
  const [xMin, xMax] = xs.length > 0 ? [Math.min(...xs), Math.max(...xs)] : [0, 1];
  let [yMin, yMax] = ys.length > 0 ? [Math.min(...ys), Math.max(...ys)] : [0, 1];
  if (yMax - yMin < 1e-12) { yMin -= 0.5; yMax += 0.5; }
  const sx = (x: number) => x0 + M.l + ((x - xMin) / Math.max(1e-12, xMax - xMin)) * (W - M.l - M.r);
  const sy = (y: number) => y0 + H - M.b - ((tx(y) - yMin) / (yMax - yMin)) * (H - M.t - M.b);
  const parts = [`<g class="panel" data-title="${esc(title)}">`,
    `<text x="${x0 + W / 2}" y="${y0 + 17}" text-anchor="middle" font-weight="bold">${esc(title)}</text>`,
    `<rect x="${x0 + M.l}" y="${y0 + M.t}" width="${W - M.l - M.r}" height="${H - M.t - M.b}" fill="none" stroke="#999"/>`];
  for (const s of epochSteps) {
    if (s < xMin || s > xMax) continue;
    parts.push(`<line class="epoch" x1="${sx(s).toFixed(1)}" x2="${sx(s).toFixed(1)}" y1="${y0 + M.t}" y2="${y0 + H - M.b}" stroke="#ddd"/>`);
  }
  for (const v of ticks(xMin, xMax)) {
    parts.push(`<text x="${sx(v).toFixed(1)}" y="${y0 + H - M.b + 14}" text-anchor="middle" font-size="10">${fmt(v)}</text>`);
  }
  const yTicks = logY ? ticks(Math.floor(yMin), Math.ceil(yMax), Math.max(1, Math.ceil(yMax) - Math.floor(yMin))).map((e) => 10 ** e) : ticks(yMin, yMax);
  for (const v of yTicks) {
    const y = sy(v);
    if (y < y0 + M.t - 1 || y > y0 + H - M.b + 1) continue;
    parts.push(`<text x="${x0 + M.l - 4}" y="${(y + 3).toFixed(1)}" text-anchor="end" font-size="10">${fmt(v)}</text>`);
  }
  parts.push(`<text x="${x0 + W / 2}" y="${y0 + H - 6}" text-anchor="middle" font-size="11">${esc(xLabel)}</text>`);
  lines.forEach((l, i) => {
    const pts = l.points.filter(([, y]) => Number.isFinite(y) && (!logY || y > 0));
    const d = pts.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ');
    parts.push(`<polyline class="curve" data-series="${esc(l.name)}" data-points="${pts.length}" fill="none" stroke="${l.color}" stroke-width="1.5" points="${d}"/>`);
    if (l.dots === true) for (const [x, y] of pts) parts.push(`<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="2.5" fill="${l.color}"/>`);
    parts.push(`<text x="${x0 + M.l + 8}" y="${y0 + M.t + 14 + 13 * i}" font-size="11" fill="${l.color}">${esc(l.name)}</text>`);
  });
  parts.push('</g>');
  return parts.join('\n');
}

/** Four panels against the step (epoch boundaries as grey lines): loss, top-1/top-5 error, learning rate, images/s. */
export function renderSvg(c: RunCurves): string {
  const s = c.series;
  const epochSteps = c.history.map((h) => h.step);
  const pct = (v: number | null) => (v === null ? NaN : 100 * (1 - v));
  const panels = [
    panel(0, 0, 'training loss', 'step', [{ name: 'train loss (moving average)', color: '#1f77b4', points: s.map((p) => [p.step, p.loss ?? NaN]) },
      { name: 'validation loss', color: '#d62728', points: c.history.map((h) => [h.step, h.valLoss]), dots: true }], epochSteps),
    panel(W, 0, 'error (%)', 'step (grey lines: epoch ends)', [
      { name: 'train top-1', color: '#1f77b4', points: s.map((p) => [p.step, pct(p.top1)]) },
      { name: 'train top-5', color: '#aec7e8', points: s.map((p) => [p.step, pct(p.top5)]) },
      { name: 'val top-1', color: '#d62728', points: c.history.map((h) => [h.step, pct(h.valTop1)]), dots: true },
      { name: 'val top-5', color: '#ff9896', points: c.history.map((h) => [h.step, pct(h.valTop5)]), dots: true }], epochSteps),
    panel(0, H, 'learning rate', 'step', [{ name: 'lr', color: '#2ca02c', points: s.map((p) => [p.step, p.lr]) }], epochSteps, true),
    panel(W, H, 'throughput (images/s)', 'step', [{ name: 'images/s', color: '#9467bd', points: s.map((p) => [p.step, p.imagesPerSec ?? NaN]) }], epochSteps),
  ];
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${2 * W}" height="${2 * H}" viewBox="0 0 ${2 * W} ${2 * H}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
${panels.join('\n')}
</svg>
`;
}

/** A self-contained HTML page: the curves and the per-epoch table. */
export function renderHtml(c: RunCurves): string {
  const rows = c.history.map((h) => `<tr><td>${h.epoch + 1}</td><td>${h.step}</td><td>${h.trainLoss?.toFixed(4) ?? '-'}</td><td>${h.valLoss.toFixed(4)}</td>`
    + `<td>${(100 * (1 - h.valTop1)).toFixed(2)}</td><td>${(100 * (1 - h.valTop5)).toFixed(2)}</td><td>${h.lr}</td><td>${h.seconds.toFixed(1)}</td></tr>`).join('\n');
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>vgg-train run ${esc(c.run)}</title>
<style>body{font-family:sans-serif;margin:24px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}</style>
</head><body>
<h1>run ${esc(c.run)}</h1>
<p>${c.series.length} points over ${c.series.at(-1)?.step ?? 0} steps, ${c.history.length} epochs validated.</p>
${renderSvg(c)}
<table><tr><th>epoch</th><th>step</th><th>train loss</th><th>val loss</th><th>val top-1 err %</th><th>val top-5 err %</th><th>lr after</th><th>seconds</th></tr>
${rows}
</table>
</body></html>
`;
}

const BARS = '▁▂▃▄▅▆▇█';

/** A one-line unicode sparkline of `values` (NaN shown as a space). */
export function sparkline(values: number[]): string {
  const finite = values.filter(Number.isFinite);
  if (finite.length === 0) return '';
  const lo = Math.min(...finite);
  const hi = Math.max(...finite);
  return values.map((v) => (Number.isFinite(v) ? BARS[hi > lo ? Math.round(((v - lo) / (hi - lo)) * 7) : 3] : ' ')).join('');
}
