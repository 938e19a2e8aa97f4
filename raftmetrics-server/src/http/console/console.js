// The RaftMetrics web console: sign in with an API token, run a PromQL or /aggregate
// query over a time range, see it as an SVG line chart and a table, and see the cluster's
// workers and partitions.
//
// The token lives in the variable `token` only: never in storage, a cookie or the URL.
// Whatever comes from the API reaches the page through textContent and attributes only.
'use strict';

(() => {
  let token = null;
  let runs = 0;
  let clusterTimer = null;

  const $ = (id) => document.getElementById(id);
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd',
    '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22'];
  // Steps and tick intervals, in seconds.
  const NICE_SECONDS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200,
    10800, 21600, 43200, 86400, 172800, 604800];
  const TARGET_POINTS = 250;
  const MAX_TABLE_ROWS = 5000;

  // ---- DOM helpers (text only, never markup) ----

  function element(tag, attrs = {}, text) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = String(text);
    return el;
  }

  function svgElement(tag, attrs = {}, text) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = String(text);
    return el;
  }

  function addRow(tbody, cells, attrs = {}) {
    const tr = element('tr', attrs);
    for (const cell of cells) tr.append(element('td', {}, cell));
    tbody.append(tr);
    return tr;
  }

  function setStatus(id, text, isError = false) {
    $(id).textContent = text;
    $(id).classList.toggle('error', isError);
  }

  const pad = (n) => String(n).padStart(2, '0');

  // ---- the API ----

  class SignedOut extends Error {}

  async function api(path, params) {
    if (token === null) throw new SignedOut();
    const query = params ? '?' + new URLSearchParams(params).toString() : '';
    const response = await fetch(path + query, {
      headers: { Authorization: 'Bearer ' + token, Accept: 'application/json' },
      cache: 'no-store',
      credentials: 'omit',
    });
    if (response.status === 401) {
      signOut('The token was refused. Sign in again.');
      throw new SignedOut();
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      // Not JSON: the status says what happened.
    }
    if (!response.ok || (body && body.status === 'error')) {
      // The API's error body ({message}) or the Prometheus API's ({error}).
      const message = body && (typeof body.error === 'string' ? body.error : body.message);
      throw new Error(message || `${response.status} ${response.statusText}`);
    }
    return body;
  }

  // ---- signing in and out, views ----

  function signOut(message) {
    token = null;
    stopClusterRefresh();
    $('nav').hidden = true;
    $('query-view').hidden = true;
    $('cluster-view').hidden = true;
    $('login').hidden = false;
    setStatus('login-error', message || '', true);
    $('token').focus();
  }

  $('login').addEventListener('submit', async (event) => {
    event.preventDefault();
    const typed = $('token').value.trim();
    $('token').value = '';
    if (!typed) return;
    token = typed;
    setStatus('login-error', '');
    try {
      await api('/health');
    } catch (error) {
      if (!(error instanceof SignedOut)) signOut('The node did not answer: ' + error.message);
      return;
    }
    $('login').hidden = true;
    $('nav').hidden = false;
    show('query');
  });

  function show(view) {
    $('query-view').hidden = view !== 'query';
    $('cluster-view').hidden = view !== 'cluster';
    $('nav-query').classList.toggle('active', view === 'query');
    $('nav-cluster').classList.toggle('active', view === 'cluster');
    stopClusterRefresh();
    if (view === 'cluster') {
      loadCluster();
      clusterTimer = setInterval(loadCluster, 5000);
    }
  }

  function stopClusterRefresh() {
    if (clusterTimer !== null) clearInterval(clusterTimer);
    clusterTimer = null;
  }

  $('nav-query').addEventListener('click', () => show('query'));
  $('nav-cluster').addEventListener('click', () => show('cluster'));
  $('logout').addEventListener('click', () => signOut('Signed out.'));
  $('refresh').addEventListener('click', () => loadCluster());

  // ---- the query form ----

  const mode = () => ($('mode-aggregate').checked ? 'aggregate' : 'promql');

  for (const id of ['mode-promql', 'mode-aggregate']) {
    $(id).addEventListener('change', () => {
      $('promql-fields').hidden = mode() !== 'promql';
      $('aggregate-fields').hidden = mode() !== 'aggregate';
    });
  }

  const localInput = (ms) => {
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  };

  $('range').addEventListener('change', () => {
    const custom = $('range').value === 'custom';
    $('custom-range').hidden = !custom;
    if (custom && !$('from').value) {
      const now = Math.floor(Date.now() / 1000) * 1000;
      $('from').value = localInput(now - 3600000);
      $('to').value = localInput(now);
    }
  });

  // The time range in ms: a preset ending now, or the custom from/to (local time).
  function timeRange() {
    if ($('range').value !== 'custom') {
      const end = Date.now();
      return { start: end - Number($('range').value) * 1000, end };
    }
    const start = new Date($('from').value).getTime();
    const end = new Date($('to').value).getTime();
    if (!Number.isFinite(start) || !Number.isFinite(end) || start >= end) {
      throw new Error('Custom range: give a From time before the To time.');
    }
    return { start, end };
  }

  function parseDuration(text) {
    const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)?$/.exec(text.trim());
    if (!m) return NaN;
    return Number(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400, w: 604800 }[m[2] || 's'];
  }

  // The step in seconds: as typed, or about TARGET_POINTS points over the range.
  function stepSeconds(range) {
    const typed = $('step').value.trim();
    if (typed) {
      const step = parseDuration(typed);
      if (!(step > 0)) throw new Error('Step: a duration such as 30s, 5m or 1h.');
      return step;
    }
    const raw = (range.end - range.start) / 1000 / TARGET_POINTS;
    return NICE_SECONDS.find((s) => s >= raw) || Math.ceil(raw / 86400) * 86400;
  }

  $('query-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const run = ++runs;
    document.body.dataset.run = run;
    document.body.dataset.state = 'running';
    setStatus('status', 'Running…');
    try {
      const range = timeRange();
      const step = stepSeconds(range);
      const result = mode() === 'promql'
        ? await queryPromql(range, step) : await queryAggregate(range, step);
      if (run !== runs) return;
      result.series.sort((a, b) => labelText(a.labels).localeCompare(labelText(b.labels)));
      drawChart(result.series, result.domain, result.step);
      const shown = fillTable(result.series);
      const points = result.series.reduce((n, s) => n + s.points.length, 0);
      const notes = [`${result.series.length} series, ${points} points, step ${result.step}s`];
      if (shown < points) notes.push(`the table shows the first ${shown} rows`);
      setStatus('status', notes.concat(result.notes).join('; '));
      document.body.dataset.state = 'done';
    } catch (error) {
      if (run !== runs) return;
      document.body.dataset.state = 'error';
      if (!(error instanceof SignedOut)) setStatus('status', error.message, true);
    }
  });

  // `/api/v1/query_range`, its steps aligned to multiples of the step.
  async function queryPromql(range, step) {
    const query = $('promql').value.trim();
    if (!query) throw new Error('Enter a PromQL expression.');
    const start = Math.floor(range.start / 1000 / step) * step;
    const end = Math.floor(range.end / 1000 / step) * step;
    const body = await api('/api/v1/query_range',
      { query, start: String(start), end: String(end), step: String(step) });
    const data = body.data || {};
    if (data.resultType !== 'matrix') throw new Error(`Expected a matrix, got ${data.resultType}.`);
    const series = data.result.map((s) => ({
      labels: s.metric || {},
      points: s.values.map(([t, v]) => [t * 1000, Number(v)]),
    }));
    return { series, step, domain: { start: start * 1000, end: end * 1000 }, notes: body.warnings || [] };
  }

  // `/aggregate` with a window of one step: a series per group and aggregation.
  async function queryAggregate(range, step) {
    const metric = $('metric').value.trim();
    if (!metric) throw new Error('Enter a metric.');
    const aggs = ($('agg').value.trim() || 'avg').split(',').map((a) => a.trim()).filter(Boolean);
    const window = Math.max(1, Math.round(step));
    const iso = (ms) => new Date(ms).toISOString();
    const params = { metric, from: iso(range.start), to: iso(range.end), window: `${window}s`,
      agg: aggs.join(',') };
    if ($('tags').value.trim()) params.tags = $('tags').value.trim();
    if ($('group-by').value.trim()) params.group_by = $('group-by').value.trim();
    const body = await api('/aggregate', params);
    const rows = body.groups
      ? body.groups.map((g) => ({ key: g.key, buckets: g.buckets || [] }))
      : [{ key: {}, buckets: body.buckets || [] }];
    const series = [];
    for (const row of rows) {
      for (const agg of aggs) {
        const labels = { __name__: `${agg}(${metric})` };
        for (const [k, v] of Object.entries(row.key)) labels[k] = v === null ? '' : v;
        const points = row.buckets.map((b) => [Date.parse(b.start), b.aggregations[agg] ?? null]);
        series.push({ labels, points });
      }
    }
    const notes = body.is_partial
      ? [`partial answer: no replica answered for partitions ${body.missing_partitions.join(', ')}`]
      : [];
    return { series, step: window, domain: range, notes };
  }

  function labelText(labels) {
    const rest = Object.keys(labels).filter((k) => k !== '__name__').sort()
      .map((k) => `${k}=${JSON.stringify(String(labels[k]))}`);
    const name = labels.__name__ || '';
    return rest.length ? `${name}{${rest.join(', ')}}` : (name || '{}');
  }

  // ---- the chart ----

  function niceNumber(x) {
    const e = 10 ** Math.floor(Math.log10(x));
    const f = x / e;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * e;
  }

  function formatValue(v) {
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2);
    return String(Number(v.toPrecision(6)));
  }

  function timeLabel(ms, span) {
    const d = new Date(ms);
    const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
    if (span > 2 * 86400000) return `${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hm}`;
    return span < 600000 ? `${hm}:${pad(d.getSeconds())}` : hm;
  }

  function drawChart(series, domain, step) {
    const W = 960, H = 320, L = 64, R = 16, T = 12, B = 28;
    let x0 = domain.start, x1 = domain.end, lo = Infinity, hi = -Infinity;
    for (const s of series) {
      for (const [t, v] of s.points) {
        x0 = Math.min(x0, t);
        x1 = Math.max(x1, t);
        if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
      }
    }
    if (lo > hi) { lo = 0; hi = 1; }
    if (lo === hi) { lo -= 1; hi += 1; }
    const margin = (hi - lo) * 0.05;  // no line on the frame; zero kept as the floor
    lo = lo >= 0 && lo - margin < 0 ? 0 : lo - margin;
    hi += margin;
    const yStep = niceNumber((hi - lo) / 5);
    lo = Math.floor(lo / yStep) * yStep;
    hi = Math.ceil(hi / yStep) * yStep;
    const px = (t) => L + ((t - x0) / (x1 - x0 || 1)) * (W - L - R);
    const py = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);

    const svg = svgElement('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img',
      'aria-label': 'query result chart', 'data-run': runs, 'data-series-count': series.length });
    const axes = svgElement('g', { class: 'axes' });
    for (let i = 0; lo + i * yStep <= hi + yStep / 2; i++) {
      const v = lo + i * yStep;
      axes.append(svgElement('line', { x1: L, x2: W - R, y1: py(v), y2: py(v), class: 'grid' }));
      axes.append(svgElement('text', { x: L - 6, y: py(v) + 4, 'text-anchor': 'end' }, formatValue(v)));
    }
    const span = x1 - x0;
    const xStep = 1000 * (NICE_SECONDS.find((s) => span / (s * 1000) <= 8) || 604800);
    const offset = new Date(x0).getTimezoneOffset() * 60000;  // ticks on local time
    for (let t = Math.ceil((x0 - offset) / xStep) * xStep + offset; t <= x1; t += xStep) {
      axes.append(svgElement('line', { x1: px(t), x2: px(t), y1: T, y2: H - B, class: 'grid' }));
      axes.append(svgElement('text', { x: px(t), y: H - B + 16, 'text-anchor': 'middle' },
        timeLabel(t, span)));
    }
    axes.append(svgElement('path', { d: `M${L} ${T}V${H - B}H${W - R}`, class: 'axis' }));
    svg.append(axes);

    // A path per series: a new subpath (a gap) wherever a step has no point.
    const gap = 1.5 * step * 1000;
    series.forEach((s, i) => {
      let d = '', previous = null, count = 0;
      for (const [t, v] of s.points) {
        if (!Number.isFinite(v)) { previous = null; continue; }
        const joined = previous !== null && t - previous <= gap;
        d += `${joined ? 'L' : 'M'}${px(t).toFixed(1)} ${py(v).toFixed(1)}${joined ? '' : 'h0'}`;
        previous = t;
        count++;
      }
      const path = svgElement('path', { d, class: 'series', stroke: COLORS[i % COLORS.length],
        'data-series': i, 'data-points': count, 'data-label': labelText(s.labels) });
      path.append(svgElement('title', {}, labelText(s.labels)));
      svg.append(path);
    });
    if (series.length === 0) {
      svg.append(svgElement('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'empty' },
        'No data in this range'));
    }
    $('chart').replaceChildren(svg);

    $('legend').replaceChildren(...series.map((s, i) => {
      const swatch = svgElement('svg', { width: 14, height: 10 });
      swatch.append(svgElement('rect', { y: 3, width: 14, height: 4, fill: COLORS[i % COLORS.length] }));
      const li = element('li', { 'data-series': i });
      li.append(swatch, document.createTextNode(labelText(s.labels)));
      return li;
    }));
  }

  // The table: a row per point, at most MAX_TABLE_ROWS. Answers the rows shown.
  function fillTable(series) {
    const tbody = $('table').tBodies[0];
    tbody.replaceChildren();
    let rows = 0;
    series.forEach((s, i) => {
      const label = labelText(s.labels);
      for (const [t, v] of s.points) {
        if (rows === MAX_TABLE_ROWS) return;
        addRow(tbody, [label, new Date(t).toISOString(), v === null ? '' : String(v)],
          { 'data-series': i, 'data-time': t });
        rows++;
      }
    });
    return rows;
  }

  // ---- the cluster ----

  async function loadCluster() {
    try {
      const [health, doc] = await Promise.all([api('/health'), api('/admin/workers')]);
      const attention = renderPartitions(doc);
      renderSummary(health, attention);
      renderWorkers(doc);
      renderMoves(doc);
      setStatus('cluster-status', `Updated ${new Date().toLocaleTimeString()}`);
      $('cluster-view').dataset.loaded = 'true';
    } catch (error) {
      if (!(error instanceof SignedOut)) setStatus('cluster-status', error.message, true);
    }
  }

  function renderSummary(health, attention) {
    const plane = health.control_plane || {};
    const workers = health.worker_nodes || { healthy: 0, total: 0 };
    const entries = [
      ['Status', health.status, health.status !== 'healthy'],
      ['Control node', `${health.node_id} (${health.raft_status.role})`],
      ['Metadata leader', plane.leader ?? 'none known', plane.leader == null],
      ['Uptime', health.uptime],
      ['Workers live', `${workers.healthy} of ${workers.total}`, workers.healthy < workers.total],
      ['Partitions led', `${health.partitions_available} of ${health.partitions_total}`,
        health.partitions_available < health.partitions_total],
      ['Partitions needing attention', attention, attention > 0],
      ['Placement epoch', health.epoch],
      ['Moves in flight', health.moves_in_flight],
      ['Storage', health.storage ? health.storage.total_size : '–'],
    ];
    if (plane.problem) entries.push(['Problem', plane.problem, true]);
    $('summary').replaceChildren(...entries.flatMap(([name, value, bad]) =>
      [element('dt', {}, name), element('dd', bad ? { class: 'bad' } : {}, value ?? '–')]));
  }

  function renderWorkers(doc) {
    const tbody = $('workers').tBodies[0];
    tbody.replaceChildren();
    for (const w of doc.workers) {
      const ago = w.last_heartbeat
        ? ` (${Math.max(0, Math.round((Date.now() - Date.parse(w.last_heartbeat)) / 1000))}s ago)` : '';
      addRow(tbody, [w.id, w.http_addr, w.state, w.live ? 'yes' : 'no',
        (w.last_heartbeat || 'never') + ago, w.replicas, w.leaders,
        w.moves.length ? w.moves.join(', ') : '–', w.max_replica_lag ?? '–'],
        { 'data-worker': w.id, class: !w.live || w.state === 'dead' ? 'bad' : '' });
    }
  }

  function renderMoves(doc) {
    const tbody = $('moves').tBodies[0];
    tbody.replaceChildren();
    for (const m of doc.moves) addRow(tbody, [m.id, m.partition, m.from, m.to, m.reason, m.step]);
    if (doc.moves.length === 0) addRow(tbody, ['none']).cells[0].colSpan = 6;
  }

  // A partition is red without a live voter or with fewer live voters than the
  // replication factor. Its lag: the most log entries a replica's store is behind the
  // leader. Answers how many are red.
  function renderPartitions(doc) {
    const live = new Set(doc.workers.filter((w) => w.live).map((w) => w.id));
    const lag = (p) => {
      const behind = doc.workers.map((w) => (w.replica_lag || {})[String(p)])
        .filter((l) => l !== undefined);
      return behind.length ? Math.max(...behind) : '–';
    };
    const tbody = $('partitions').tBodies[0];
    tbody.replaceChildren();
    let attention = 0;
    doc.placement.forEach((voters, p) => {
      const learners = (doc.learners && doc.learners[p]) || [];
      const liveVoters = voters.filter((v) => live.has(v)).length;
      let status = 'ok';
      if (liveVoters === 0) status = 'no live replica';
      else if (liveVoters < doc.replication_factor) status = 'under-replicated';
      const bad = status !== 'ok';
      if (doc.joint.includes(p)) status += ', membership changing';
      if (bad) attention++;
      addRow(tbody, [p, voters.join(', '), learners.join(', ') || '–',
        `${liveVoters} of ${doc.replication_factor}`, status, lag(p)],
        { 'data-partition': p, class: bad ? 'bad' : '' });
    });
    return attention;
  }

  signOut('');
})();
