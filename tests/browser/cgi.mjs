// cgi.mjs BASE PLAN_ID SCREENSHOT - the purchase page served by nginx, with /api answered by
// the binary as plain CGI: the page lists the plan, and a seat is bought through its dialog.
// Run by tests/api/test_cgi.py; prints "ok <subscription id>" or fails with a message.
import { launch, buyThrough } from './shop.mjs';

const [base, planId, screenshot] = process.argv.slice(2);
const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(base + '/');
  await page.locator(`li[data-plan="${planId}"]`).waitFor();
  const result = await buyThrough(page, planId);
  const text = await result.textContent();
  if (!(await result.evaluate((el) => el.classList.contains('ok')))) throw new Error('purchase failed: ' + text);
  await page.screenshot({ path: screenshot, fullPage: true });
  const link = await page.locator('#buy-result a').getAttribute('href');
  if (errors.length) throw new Error('page errors: ' + errors.join('; '));
  console.log('ok ' + new URLSearchParams(link.split('#')[1]).get('id'));
} finally {
  await browser.close();
}
