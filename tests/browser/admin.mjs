// Drives /admin in headless Chromium: sees the lag and dead-letter tables,
// sees the charts of the recent past drawn (orders created and events
// handled above zero, lag and outbox lines),
// sees both worker instances, sets their worker count from the page and
// sees it in both instances' telemetry (then gives it back), clicks Pause, checks that both workers stop consuming (their counters stay
// put while new orders wait), clicks Resume, checks they drain, and saves a
// screenshot. Usage: node admin.mjs <api base> <worker A admin> <worker B admin> <screenshot.png>
import { chromium } from 'playwright-core';

const [base, workerA, workerB, screenshot] = process.argv.slice(2);
const workers = [workerA, workerB];
const sleep = ms => new Promise(r => setTimeout(r, ms));

async function sample(url, name) {
  const text = await (await fetch(`${url}/metrics`)).text();
  return text.split('\n')
    .filter(l => l.split(/[{ ]/)[0] === name)
    .reduce((sum, l) => sum + parseFloat(l.split(' ').pop()), 0);
}
const consumed = async () => (await Promise.all(workers.map(w => sample(w, 'orderflow_events_consumed_total')))).reduce((a, b) => a + b, 0);

async function until(check, what, ms = 30000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(200);
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function createOrder(i) {
  const r = await fetch(`${base}/api/orders`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ customerName: `Browser ${i}`, customerEmail: `browser${i}@example.com`,
      items: [{ productName: 'pen', quantity: 1, unitPrice: '1.00' }] }),
  });
  if (r.status !== 201) throw new Error(`create order: ${r.status}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  await page.goto(`${base}/admin`);
  await page.waitForSelector('#lag tbody tr', { timeout: 30000 });
  const lagRows = await page.locator('#lag tbody tr').count();
  await page.waitForSelector('#dlq tbody tr button.replay', { timeout: 30000 });
  const dlqRows = await page.locator('#dlq tbody tr').count();
  await until(async () => (await page.textContent('#state')) === 'running', 'state running');

  await until(async () => (await page.locator('#instances tbody tr.up').count()) === 2, 'both worker instances on the page');
  const instances = async () => (await fetch(`${base}/admin/api/instances`)).json();
  page.on('dialog', dialog => dialog.accept());
  for (const [set, wanted] of [['3', 3], [null, 1]]) {
    if (set) { await page.fill('#count', set); await page.click('#workers button[type=submit], #workers button:not([type])'); }
    else await page.click('#auto');
    await until(async () => (await instances()).every(i => i.workers === wanted) && (await instances()).length === 2,
      `${wanted} workers in both instances' telemetry`);
    await until(async () => (await page.locator('#instances tbody tr td:nth-child(4)').allTextContents()).every(t => t === String(wanted)),
      `${wanted} workers on the page`);
  }

  await page.click('#pause');
  await until(async () => (await page.textContent('#state')) === 'paused', 'the page to show paused');
  await until(async () => (await Promise.all(workers.map(w => sample(w, 'orderflow_consumption_paused')))).every(v => v === 1),
    'both workers to report paused');
  const before = await consumed();
  for (let i = 0; i < 5; i++) await createOrder(i);
  await sleep(3000);
  const during = await consumed();
  if (during !== before) throw new Error(`workers consumed while paused: ${before} -> ${during}`);

  await page.click('#resume');
  await until(async () => (await page.textContent('#state')) === 'running', 'the page to show running');
  await until(async () => (await consumed()) >= before + 5, 'the five waiting orders to be consumed');
  const after = await consumed();

  // The charts: each series a line of the history's points, the orders and
  // events of this run drawn above the zero line.
  const drawn = series => page.$$eval(`polyline[data-series="${series}"]`, lines => {
    const zero = Number(lines[0]?.ownerSVGElement.querySelector('line.zero').getAttribute('y1'));
    const points = lines.flatMap(l => l.getAttribute('points').trim().split(/\s+/).map(p => Number(p.split(',')[1])));
    return { points: points.length, aboveZero: points.filter(y => y < zero - 0.5).length };
  });
  for (const series of ['ordersCreatedPerSecond', 'eventsHandledPerSecond']) {
    await until(async () => (await drawn(series)).aboveZero > 0, `${series} drawn above zero`);
  }
  for (const series of ['consumerLag', 'outboxOldestAgeSeconds']) {
    await until(async () => (await drawn(series)).points >= 2, `the ${series} line`);
  }
  const charts = {};
  for (const id of ['throughput', 'lag', 'outbox']) {
    charts[id] = Number(await page.getAttribute(`#chart-${id}`, 'data-points'));
    if (!(charts[id] >= 2)) throw new Error(`chart ${id} has ${charts[id]} points`);
  }
  const created = await drawn('ordersCreatedPerSecond');
  await page.waitForTimeout(2500); // one refresh with the drained lag
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`browser summary: instances=2 worker count set to 3 and back from the page, lag rows=${lagRows} dead letters=${dlqRows} consumed before pause=${before} while paused=${during} after resume=${after} chart points=${JSON.stringify(charts)} orders-created points above zero=${created.aboveZero}/${created.points} screenshot=${screenshot}`);
} finally {
  await browser.close();
}
