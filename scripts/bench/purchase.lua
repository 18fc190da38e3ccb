-- purchase.lua - wrk script: each request is a new purchase with its own Idempotency-Key and
-- customer, on the plan whose id is in the PLAN_ID environment variable. Counts answers by
-- status so the bench can check that every purchase ended in 201 (or 409 once sold out).
local plan = os.getenv("PLAN_ID")
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + id)
  statuses = {}
end

local function uuid4()
  local r = math.random
  return string.format("%08x-%04x-4%03x-%04x-%06x%06x", r(0, 0xffffffff), r(0, 0xffff),
    r(0, 0xfff), 0x8000 + r(0, 0x3fff), r(0, 0xffffff), r(0, 0xffffff))
end

function request()
  counter = counter + 1
  local key = uuid4()
  local body = string.format(
    '{"planId":"%s","paymentMethodId":"pm_card_visa","customer":{"email":"b%d-%s@bench.example","name":"Bench"}}',
    plan, counter, key:sub(1, 8) .. key:sub(10, 13))
  return wrk.format("POST", "/api/subscriptions/purchase",
    {["Content-Type"] = "application/json", ["Idempotency-Key"] = key}, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for k, v in pairs(s) do total[k] = (total[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(total) do table.insert(parts, k .. "=" .. v) end
  table.sort(parts)
  io.write("statuses: " .. table.concat(parts, " ") .. "\n")
  io.write(string.format("latency_us: %d %d %d\n", latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9)))
end
