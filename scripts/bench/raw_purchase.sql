-- raw_purchase.sql - pgbench script: the raw durable purchase transaction on PostgreSQL, the
-- same statements as scripts/bench/raw_purchase.c runs on SQLite (a seat of plan :plan, a
-- customer, the pending subscription, its audit event), one commit. :plan is the plan's id
-- as an SQL literal (pgbench substitutes variables as text: -D plan="'<id>'").
\set id random(1, 1000000000000)
BEGIN;
UPDATE plans SET subscriptions_left = subscriptions_left - 1, subscriptions_held = subscriptions_held + 1 WHERE id = :plan AND status = 'active' AND subscriptions_left > 0;
INSERT INTO customers (id, email, name, created_at) VALUES (lpad(to_hex(:id), 24, '0'), 'raw' || :id || '@bench', 'Raw', 0);
INSERT INTO subscriptions (id, plan_id, customer_id, idem_key, status, amount_cents, duration_days, token_hash, hold_deadline, created_at, updated_at) VALUES (lpad(to_hex(:id), 24, '0'), :plan, lpad(to_hex(:id), 24, '0'), 'raw-' || :id, 'pending', 100, 30, '', 0, 0, 0);
INSERT INTO audit_events (id, at, action, actor_type, resource_type, resource_id, plan_id) VALUES (lpad(to_hex(:id), 24, '0'), 0, 'seat.held', 'system', 'subscription', lpad(to_hex(:id), 24, '0'), :plan);
COMMIT;
