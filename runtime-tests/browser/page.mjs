// Drives the app's page (GET /) in headless Chromium as a person would: submit 5 tasks with a
// payload for one user, see them queued (with their payloads) in the default lane's timeline
// and queued list, cancel one with its button, see the others complete one second apart and
// the cancelled one never (checked through the API too). Then pick the second kind, `email`
// (2 units per 10 s), see a task costing 3 refused, submit one of 2 units and two of 1, and
// see them in their own lane with their units, on their own 10 s window, until they run;
// check both lanes against GET /api/v1/users/{id} and the log; save a screenshot. Run by
// runtime-tests/tests/e2e/page.rs; by hand, against a host started with
// policies={"kinds": {"email": ["2/10s"]}}:
//   BASE_URL=http://127.0.0.1:3000 SCREENSHOT=/tmp/page.png node runtime-tests/browser/page.mjs
// Exits non-zero with a message on any failure.
import { Failure, collectProblems, exitWith, fail, launch } from './lib.mjs';

const BASE_URL = (process.env.BASE_URL || '').replace(/\/+$/, '');
const SCREENSHOT = process.env.SCREENSHOT || '';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const USER = 'browser-user';
// Typed into the payload box as a person might (spaces and all).
const PAYLOAD = '{"job": "resize", "image": "cat.png", "width": 640}';
const EMAIL_PAYLOAD = '{"to": "ann@example.com"}';
// The kinds the host is started with (runtime-tests/tests/e2e/page.rs): the default one (1 per
// second, 20 per minute) and `email`, 2 units per 10 s.
const DEFAULT = 'default';
const EMAIL = 'email';
const PULLED = 'render';
const KINDS = [DEFAULT, EMAIL, PULLED];
const lane = (kind) => `.lane[data-kind="${kind}"]`;
// A user id that must come out as text, never as markup.
const NASTY = `<img src=x onerror="window.__xss=1">'"<script>window.__xss=2</script> 😀`;

async function api(path) {
  const res = await fetch(`${BASE_URL}${path}`);
  const text = await res.text();
  if (res.status !== 200) fail(`GET ${path} answered ${res.status}: ${text}`);
  return JSON.parse(text);
}
if (!BASE_URL) exitWith('set BASE_URL, e.g. BASE_URL=http://127.0.0.1:3000');
if (!SCREENSHOT) exitWith('set SCREENSHOT to the output path of the screenshot');

// Nothing here may hang forever.
const watchdog = setTimeout(() => exitWith(`did not finish within 90 s`), 90_000);

