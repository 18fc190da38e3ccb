// shop.mjs - what the browser suites share: Chromium started as these machines need it, and a
// purchase made through the purchase page's dialog.
import { chromium } from 'playwright-core';

export const launch = () => chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-quic'],
});

// Buys a seat of planId on the purchase page already open in page; returns the result box.
export async function buyThrough(page, planId, { card = 'pm_card_visa', email, click = 'click' } = {}) {
  const card_ = page.locator(`li[data-plan="${planId}"]`);
  await card_.getByRole('button').click();
  await page.getByLabel('Full name').fill('Ada Lovelace');
  await page.getByLabel('Email').fill(email || `ada-${Math.random().toString(36).slice(2)}@example.com`);
  await page.getByLabel(/Card/).selectOption(card);
  if (click === 'dblclick') await page.locator('#buy-submit').dblclick();
  else await page.locator('#buy-submit').click();
  await page.locator('#buy-result.ok, #buy-result.bad').waitFor();
  return page.locator('#buy-result');
}
