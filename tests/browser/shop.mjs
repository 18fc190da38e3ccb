// shop.mjs - what the browser suites share: Chromium started as these machines need it, and a
// purchase made through the purchase page's dialog.
import { chromium } from 'playwright-core';

export const launch = () => chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-quic'],
});

// Holds seats of planId on the purchase page already open in page (the dialog's first step);
// returns the result box, once it says whether the seats are held.
export async function holdThrough(page, planId, { email, quantity = 1, click = 'click' } = {}) {
  await page.locator(`li[data-plan="${planId}"]`).getByRole('button').click();
  const form = page.locator('#buy');
  await form.getByLabel('Full name').fill('Ada Lovelace');
  await form.getByLabel('Email').fill(email || `ada-${Math.random().toString(36).slice(2)}@example.com`);
  await form.getByLabel('Seats', { exact: true }).fill(String(quantity));
  if (click === 'dblclick') await page.locator('#hold-submit').dblclick();
  else await page.locator('#hold-submit').click();
  await page.waitForFunction(() => /held|sold out|left|hold|wrong|Choose|Please|already/i.test(document.querySelector('#buy-result.ok, #buy-result.bad')?.textContent || ''));
  return page.locator('#buy-result');
}

// Pays for the held seats (the dialog's second step); returns the result box once it tells
// the outcome.
export async function payThrough(page, { card = 'pm_card_visa', click = 'click' } = {}) {
  await page.getByLabel(/Card/).selectOption(card);
  if (click === 'dblclick') await page.locator('#buy-submit').dblclick();
  else await page.locator('#buy-submit').click();
  await page.waitForFunction(() => /booked|failed|wrong|ended/i.test(document.querySelector('#buy-result.ok, #buy-result.bad')?.textContent || ''));
  return page.locator('#buy-result');
}

// Buys seats of planId: holds them, then pays.
export async function buyThrough(page, planId, { card = 'pm_card_visa', email, click = 'click', quantity = 1 } = {}) {
  const held = await holdThrough(page, planId, { email, quantity });
  if (!/held/.test(await held.textContent())) return held;
  return payThrough(page, { card, click });
}