let browser;
let failure = null;
const problems = [];
let step = 'launching Chromium';
let expecting422 = false;
try {
  browser = await launch(CHROMIUM);
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  page.setDefaultTimeout(10_000);
  // Chromium reports every non-2xx answer to fetch on the console; the 422 this test provokes
  // is expected (`expecting422` is set from then on: the console message may come late, and
  // every later submission's answer is checked on the page).
  collectProblems(page, problems, (text, url) => expecting422 && url.endsWith('/api/v1/task') && text.includes('status of 422'));

  // Submits the form once and returns the answer shown (the result line changes from
  // "submitting…" to the answer).
  const submitAndRead = async () => {
    await page.click('#submit');
    await page.waitForFunction(() => { const t = document.getElementById('result')?.textContent ?? ''; return t !== '' && t !== 'submitting…'; });
    return (await page.locator('#result').textContent()) ?? '';
  };
  // The completion times a lane's timeline shows, oldest first.
  const doneTimes = (kind) => page.locator(`${lane(kind)} .timeline .done`).evaluateAll((cs) => cs.map((c) => Number(c.dataset.at)));

  step = `opening ${BASE_URL}/`;
  const response = await page.goto(`${BASE_URL}/`, { waitUntil: 'load', timeout: 15_000 });
  if (!response || response.status() !== 200) fail(`GET / answered ${response?.status()}`);

  step = 'waiting for the first overview poll (#status "live")';
  await page.waitForFunction(() => document.getElementById('status')?.textContent === 'live');

  step = 'waiting for the kind picker to offer the configured kinds';
  await page.waitForFunction(
    (kinds) => [...document.querySelectorAll('#kind option')].map((o) => o.value).join(',') === kinds,
    KINDS.join(','),
  );
  if ((await page.locator('#limits').textContent()) !== '1 per 1 s, 20 per 60 s') {
    fail(`the limits line for kind default says ${JSON.stringify(await page.locator('#limits').textContent())}`);
  }

  step = 'submitting a payload that is not JSON';
  await page.fill('#user-id', USER);
  await page.fill('#payload', '{not json');
  await page.click('#submit');
  await page.waitForFunction(() => (document.getElementById('result')?.textContent ?? '').startsWith('the payload is not JSON'));

  step = 'submitting 5 tasks with a payload';
  await page.fill('#payload', PAYLOAD);
  await page.click('#submit-5');
  await page.waitForFunction(() => document.querySelectorAll('#result li').length === 5);
  const answers = await page.locator('#result li').allTextContents();
  const completed = answers.filter((a) => a.startsWith('completed at ')).length;
  const queued = answers.filter((a) => /^queued, slot \d\d:\d\d:\d\d\.\d{3}, position \d+$/.test(a)).length;
  if (completed + queued !== 5 || queued < 4) fail(`unexpected answers to 5 submissions: ${JSON.stringify(answers)}`);

  step = 'waiting for queued marks on the default lane\'s timeline';
  await page.waitForFunction((sel) => document.querySelectorAll(`${sel} .timeline .queued`).length >= 1, lane(DEFAULT));

  step = 'waiting for the queued tasks with their payloads in the default lane';
  const shown = JSON.stringify(JSON.parse(PAYLOAD));
  await page.waitForFunction(
    ([sel, text]) => { const rows = [...document.querySelectorAll(`${sel} .queued-list tr[data-task-id]`)];
      return rows.length >= 3 && rows.every((r) => r.querySelector('td.payload')?.textContent === text && r.querySelector('td.cost')?.textContent === '1'); },
    [lane(DEFAULT), shown],
  );

  step = 'cancelling the last queued task';
  const victim = await page.locator(`${lane(DEFAULT)} .queued-list tr[data-task-id]`).last().getAttribute('data-task-id');
  if (!victim) fail('the queued rows carry no task id');
  await page.click(`${lane(DEFAULT)} .queued-list tr[data-task-id="${victim}"] button.cancel`);
  await page.waitForFunction(
    (id) => (document.getElementById('cancel-result')?.textContent ?? '').startsWith(`cancelled task ${id}`) &&
      !document.querySelector(`.queued-list tr[data-task-id="${id}"]`),
    victim,
  );
  const record = await api(`/api/v1/task/${victim}`);
  if (record.status !== 'cancelled') fail(`the API says task ${victim} is ${JSON.stringify(record)} after the cancel`);

  // The second kind: 2 units per 10 s, in a lane of its own.
  step = `picking kind ${EMAIL}`;
  await page.selectOption('#kind', EMAIL);
  await page.waitForFunction(
    (kind) => document.getElementById('limits-kind')?.textContent === kind &&
      document.getElementById('limits')?.textContent === '2 per 10 s' &&
      (document.getElementById('limits-head')?.textContent ?? '').startsWith('2 per 10 s'),
    EMAIL,
  );

  step = `submitting a ${EMAIL} task that costs more than its policy ever admits`;
  await page.fill('#payload', EMAIL_PAYLOAD);
  await page.fill('#cost', '3');
  expecting422 = true;
  await submitAndRead();
  const tooCostly = await page.locator('#result').textContent();
  if (!/^error 422: .*at most 2/.test(tooCostly ?? '')) fail(`a ${EMAIL} task of cost 3 was answered ${JSON.stringify(tooCostly)}`);

  step = `submitting a ${EMAIL} task of 2 units (all its window holds: it runs at once)`;
  await page.fill('#cost', '2');
  const first = await submitAndRead();
  if (!/^completed at \d\d:\d\d:\d\d\.\d{3} · email, 2 units$/.test(first)) fail(`a ${EMAIL} task of cost 2 was answered ${JSON.stringify(first)}`);

  step = `submitting two ${EMAIL} tasks of 1 unit (both wait for the 10 s window)`;
  await page.fill('#cost', '1');
  const second = await submitAndRead();
  const third = await submitAndRead();
  const queuedEmail = /^queued, slot (\d\d:\d\d:\d\d\.\d{3}), position (\d) · email, 1 unit$/;
  const [m2, m3] = [queuedEmail.exec(second), queuedEmail.exec(third)];
  if (!m2 || !m3 || m2[2] !== '1' || m3[2] !== '2' || m2[1] !== m3[1]) {
    fail(`two 1-unit ${EMAIL} tasks after a 2-unit one were answered ${JSON.stringify([second, third])} (expected positions 1 and 2, one slot)`);
  }

  step = `waiting for the ${EMAIL} lane with its 2 queued tasks (units and payload) and its completion`;
  const emailShown = JSON.stringify(JSON.parse(EMAIL_PAYLOAD));
  await page.waitForFunction(
    ([sel, text]) => {
      const rows = [...document.querySelectorAll(`${sel} .queued-list tr[data-task-id]`)];
      return rows.length === 2 &&
        rows.every((r) => r.querySelector('td.payload')?.textContent === text && r.querySelector('td.cost')?.textContent === '1') &&
        document.querySelectorAll(`${sel} .timeline .queued`).length === 2 &&
        [...document.querySelectorAll(`${sel} .timeline .done`)].map((c) => c.dataset.units).join() === '2';
    },
    [lane(EMAIL), emailShown],
  );
  const emailIds = await page.locator(`${lane(EMAIL)} .queued-list tr[data-task-id]`).evaluateAll((rows) => rows.map((r) => r.dataset.taskId));
  const defaultIds = await page.locator(`${lane(DEFAULT)} .queued-list tr[data-task-id]`).evaluateAll((rows) => rows.map((r) => r.dataset.taskId));
  if (defaultIds.some((id) => emailIds.includes(id))) fail(`the default lane lists ${EMAIL} tasks: ${JSON.stringify({ defaultIds, emailIds })}`);
  const heading = await page.locator(`${lane(EMAIL)} h3`).textContent();
  if (heading !== `Kind ${EMAIL} · 2 per 10 s`) fail(`the ${EMAIL} lane is headed ${JSON.stringify(heading)}`);
  // Its timeline is drawn on its own window: strong lines 10 s apart (the default lane's are 60 s).
  const emailLabels = await page.locator(`${lane(EMAIL)} .timeline text.window-label`).allTextContents();
  if (!emailLabels.includes('+10 s')) fail(`the ${EMAIL} timeline has no line 10 s after its first completion: ${JSON.stringify(emailLabels)}`);
  const defaultLabels = await page.locator(`${lane(DEFAULT)} .timeline text.window-label`).allTextContents();
  if (defaultLabels.some((l) => l !== '0 s' && l !== '+60 s')) fail(`the default timeline's strong lines are not 60 s apart: ${JSON.stringify(defaultLabels)}`);

  step = `checking the ${EMAIL} lane through the API while its tasks wait`;
  const waiting = await api(`/api/v1/users/${encodeURIComponent(USER)}`);
  const emailState = waiting.kinds?.[EMAIL];
  const emailDone = await doneTimes(EMAIL);
  if (emailState?.queued !== 2 || emailState.next_task?.task_id !== emailIds[0] ||
      JSON.stringify([...emailState.recent_completions].sort((a, b) => a - b)) !== JSON.stringify(emailDone)) {
    fail(`the page shows ${EMAIL} tasks ${JSON.stringify(emailIds)} queued after completions ${JSON.stringify(emailDone)}, the API says ${JSON.stringify(emailState)}`);
  }
  for (const id of emailIds) {
    const task = await api(`/api/v1/task/${id}`);
    if (task.status !== 'queued' || task.kind !== EMAIL || task.cost !== 1) fail(`task ${id} of the ${EMAIL} lane is ${JSON.stringify(task)}`);
  }

  step = 'waiting for 3 completions on the default timeline and the user in #recent';
  await page.waitForFunction(
    ([sel, user]) => document.querySelectorAll(`${sel} .timeline .done`).length >= 3 &&
      (document.querySelector('#recent')?.textContent ?? '').includes(user),
    [lane(DEFAULT), USER],
    { timeout: 15_000 },
  );

  step = 'waiting for the default lane\'s queue to empty on the page (then nothing more can run in it)';
  await page.waitForFunction(
    ([sel, text]) => !document.querySelector(`${sel} .queued-list tr[data-task-id]`) &&
      [...document.querySelectorAll('#recent td.payload')].some((td) => td.textContent === text),
    [lane(DEFAULT), shown],
    { timeout: 15_000 },
  );
  // The screenshot: the default lane done, the email lane with its queued tasks (units,
  // payloads, cancel buttons) on its own 10 s window.
  step = 'saving the screenshot';
  await page.screenshot({ path: SCREENSHOT, fullPage: true });

  step = `waiting for the ${EMAIL} lane to run its queued tasks`;
  await page.waitForFunction(
    (sel) => !document.querySelector(`${sel} .queued-list tr[data-task-id]`) &&
      [...document.querySelectorAll(`${sel} .timeline .done`)].map((c) => c.dataset.units).join() === '2,1,1',
    lane(EMAIL),
    { timeout: 20_000 },
  );

  step = 'checking both lanes through the API and the log';
  const state = await api(`/api/v1/users/${encodeURIComponent(USER)}`);
  const pageDone = { [DEFAULT]: await doneTimes(DEFAULT), [EMAIL]: await doneTimes(EMAIL) };
  for (const kind of [DEFAULT, EMAIL]) {
    const api = state.kinds?.[kind];
    const times = api && [...api.recent_completions].sort((a, b) => a - b);
    if (!api || api.queued !== 0 || JSON.stringify(times) !== JSON.stringify(pageDone[kind])) {
      fail(`the page shows nothing queued in lane ${kind} and completions ${JSON.stringify(pageDone[kind])}, the API says ${JSON.stringify(api)}`);
    }
  }
  if (state.queued !== 0) fail(`the page shows no queued task but the API says ${JSON.stringify(state)}`);
  const log = await (await fetch(`${BASE_URL}/api/v1/log`, { headers: { Accept: 'application/x-ndjson' } })).text();
  const ran = log.split('\n').filter((l) => l).map((l) => JSON.parse(l)).filter((e) => e.user_id === USER);
  if (ran.some((e) => e.task_id === victim)) fail(`the cancelled task ${victim} ran`);
  const ranDefault = ran.filter((e) => e.kind === DEFAULT);
  if (ranDefault.length !== 4 || !ranDefault.every((e) => JSON.stringify(e.payload) === shown && e.cost === 1)) {
    fail(`expected the 4 other default tasks in the log with their payloads, got ${JSON.stringify(ranDefault)}`);
  }
  const ranEmail = ran.filter((e) => e.kind === EMAIL);
  const emailLogged = ranEmail.map((e) => e.completed_at);
  if (ranEmail.length !== 3 || ranEmail.map((e) => e.cost).join() !== '2,1,1' ||
      !ranEmail.every((e) => JSON.stringify(e.payload) === emailShown && e.policy === '2/10000') ||
      JSON.stringify(emailLogged) !== JSON.stringify(pageDone[EMAIL])) {
    fail(`expected the page's 3 ${EMAIL} completions ${JSON.stringify(pageDone[EMAIL])} (2, 1, 1 units) in the log, got ${JSON.stringify(ranEmail)}`);
  }
  if (ran.length !== 7) fail(`expected 7 log entries for ${USER}, got ${JSON.stringify(ran)}`);

  step = 'checking the limits lines';
  const check = await page.locator(`${lane(DEFAULT)} .limits-check`).textContent();
  if (!/max units in any 1 s: 1 \(limit 1\)/.test(check ?? '')) fail(`the default lane's limits line does not say 1 per second: ${JSON.stringify(check)}`);
  if (!/max units in any 60 s: 4 \(limit 20\) ✓$/.test(check ?? '')) fail(`the default lane's limits line lacks the 60 s count: ${JSON.stringify(check)}`);
  const emailCheck = await page.locator(`${lane(EMAIL)} .limits-check`).textContent();
  if (emailCheck !== 'max units in any 10 s: 2 (limit 2) ✓') fail(`the ${EMAIL} lane's limits line says ${JSON.stringify(emailCheck)}`);
  const status = await page.locator('#status').textContent();
  if (status !== 'live') fail(`#status is ${JSON.stringify(status)}, not "live"`);

  step = 'seeing a task claimed by a worker';
  const json = { 'Content-Type': 'application/json' };
  const post = async (path, body) => {
    const r = await fetch(`${BASE_URL}${path}`, { method: 'POST', headers: json, body: JSON.stringify(body) });
    return { status: r.status, body: await r.json() };
  };
  const pulled = await post('/api/v1/task', { user_id: USER, kind: PULLED });
  if (pulled.status !== 202) fail(`a ${PULLED} task answered ${pulled.status}: ${JSON.stringify(pulled.body)}`);
  const claimed = await post('/api/v1/claims', { kind: PULLED, wait: '5s' });
  const held = claimed.body.claims?.[0];
  if (claimed.status !== 200 || held?.task_id !== pulled.body.task_id) {
    fail(`claiming the ${PULLED} task answered ${claimed.status}: ${JSON.stringify(claimed.body)}`);
  }
  await page.waitForFunction(
    (user) => !document.getElementById('claims-card').hidden &&
      [...document.querySelectorAll('#claims tbody tr')].some((tr) => tr.cells[0].textContent === user &&
        tr.cells[2].textContent === '1' && /^in \d/.test(tr.cells[4].textContent)),
    USER,
  );
  const reported = await post(`/api/v1/task/${held.task_id}/outcome`, { claim: held.claim, result: 'completed' });
  if (reported.status !== 200) fail(`the outcome answered ${reported.status}: ${JSON.stringify(reported.body)}`);
  await page.waitForFunction(() => document.getElementById('claims-card').hidden);

  step = 'submitting a user id made of markup';
  await page.selectOption('#kind', DEFAULT);
  await page.fill('#user-id', NASTY);
  await page.click('#submit');
  await page.waitForFunction(
    (user) => document.querySelectorAll('.lane[data-kind="default"] .timeline .done').length >= 1 &&
      document.getElementById('watched')?.textContent === user &&
      [...document.querySelectorAll('#recent td.user')].some((td) => td.textContent === user),
    NASTY,
  );
  const injected = await page.evaluate(() => ({
    xss: window.__xss,
    imgs: document.querySelectorAll('main img').length,
    scripts: document.querySelectorAll('main script').length,
  }));
  if (injected.xss !== undefined || injected.imgs || injected.scripts) {
    fail(`a user id was inserted as markup: ${JSON.stringify(injected)}`);
  }

  if (problems.length) fail(`the page reported errors:\n  ${problems.join('\n  ')}`);
  console.log(`page test passed: 5 tasks for ${USER} (${completed} ran inline, ${queued} queued, 1 cancelled), ` +
    `${check}; 3 ${EMAIL} tasks (2, 1, 1 units) in their own lane, ${emailCheck}; a cost over the quota refused; ` +
    `a ${PULLED} task shown while claimed; markup in user ids stays text; screenshot ${SCREENSHOT}`);
} catch (e) {
  const extra = problems.length ? `\n  ${problems.join('\n  ')}` : '';
  failure = (e instanceof Failure ? e.message : `while ${step}: ${e.message}`) + extra;
} finally {
  if (browser) await browser.close().catch(() => {});
  clearTimeout(watchdog);
}
if (failure) exitWith(failure);
